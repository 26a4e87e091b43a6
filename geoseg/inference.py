"""Tiled inference over a lazy stack, stitched without seams.

:func:`predict` builds a dask graph with three kinds of task per *tile
group* (about ``GROUP_PIXELS`` of one row of tiles, as even as possible): one fills the group's
window from the reads of :mod:`geoseg.sources` and normalizes it (on the
local scheduler, the rows it shares with the same group one tile row up
are copied from that group's window, not read again), one per
batch of its tiles runs the network, and one weights each tile by the blend
window of :mod:`geoseg.tiling` and cuts the result into one piece per output
block. One more task per *output block* sums the weighted pieces that reach
it and divides by the summed weights. Batches are tasks of their own so that
every thread (or GPU) has a forward to run, even while the last groups
finish (one task per group left a core idle for most of a group). Groups run in
raster order; on the local scheduler reads are gated so they never run far
ahead of inference. Memory is bounded by about a row of tile groups, never by
the scene, and there is no whole-scene buffer.

The network is loaded once per process (thread-safe cache), runs under
``torch.inference_mode``, batched, on CUDA with bf16/fp16 autocast when
present, else on the CPU in fp32. Tiles without any valid pixel are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from geoseg.collector import spare_long_lived
from geoseg.contract import conform
from geoseg.cpunet import as_layout, for_cpu
from geoseg.errors import InputError
from geoseg.heap import keep_heap
from geoseg.models import Model, ModelCard, cached
from geoseg.sources import Read, StackReader, fill, local_threads, lookahead
from geoseg.tiling import TileLayout


def pick_device(device: str | None = None) -> str:
    """``device`` if given and usable; else CUDA when present, else CPU."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available here", fix="use --device cpu, or run on a machine with a GPU")
    if device not in ("cpu",) and not device.startswith(("cuda", "mps")):
        raise InputError(f"unknown device {device!r}", fix="use cpu, cuda or cuda:N")
    return device


def default_batch_size(device: str, tile_size: int) -> int:
    """Tiles per forward: 16 on a GPU; on the CPU about 128 K pixels (2 tiles of 256², 1 of 512²).

    Each scheduler thread runs its own CPU forward (see ``_CpuShare``), so a
    larger batch adds no parallelism, only cache misses: on 2 cores, 121
    tiles of 256² took 5.3 s in batches of 2 and 6.2 s in batches of 4; 24
    tiles of 512² (the shipped cards) 2.95 s in batches of 1 and 5.0 s in
    batches of 4. Results do not depend on the batch (checked bit for bit).
    """
    if not device.startswith("cpu"):
        return 16
    return max(1, 2**17 // tile_size**2)


@dataclass(frozen=True)
class Runner:
    """Runs a model on batches of normalized tiles. Pickleable when built
    from a card path: each worker process then loads the network once."""

    card: ModelCard
    device: str
    batch_size: int
    card_path: str | None = None
    model: Model | None = field(default=None, compare=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, compare=False, repr=False)

    def __dask_tokenize__(self):
        # never hash the network's tensors: the card (and which model object) identify it
        return (type(self).__name__, self.card.model_dump_json(), self.device, self.batch_size, self.card_path,
                None if self.model is None else id(self.model))

    def __getstate__(self):
        if self.card_path is None:
            raise TypeError("a Runner over an in-memory model cannot be sent to other processes; save the model and predict from its card path")
        state = dict(self.__dict__)
        state["model"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        state["_lock"] = threading.Lock()
        self.__dict__.update(state)

    def network(self):
        if self.model is not None:
            net = _moved(self.model.network, self.device)
        else:
            net = cached(self.card_path, self.device).network
        # on the CPU: batch norm folded, the card's memory layout (see geoseg.cpunet)
        return for_cpu(net, self.card.cpu_memory_format) if self.device == "cpu" else net

    @property
    def pinned(self) -> bool:
        """Whether batches travel through page-locked host memory (on CUDA): see :meth:`empty`."""
        return self.device.startswith("cuda")

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialized float32 array for a batch of tiles, or of their probabilities.

        On CUDA it is page-locked memory from torch's caching host allocator
        (reused once freed, no page faults): it crosses to the device and back
        at the bus's speed, where pageable memory is staged by the driver.
        Measured on an H100, 64 tiles of 512²: 6 bands in, 47 ms from
        pageable memory vs 7 ms pinned; 2 classes out, 120 ms through
        ``.cpu()`` into a fresh array vs 2.5 ms into pinned memory.
        """
        if not self.pinned:
            return np.empty(shape, dtype="float32")
        import torch

        return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """(N, C, T, T) float32 normalized (contiguous or a view) → (N, K, T, T) float32 class probabilities."""
        import torch

        keep_heap()  # in every process that runs forwards (see geoseg.heap)
        net = self.network()
        out = self.empty((tiles.shape[0], len(self.card.classes)) + tiles.shape[2:])
        cuda = self.device.startswith("cuda")
        amp_dtype = (torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        # one forward at a time per GPU; on the CPU, one per scheduler thread (see _CpuShare), softmax
        # included: with the process's threads it would start an OpenMP team per scheduler thread
        cpu = self.device == "cpu"
        with (_CPU.threads() if cpu else self._lock), torch.inference_mode():
            for i in range(0, tiles.shape[0], self.batch_size):
                x = torch.from_numpy(tiles[i:i + self.batch_size]).to(self.device, non_blocking=True)
                if cpu:
                    x = as_layout(x, self.card.cpu_memory_format)
                if cuda:
                    with torch.autocast("cuda", dtype=amp_dtype):
                        logits = net(x)
                else:
                    logits = net(x)
                probs = torch.softmax(logits.float(), dim=1)
                if cuda:  # a copy into page-locked memory queued after the forward; all waited for below
                    torch.from_numpy(out[i:i + self.batch_size]).copy_(probs, non_blocking=True)
                else:  # on the CPU the plain numpy copy that every CPU benchmark figure was measured with
                    out[i:i + self.batch_size] = probs.cpu().numpy()
            if cuda:
                torch.cuda.synchronize(self.device)  # the copies out, and the reads of ``tiles``, are done
        return out


_MOVING = threading.Lock()


def _moved(net, device: str):
    """``net`` with its parameters on ``device``, moved there by the first forward that needs it.

    Checked and moved under one lock, once: scheduler threads start their
    forwards together, and none may run on a half-moved network. The check
    before compared ``"cuda:0"`` with ``"cuda"``, so every CUDA forward moved
    the network again, outside the GPU lock, while other threads ran forwards
    on it; one of about 45 predictions on an H100 (4096²) died of a
    segmentation fault there, none of about 45 since. ``"cuda"`` means the
    current device.
    """
    import torch

    want = torch.device(device)
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    with _MOVING:
        first = next(iter(net.parameters()), None)
        if first is not None and first.device != want:
            net.to(want)
    return net


class _CpuShare:
    """Shares the process's torch threads among the CPU forwards of a scheduler's threads.

    Two forwards with one thread each outrun one forward with two (measured
    6.9 s vs 8.6 s for the same 120 tiles on 2 cores: no waiting at every
    op's barrier) and leave no core idle while the rest of a tile group's
    work (reading, blending, writing) runs. So CPU inference is not
    serialized: each scheduler thread runs its own forward with
    ``budget // threads`` torch threads, where ``budget`` is the process's
    torch setting and ``threads`` the scheduler's (a worker's ``nthreads`` on
    a distributed cluster, whose nanny already sets ``OMP_NUM_THREADS=1``;
    the local pool's size otherwise). A task on the main thread (the
    synchronous scheduler) keeps every thread. The share depends on the
    configuration only, never on timing, so results are reproducible
    bit for bit. torch's thread count is per thread once that thread has run
    an op, and each batch gives the budget back when it ends, so the
    caller's threads keep their setting.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._budget = 0

    def budget(self) -> int:
        with self._lock:
            if not self._budget:
                self._budget = _process_threads()
            return self._budget

    @contextlib.contextmanager
    def threads(self):
        """This thread's share of torch threads for one batch."""
        import torch

        budget = self.budget()
        if threading.current_thread() is threading.main_thread():
            yield
            return
        share = max(1, budget // _scheduler_threads())
        # a thread's first torch call initializes its count from the process-wide value, which another
        # thread may have just set: initialize first, so the count set here is the one the forward uses
        torch.get_num_threads()
        torch.set_num_threads(share)
        try:
            yield
        finally:
            torch.set_num_threads(budget)  # also the process-wide default new threads start from


def _scheduler_threads() -> int:
    """Threads of the scheduler running this task: the distributed worker's, else the local pool's."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return local_threads()


def _process_threads() -> int:
    """torch's thread count as a thread that never set its own sees it: the process's setting."""
    import torch

    out = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


_CPU = _CpuShare()


def normalize(strip: np.ndarray, card: ModelCard, *, inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) reflectance with NaN nodata → (normalized with nodata as 0, valid mask)."""
    x = strip if inplace and strip.dtype == np.float32 else strip.astype("float32")
    x -= _mean(card)
    return _scaled(x, card)


def _mean(card: ModelCard) -> np.ndarray:
    return np.asarray(card.normalization.mean, dtype="float32")[:, None, None]


def _scaled(centred: np.ndarray, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The rest of :func:`normalize` for (C, H, W) float32 reflectance less the card's mean, in place."""
    valid = np.isfinite(centred).all(axis=0)  # NaN and inf stay so when the (finite) mean is taken off
    centred /= np.asarray(card.normalization.std, dtype="float32")[:, None, None]
    np.copyto(centred, 0.0, where=~valid)  # every pixel with a NaN or inf in any band (a mask index is 6x slower)
    return centred, valid


def _prepare(parts: tuple, channels: int, y0: int, x0: int, width: int, layout: TileLayout, card: ModelCard,
             above: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The normalized input of a group of tiles of one tile row, and its valid mask.

    The tiles start at row ``y0`` and columns ``x0, x0 + stride, ...`` (scene
    coordinates, negative or past the edge where they hang over it); the
    group's window is ``width`` pixels wide.
    ``parts`` are the input these tiles cover, as (band, row, col, data)
    (see :mod:`geoseg.sources`): the task fills its own window from them.
    ``above``, if given, is the last ``2 * halo`` rows of the same group's
    prepared window one tile row up (:func:`_last_rows`): they are this
    window's first, copied instead of read and normalized again, and
    ``parts`` cover only the rows below them.
    """
    T = layout.size
    keep = 0 if above is None else len(above[1])
    buf = np.empty((channels, T, width), dtype="float32")
    valid = np.empty((T, width), dtype=bool)
    if keep:
        buf[:, :keep], valid[:keep] = above
    # the parts cover every pixel of the window that lies in the scene: only the overhang is nodata
    top, bottom = min(T, max(keep, -y0)), max(keep, min(T, layout.ny - y0))
    left, right = min(width, max(0, -x0)), max(0, min(width, layout.nx - x0))
    buf[:, keep:top] = buf[:, bottom:] = buf[:, keep:, :left] = buf[:, keep:, right:] = np.nan
    fill(buf[:, keep:], y0 + keep, x0, parts, less=_mean(card))  # copied and centred in one pass
    _, valid[keep:] = _scaled(buf[:, keep:], card)
    return buf, valid


def _last_rows(prepared: tuple[np.ndarray, np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the last ``rows`` rows of a prepared window and of its valid mask."""
    x, valid = prepared
    return x[:, -rows:].copy(), valid[-rows:].copy()


def _forward(prepared: tuple[np.ndarray, np.ndarray], starts: tuple[int, ...], size: int, runner: Runner):
    """One batch of a group's tiles (their columns in the group's window) through the network:
    (the columns run, their probabilities). Tiles without any valid pixel are skipped."""
    x, valid = prepared
    todo = [s for s in starts if valid[:, s:s + size].any()]
    if not todo:
        return todo, None
    if len(todo) == 1 and not runner.pinned:  # a view, not a copy: the runner lays it out for the network (one copy, not two)
        return todo, runner(x[None, :, :, todo[0]:todo[0] + size])
    batch = runner.empty((len(todo), x.shape[0], size, size))  # page-locked on CUDA (see Runner.empty)
    for j, s in enumerate(todo):
        batch[j] = x[:, :, s:s + size]
    return todo, runner(batch)


def _accumulate(prepared: tuple[np.ndarray, np.ndarray], y0: int, x0: int, layout: TileLayout, K: int,
                blocks: tuple[tuple[int, int, int, int], ...], *batches) -> tuple[np.ndarray, ...]:
    """Blend a group's batches of tile probabilities; cut the result into one piece per output block.

    Each piece is (K + 1, rows, cols): K class probabilities and the weight,
    both already multiplied by the blend window and the valid mask, over the
    part of the block the group reaches with positive weight (:func:`_piece`).
    Only each tile's positive-weight zone is weighted and summed: its blend
    window is 0 within ``halo // 2`` pixels of its edges (a third of a 512²
    tile with a halo of 96). Pieces are separate arrays, so each is freed as
    soon as its block is blended: memory stays at a few groups of tiles,
    whatever the scene's size.
    """
    _, valid = prepared
    T, m = layout.size, layout.y.margin  # the same on both axes: one halo
    width = valid.shape[1]
    core = slice(m, T - m)
    acc = np.zeros((K + 1, T - 2 * m, width), dtype="float32")  # the window's rows [m, T - m)
    win = _window(layout)[core, core]
    weighted = np.empty((K,) + win.shape, dtype="float32")
    for todo, probs in batches:
        for s, p in zip(todo, probs if probs is not None else ()):
            inside = valid[core, s + m:s + T - m]
            w = win if inside.all() else win * inside
            np.multiply(p[:, core, core], w, out=weighted)
            acc[:K, :, s + m:s + T - m] += weighted
            acc[K, :, s + m:s + T - m] += w
    pieces = []
    for box in blocks:
        a, b, c, d = _piece(box, y0, x0, width, layout)
        pieces.append(np.ascontiguousarray(acc[:, a - y0 - m:b - y0 - m, c - x0:d - x0]))
    return tuple(pieces)


def _piece(block: tuple[int, int, int, int], y0: int, x0: int, width: int, layout: TileLayout) -> tuple[int, int, int, int]:
    """Rows [a, b) x cols [c, d) of output ``block`` (scene coordinates) that a group's tiles
    reach with positive weight: the group's window (first row ``y0``, columns from ``x0``,
    ``width`` wide) less the zero-weight margins of its tiles."""
    lo, hi, cl, ch = block
    my, mx, T = layout.y.margin, layout.x.margin, layout.size
    return max(lo, y0 + my), min(hi, y0 + T - my, layout.ny), max(cl, x0 + mx), min(ch, x0 + width - mx, layout.nx)


@functools.lru_cache(maxsize=8)
def _window(layout: TileLayout) -> np.ndarray:
    """The layout's blend window, computed once (read only: every group shares it)."""
    win = layout.window()
    win.flags.writeable = False
    return win


def _blend(block: tuple[int, int, int, int], parts: list[tuple[int, int, np.ndarray]], K: int) -> np.ndarray:
    """Output block rows [lo, hi) x cols [cl, ch): weighted mean of the pieces that reach it."""
    lo, hi, cl, ch = block
    num = np.zeros((K, hi - lo, ch - cl), dtype="float32")
    den = np.zeros((hi - lo, ch - cl), dtype="float32")
    for a, c, piece in parts:
        b, d = a + piece.shape[1], c + piece.shape[2]
        num[:, a - lo:b - lo, c - cl:d - cl] += piece[:K]
        den[a - lo:b - lo, c - cl:d - cl] += piece[K]
    with np.errstate(invalid="ignore", divide="ignore"):
        num /= den
    empty = den <= 0
    if empty.any():
        num[:, empty] = np.nan  # no valid input reached these pixels
    return num


#: Tiles per task along x: groups about this many pixels wide (see TileLayout.tile_groups).
GROUP_PIXELS = 2048


def _group_size(layout: TileLayout) -> int:
    """The number of tiles :meth:`TileLayout.tile_groups` aims at for a group."""
    return max(1, GROUP_PIXELS // layout.x.stride)


def _stack_array(stack: xr.DataArray) -> dsa.Array:
    """(C, y, x) dask array; a (time, band, y, x) stack is flattened to channels, earlier date first."""
    data = stack.data if isinstance(stack.data, dsa.Array) else dsa.from_array(np.asarray(stack.data), chunks=1024)
    if stack.ndim == 4:
        t, b, ny, nx = data.shape
        data = data.reshape((t * b, ny, nx))
    return data.astype("float32")


def _read(read: Read, gate) -> np.ndarray:
    """Run one read (``gate``: the task it waits for, unused)."""
    return read()


def _done(*_) -> None:
    return None


def _stitched(data: dsa.Array, layout: TileLayout, runner: Runner) -> dsa.Array:
    """The dask graph of :func:`predict`: (class, y, x) blended probabilities.

    Tile groups run in raster order. Their input comes from reads
    (:mod:`geoseg.sources`); on the local scheduler each read waits for the
    group ``lookahead()`` places before its first user, and for the output
    blocks that group completed. So reads never run far ahead of inference
    and finished blocks are blended before more input comes in, whatever
    order the scheduler prefers: memory holds about one row of tile groups
    (less for windowed sources), never the scene.
    """
    from dask._task_spec import Task, TaskRef, parse_input
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    K, T = len(runner.card.classes), layout.size
    reader = StackReader(data)
    G = _group_size(layout)
    rows, cols, groups = layout.output_rows(), layout.output_cols(G), layout.tile_groups(G)
    group_of = {tile: g for g, (first, end) in enumerate(groups) for tile in range(first, end)}
    # which output blocks each (tile row, tile group) task reaches with positive weight
    reach: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, (lo, hi) in enumerate(rows):
        for j, (cl, ch) in enumerate(cols):
            for k in layout.y.contributors(lo, hi):
                for g in sorted({group_of[l] for l in layout.x.contributors(cl, ch)}):
                    reach.setdefault((k, g), []).append((i, j))
    order = sorted(reach)
    last_use = {b: n for n, kg in enumerate(order) for b in reach[kg]}

    # The graph is written out directly: built with dask.delayed, each call
    # would re-optimize the whole (gated, hence connected) graph so far.
    tok = tokenize(reader.name, layout, runner)
    name, ahead = f"geoseg-blend-{tok}", lookahead()
    dsk, gates, pieces, reads, shared = {}, [], {}, {}, {}
    overlap = T - layout.y.stride  # the rows a tile row shares with the next: 2 * halo
    rank: dict = {}  # the group a task serves, to run them in raster order on a cluster
    for n, (k, g) in enumerate(order):
        y0, x0 = layout.y.starts[k], layout.x.starts[groups[g][0]]
        x1 = layout.x.starts[groups[g][1] - 1] + T
        starts = tuple(s - x0 for s in layout.x.starts[groups[g][0]:groups[g][1]])  # the tiles' columns in the window
        gate = TaskRef(gates[n - ahead]) if ahead is not None and n >= ahead else None
        # the 2 * halo rows shared with the same group one tile row up come from that group, already
        # normalized (each input row is read, scaled and normalized once, not twice). Only where
        # reads are gated (the local scheduler): on a cluster the rows would travel between workers
        above = shared.pop((k - 1, g), None)
        keep = overlap if above is not None else 0
        parts = []
        for piece in reader.pieces(y0 + keep, y0 + T, x0, x1) if y0 + keep < layout.ny else ():
            if piece.name not in reads:  # first user: read now (chunks are shared by later groups)
                reads[piece.name] = key = (f"geoseg-read-{tok}", len(reads))
                dsk[key] = Task(key, _read, piece.read, gate)
                rank[key] = n
            parts.append((piece.band, piece.row, piece.col, TaskRef(reads[piece.name])))
        targets = reach[k, g]
        boxes = tuple((*rows[i], *cols[j]) for i, j in targets)
        # the group's input once, then one task per batch of its tiles (so several threads or GPUs
        # share a group, and the last groups do not run alone), then one to blend the batches
        prep = (f"geoseg-prep-{tok}", k, g)
        dsk[prep] = Task(prep, _prepare, parse_input(tuple(parts)), int(data.shape[0]), y0, x0, x1 - x0, layout, runner.card,
                         None if above is None else TaskRef(above))
        below = []
        if ahead is not None and layout.halo and k + 1 < len(layout.y.starts):
            # a copy of the rows the next tile row shares, so this window is freed once its tiles
            # are blended; made before the group's gate opens, so it never holds the window longer
            shared[k, g] = (f"geoseg-shared-{tok}", k, g)
            dsk[shared[k, g]] = Task(shared[k, g], _last_rows, TaskRef(prep), overlap)
            rank[shared[k, g]] = n
            below.append(TaskRef(shared[k, g]))
        batches = []
        for b in range(0, len(starts), runner.batch_size):
            batches.append((f"geoseg-infer-{tok}", k, g, b))
            dsk[batches[-1]] = Task(batches[-1], _forward, TaskRef(prep), starts[b:b + runner.batch_size], T, runner)
        group = (f"geoseg-group-{tok}", k, g)
        dsk[group] = Task(group, _accumulate, TaskRef(prep), y0, x0, layout, K, boxes, *map(TaskRef, batches))
        rank.update(dict.fromkeys([prep, group, *batches], n))
        completed = []
        for m, (i, j) in enumerate(targets):
            part = (f"geoseg-piece-{tok}", k, g, m)
            dsk[part] = Task(part, operator.getitem, TaskRef(group), m)
            rank[part] = n
            a, _, c, _ = _piece(boxes[m], y0, x0, x1 - x0, layout)
            pieces.setdefault((i, j), []).append((a, c, TaskRef(part)))
            if last_use[i, j] == n:
                blend = (name, 0, i, j)
                dsk[blend] = Task(blend, _blend, (*rows[i], *cols[j]), parse_input(pieces.pop((i, j))), K)
                rank[blend] = n
                completed.append(TaskRef(blend))
        gates.append((f"geoseg-gate-{tok}", n))
        dsk[gates[-1]] = Task(gates[-1], _done, TaskRef(group), *completed, *below)
        rank[gates[-1]] = n
    # A distributed scheduler runs no gates (see lookahead): priorities keep it in raster order,
    # so output blocks finish top to bottom (a resumed run then skips the tiles of the top rows)
    # and pieces wait for their blend no longer than a few groups. dask.order alone finished
    # blocks in no particular order. Locally the gates do this job; where the local scheduler is told
    # to honour the priorities too (geoseg.priorities, as geoseg.io does while writing), the oldest
    # group's ready tasks run first, so no group straggles and drains the gated pipeline.
    annotations = {"priority": functools.partial(_priority, rank, len(order))}
    if runner.device.startswith("cuda") and _cluster_has_gpus():
        annotations["resources"] = _gpu_resources  # inference lands only on the workers that declare a GPU
    graph = HighLevelGraph({name: MaterializedLayer(dsk, annotations=annotations)}, {name: set()})
    chunks = ((K,), tuple(hi - lo for lo, hi in rows), tuple(hi - lo for lo, hi in cols))
    return dsa.Array(graph, name, chunks, dtype="float32")


def _priority(rank: dict, groups: int, key) -> int:
    """Higher runs first: the earlier the group a task serves, the higher."""
    return groups - rank[key]


def _cluster_has_gpus() -> bool:
    """Whether a distributed cluster is active and one of its workers declares a ``GPU`` resource.

    Without such a worker, a GPU restriction would leave inference tasks waiting forever
    (e.g. a LocalCluster started with ``gpus_per_worker: 0`` on a CUDA machine): then any worker runs them.
    """
    from geoseg.blocks import _client

    client = _client()
    if client is None:
        return False
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())


def _gpu_resources(key) -> dict:
    return {"GPU": 1} if isinstance(key, tuple) and key[0].startswith("geoseg-infer-") else {}


def predict(
    stack: xr.DataArray,
    model: Model | ModelCard | str | Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    resample: bool = False,
    check: bool = True,
    tile_size: int | None = None,
    halo: int | None = None,
) -> xr.DataArray:
    """Class probabilities (class, y, x), float32, lazy; NaN where input is nodata.

    ``stack`` is a (band, y, x) reflectance stack for single-date models, or
    (time=2, band, y, x) for bi-temporal ones, with an odc geobox (what
    :func:`geoseg.load` returns). Bands are matched to the card by name and
    reordered; a stack that breaks the card's contract (bands, dates,
    resolution, value range) is refused (:mod:`geoseg.contract`).
    ``model`` is a card path (loaded once per worker) or a loaded :class:`Model`.
    ``tile_size`` / ``halo`` override the card's (validated like the card).
    """
    if isinstance(model, (str, Path)):
        from geoseg.models import read_card

        card_path, card, loaded = str(Path(model).with_suffix(".json").resolve()), read_card(model), None
    elif isinstance(model, Model):
        card, loaded = model.card, model
        card_path = str(model.path.resolve()) if model.path is not None else None
    else:
        raise InputError(f"cannot predict with {type(model).__name__}", fix="give a model card path or a geoseg.models.Model")
    if tile_size is not None or halo is not None:
        from geoseg.models import ModelCard as _Card

        update = {k: v for k, v in (("tile_size", tile_size), ("halo", halo)) if v is not None}
        try:
            card = _Card.model_validate({**card.model_dump(), **update})
        except Exception as err:  # pydantic ValidationError: say which override is wrong
            raise InputError(f"tiling override {update} does not fit model {card.name!r}: {str(err).splitlines()[-1].strip()}",
                             fix=f"tile_size must be a multiple of {card.size_divisor} and more than 2 * halo") from None
    device = pick_device(device)
    batch_size = batch_size or default_batch_size(device, card.tile_size)
    runner = Runner(card=card, device=device, batch_size=batch_size, card_path=card_path, model=loaded)

    with spare_long_lived():  # checking and building the graph make many objects (see geoseg.collector)
        stack = conform(stack, card, resample=resample, check=check)
        data = _stack_array(stack)
        ny, nx = data.shape[-2:]
        layout = TileLayout(int(ny), int(nx), card.tile_size, card.halo)
        probs = _stitched(data, layout, runner)
    coords = {k: v for k, v in stack.coords.items() if set(v.dims) <= {"y", "x"}}
    out = xr.DataArray(probs, dims=("class", "y", "x"), coords=coords, name="probability")
    out = out.assign_coords({"class": card.class_ids, "class_name": ("class", [c.name for c in card.classes])})
    out.attrs = {"model": card.name, "model_version": card.version, "nodata": np.nan, "tiles": layout.n_tiles}
    return out


def classify(probs: xr.DataArray, card: ModelCard) -> tuple[xr.DataArray, xr.DataArray]:
    """(class ids uint8 with ``card.nodata_class`` where nodata, top-class probability float32)."""
    from dask.base import tokenize

    ids = np.asarray(card.class_ids, dtype="uint8")
    lookup = None if np.array_equal(ids, np.arange(len(ids))) else ids  # ids 0..K-1 are the argmax itself
    nodata = int(card.nodata_class)
    data = probs.data if isinstance(probs.data, dsa.Array) else dsa.from_array(np.asarray(probs.data))
    data = data.rechunk({0: -1})
    # blocks come as a list along the class axis (one block), not concatenated: that would copy each
    tok = tokenize(data.name, ids.tobytes(), nodata)
    cls = dsa.blockwise(_class_block, "yx", data, "kyx", dtype="uint8", concatenate=False, name=f"classes-{tok}",
                        lookup=lookup, nodata=nodata)
    conf = dsa.blockwise(_confidence_block, "yx", data, "kyx", dtype="float32", concatenate=False, name=f"confidence-{tok}")
    coords = {k: v for k, v in probs.coords.items() if set(v.dims) <= {"y", "x"}}
    c = xr.DataArray(cls, dims=("y", "x"), coords=coords, name="class", attrs={"nodata": nodata})
    f = xr.DataArray(conf, dims=("y", "x"), coords=coords, name="confidence", attrs={"nodata": np.nan})
    return c, f


def _one(blocks: list[np.ndarray]) -> np.ndarray:
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _invalid(p: np.ndarray) -> np.ndarray | None:
    """Where any class of (K, h, w) ``p`` is NaN or infinite (which spoils the sum), or None if nowhere."""
    bad = ~np.isfinite(p.sum(axis=0))
    return bad if bad.any() else None


def _class_block(blocks: list[np.ndarray], lookup: np.ndarray | None, nodata: int) -> np.ndarray:
    p = _one(blocks)
    idx = _argmax(p)
    out = idx.astype("uint8", copy=False) if lookup is None else lookup[idx]
    bad = _invalid(p)
    if bad is not None:
        out[bad] = nodata
    return out


def _confidence_block(blocks: list[np.ndarray]) -> np.ndarray:
    p = _one(blocks)
    top = p.max(axis=0).astype("float32", copy=False)  # NaN wherever any class is NaN
    bad = _invalid(p)
    if bad is not None:
        top[bad] = np.nan
    return top


def _argmax(p: np.ndarray) -> np.ndarray:
    """``np.argmax(p, axis=0)`` (the first class on ties) for finite (K, h, w) probabilities, one
    class at a time: numpy's argmax across the first axis reads it strided, several times slower."""
    best, idx = p[0].copy(), np.zeros(p.shape[1:], dtype="uint8" if len(p) <= 256 else "intp")
    for k in range(1, len(p)):
        better = (p[k] > best).view("uint8")
        idx += better * (idx.dtype.type(k) - idx)  # integer arithmetic wraps around: exact, and branch-free
        np.maximum(best, p[k], out=best)
    return idx
