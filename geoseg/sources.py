"""Reading the windows of a lazy stack that tiled inference needs.

:func:`geoseg.predict` reads its input one tile group at a time. How depends
on the stack's dask graph:

* **windowed** sources (a COG opened lazily with rioxarray, an in-memory or
  zarr array: any graph where dask pushes a slice down into the read) are
  read window by window: each group reads exactly its own pixels, nothing is
  held between groups. Elementwise operations on such a read (scaling DN to
  reflectance, a cast, arithmetic, ``where``) are replayed on the window:
  dask itself would compute every chunk the window touches whole;
* **chunked** sources (odc-stac loads, whose chunks are computed whole) are
  read chunk by chunk, each chunk once, shared by the groups that need it.

Each read is a :class:`Read`: a small, culled graph computed inside the task
that needs it, so the caller decides *when* reads run (see
:func:`geoseg.inference`) instead of the scheduler running every read at once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import dask
import dask.array as dsa
import numpy as np


class Read:
    """One read: a culled dask graph and the key of the (band, y, x) block it makes."""

    def __init__(self, graph: dict, key: Hashable):
        self.graph, self.key = graph, key

    def __call__(self) -> np.ndarray:
        return np.asarray(dask.get(self.graph, self.key), dtype="float32")

    def __repr__(self) -> str:
        return f"Read({self.key!r}, {len(self.graph)} tasks)"


@dataclass(frozen=True)
class Piece:
    """Part of a window: ``read`` makes the block whose first pixel is band
    ``band``, row ``row``, column ``col`` of the stack."""

    name: Hashable
    """Identifies the read: groups that share a chunk share its name."""
    band: int
    row: int
    col: int
    read: Callable[[], np.ndarray]
    """A :class:`Read` or a :class:`Replayed` window."""


class StackReader:
    """Finds the reads that cover a window of a (band, y, x) dask array."""

    def __init__(self, data: dsa.Array):
        from dask.optimization import cull

        self.windowed = slices_push_down(data)
        self._replay = replayable(data) if self.windowed else None
        (self.data,) = dask.optimize(data)
        self._cull = cull
        self._graph = dict(self.data.__dask_graph__())
        self.offsets = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in self.data.chunks]
        self._chunks: dict[tuple, Read] = {}  # each chunk's graph is culled once, however many groups share it

    def _chunk(self, key: tuple) -> Read:
        if key not in self._chunks:
            self._chunks[key] = Read(self._cull(self._graph, [key])[0], key)
        return self._chunks[key]

    @property
    def name(self) -> str:
        return self.data.name

    def pieces(self, y0: int, y1: int, x0: int, x1: int) -> list[Piece]:
        """Reads covering rows [y0, y1) x cols [x0, x1), clipped to the array."""
        ny, nx = self.data.shape[1:]
        y0, y1, x0, x1 = max(0, y0), min(ny, y1), max(0, x0), min(nx, x1)
        if self._replay is not None:
            window = (slice(0, self.data.shape[0]), slice(y0, y1), slice(x0, x1))
            return [Piece((self.name, y0, y1, x0, x1), 0, y0, x0, self._replay(window))]
        if self.windowed:
            read = _sliced(self.data, (slice(None), slice(y0, y1), slice(x0, x1)))
            return [Piece(read.key[0], 0, y0, x0, read)]
        (bo, yo, xo) = self.offsets
        ys = [i for i in range(len(yo) - 1) if yo[i] < y1 and yo[i + 1] > y0]
        xs = [j for j in range(len(xo) - 1) if xo[j] < x1 and xo[j + 1] > x0]
        out = []
        for b in range(len(bo) - 1):
            for i in ys:
                for j in xs:
                    key = (self.name, b, i, j)
                    out.append(Piece(key, int(bo[b]), int(yo[i]), int(xo[j]), self._chunk(key)))
        return out


_GETTERS = {"getter", "getter_nofancy", "getter_inline"}


def slices_push_down(data: dsa.Array) -> bool:
    """True when a window of ``data`` can be read without holding whole chunks:
    its graph holds only data, ``from_array`` getters (which dask slices) and
    blockwise operations on them (replayed on the window where elementwise,
    see :func:`replayable`; otherwise dask computes the chunks under the
    window, and drops them); any other task (odc-stac's chunk loaders,
    ``from_delayed`` blocks) computes a chunk whole, and is read once."""
    from dask.blockwise import Blockwise

    for layer in data.__dask_graph__().layers.values():
        if isinstance(layer, Blockwise):
            continue
        for task in layer.values():
            func = task[0] if isinstance(task, tuple) and task and callable(task[0]) else getattr(task, "func", None)
            if func is not None and getattr(func, "__name__", "") not in _GETTERS:
                return False
    return True


#: Functions applied block by block that are also elementwise: the same on a window as on a chunk.
#: (A ``map_blocks`` function declares it with an ``elementwise = True`` attribute.)
ELEMENTWISE: frozenset = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
    operator.neg, operator.pos, operator.abs, operator.invert, operator.and_, operator.or_, operator.xor,
    operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge, np.where,
})


def _is_elementwise(func) -> bool:
    from dask.array.chunk import astype

    return isinstance(func, np.ufunc) or func in ELEMENTWISE or func is astype or getattr(func, "elementwise", False) is True


def _sliced(arr: dsa.Array, slices: tuple[slice, ...]) -> Read:
    """The read of one window of ``arr`` as dask slices it (pushed into ``from_array`` getters)."""
    (w,) = dask.optimize(arr[slices].rechunk(-1))
    return Read(dict(w.__dask_graph__()), (w.name,) + (0,) * w.ndim)


class Replayed:
    """One window of an elementwise computation: each operation's task run on its inputs' windows."""

    def __init__(self, task, inputs: dict[str, Any], dtype: np.dtype | None = None):
        self.task, self.inputs, self.dtype = task, inputs, dtype

    def __call__(self, _done: dict | None = None) -> np.ndarray:
        done = {} if _done is None else _done  # inputs used twice (x * (x > 0)) are computed once
        values = {}
        for k, v in self.inputs.items():
            if isinstance(v, (Replayed, Read)):
                if id(v) not in done:
                    done[id(v)] = v(done) if isinstance(v, Replayed) else v()
                v = done[id(v)]
            values[k] = v
        out = self.task(values)
        return out if self.dtype is None else np.asarray(out, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"Replayed({self.task!r})"


class _NotReplayable(Exception):
    pass


def replayable(data: dsa.Array) -> Callable[[tuple[slice, ...]], Replayed] | None:
    """Windows of ``data`` read at the source, or None.

    When ``data`` is elementwise operations (see :data:`ELEMENTWISE`) on
    ``from_array`` reads or in-memory arrays, all of one shape and chunking,
    a window is read by slicing the sources and running the same operations
    on the window: dask would compute every chunk the window touches, whole
    (for 256-row windows over 512-row chunks, 2-4 times the pixels). None
    when there is no such operation (plain slicing already reads only the
    window) or when anything else is in the graph.
    """
    from dask.blockwise import Blockwise

    hlg = data.__dask_graph__()
    top = getattr(hlg, "layers", {}).get(data.name)
    if not isinstance(top, Blockwise) or _getter_layer(top):
        return None
    try:
        build = _plan(hlg, data.name, data)
    except _NotReplayable:
        return None

    return lambda slices: build(slices, {})


def _getter_layer(layer) -> bool:
    func = getattr(getattr(layer, "task", None), "func", None)
    return getattr(func, "__name__", "") in _GETTERS


def _plan(hlg, name: str, data: dsa.Array):
    """A function of (window, memo): the :class:`Replayed` (or :class:`Read`) computing layer ``name`` on it."""
    from dask._task_spec import DataNode, GraphNode, TaskRef
    from dask.array.core import ArraySliceDep
    from dask.blockwise import Blockwise

    layer = hlg.layers.get(name)
    if not isinstance(layer, Blockwise):
        chunks = [v.value if isinstance(v, DataNode) else v for v in (layer or {}).values()]
        if not chunks or not all(isinstance(c, np.ndarray) for c in chunks):
            raise _NotReplayable(name)
        # in-memory chunks: dask slices them; the window's read holds only the chunks it needs
        arr = dsa.Array(hlg.cull_layers([name]), name, data.chunks, meta=np.empty((0,) * data.ndim, dtype=chunks[0].dtype))

        def in_memory(slices, memo):
            if name not in memo:
                memo[name] = _sliced(arr, slices)
            return memo[name]
        return in_memory
    getter = _getter_layer(layer)
    if layer.new_axes or layer.concatenate or getattr(layer, "adjust_chunks", None):
        raise _NotReplayable(name)
    if not getter and not _is_elementwise(layer.task.func):
        raise _NotReplayable(name)
    if any(isinstance(a, GraphNode) and not isinstance(a, (TaskRef, DataNode)) for a in (*layer.task.args, *layer.task.kwargs.values())):
        raise _NotReplayable(name)  # nested tasks: functions not checked above
    inputs: dict[str, Any] = {}
    for i, (arg, index) in enumerate(layer.indices):
        key = f"__dask_blockwise__{i}"
        if index is None:  # a constant, or (for a from_array read) the source array held in the graph
            if isinstance(arg, TaskRef):
                value = hlg[arg.key]
                if isinstance(value, GraphNode) and not isinstance(value, DataNode):
                    raise _NotReplayable(name)
                arg = value.value if isinstance(value, DataNode) else value
            inputs[key] = lambda slices, memo, v=arg: v
        elif tuple(index) != tuple(layer.output_indices):
            raise _NotReplayable(name)  # broadcasting or transposing: not the same window
        elif getter and arg in layer.io_deps:
            if not isinstance(layer.io_deps[arg], ArraySliceDep):
                raise _NotReplayable(name)
            inputs[key] = lambda slices, memo: slices
        elif getter or layer.io_deps:
            raise _NotReplayable(name)  # block_info / block_id: position-dependent
        else:
            inputs[key] = _plan(hlg, arg, data)
    task = layer.task
    dtype = data.dtype if name == data.name else None

    def node(slices, memo):  # one node per layer, however many operations use it
        if name not in memo:
            memo[name] = Replayed(task, {k: f(slices, memo) for k, f in inputs.items()}, dtype)
        return memo[name]
    return node


def fill(buf: np.ndarray, y0: int, x0: int, parts, less: np.ndarray | None = None) -> None:
    """Copy ``parts`` ((first band, row, col, data), ...) into ``buf``, whose
    pixel (0, 0) is scene pixel (``y0``, ``x0``); pixels no part covers keep their value.
    ``less``, if given, is a value per band, (bands, 1, 1), taken off as they are copied."""
    _, h, w = buf.shape
    for b, r, c, block in parts:
        a, z = max(r, y0), min(r + block.shape[1], y0 + h)
        left, right = max(c, x0), min(c + block.shape[2], x0 + w)
        if a < z and left < right:
            into, data = buf[b:b + block.shape[0], a - y0:z - y0, left - x0:right - x0], block[:, a - r:z - r, left - c:right - c]
            if less is None:
                into[...] = data
            else:
                np.subtract(data, less[b:b + block.shape[0]], out=into)


def lookahead() -> int | None:
    """How many tile groups ahead input may be read, or None to let the
    scheduler decide.

    The local (threaded) scheduler starts every ready read at once, so reads
    are gated: four groups per thread (with two per thread, threads waited for
    their next input: in-memory 2048² predictions took 7.35 s instead of 6.64 s
    on 2 cores). A ``distributed`` cluster queues root
    tasks itself, and a resumed workflow run computes only its missing blocks,
    which gating would chain to every earlier one: no gates there.
    """
    from geoseg.blocks import _client

    if _client() is not None:
        return None
    return max(4, 4 * local_threads())


def local_threads() -> int:
    """Threads of the local (threaded) scheduler's pool: dask's ``num_workers``, else one per CPU."""
    from dask.threaded import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT)
