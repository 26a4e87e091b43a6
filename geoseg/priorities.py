"""Task priorities on dask's local (threaded) scheduler.

A ``distributed`` scheduler runs ready tasks by their ``priority``
annotation (higher first). The local scheduler ignores annotations: it runs
the task made ready last (LIFO), and the input of tiled inference
(:mod:`geoseg.inference`) is then consumed out of order. Newer tile groups'
forwards overtake an older group's, and the older group straggles. Reads are
gated on the group ``lookahead()`` places back, so when that group is the
straggler nothing new can start until its last forward ends, and the
pipeline drains.

Measured with the shipped model on a 4096² scene, 2 cores, three runs each
way, alternated in one process: without this, one thread idled for 66-184 ms
two or three times per run, and the threads idled 0.34-0.44 core-seconds in
all. With it, there was at most one such gap, and 0.12-0.30 core-seconds
idle.

:func:`honoured` makes the local scheduler follow the same annotations.
Whenever tasks become ready, the ready list is ordered by priority, so the
highest runs next. Equal priorities keep dask's own order.

Tasks that dask's optimization made from annotated ones carry no
annotation of their own:

* a fused chain of tasks gets a new key. It takes the priority of the
  chain's output, else the highest of those inside it;
* any other task (the getitem and store tasks after a blend) takes the
  lowest of its dependencies'.

A task with none of these runs as soon as it is ready.

Priorities only pick the order among ready tasks. Results never depend on
them.
"""

from __future__ import annotations

import contextlib
from typing import Hashable, Iterable, Iterator, Mapping

import dask.array as dsa
from dask import _task_spec
from dask.callbacks import Callback


def annotated(arrays: Iterable[dsa.Array]) -> dict[Hashable, float]:
    """The ``priority`` annotation of every key of ``arrays``' graphs that has one
    (a number, or a function of the key), before optimization renames keys."""
    out: dict[Hashable, float] = {}
    for arr in arrays:
        for layer in arr.__dask_graph__().layers.values():
            priority = (layer.annotations or {}).get("priority")
            if priority is None:
                continue
            for key in layer:  # only annotated layers are walked (geoseg's are materialized already)
                out[key] = priority(key) if callable(priority) else priority
    return out


class _ReadyByPriority(Callback):
    """Keeps the local scheduler's ready list sorted so that it pops the highest priority first.

    Each computation's priorities live in its own scheduler state: while the
    callback is active, every local computation calls it, including the small
    ones that tasks run inside themselves (reads), in other threads.
    Computations with no given key are left alone.
    """

    _STATE_KEY = "geoseg-priority"

    def __init__(self, priorities: Mapping[Hashable, float]):
        super().__init__()
        self.given = priorities

    def _start_state(self, dsk, state) -> None:
        given, deps, of, found = self.given, state["dependencies"], {}, False
        for root in dsk:
            stack = [root]
            while stack:
                key = stack[-1]
                if key in of:
                    stack.pop()
                elif (p := given[key] if key in given else _fused_priority(dsk[key], given)) is not None:
                    of[key], found = p, True
                    stack.pop()
                elif todo := [d for d in deps.get(key, ()) if d not in of]:
                    stack.extend(todo)
                else:  # a task made from given ones (getitem, store): the lowest of its dependencies'
                    of[key] = min((of[d] for d in deps.get(key, ())), default=float("inf"))
                    stack.pop()
        if found:
            state[self._STATE_KEY] = of
            self._sort(state)

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self._sort(state)

    def _sort(self, state) -> None:
        of = state.get(self._STATE_KEY)
        if of is not None:  # the scheduler pops from the end; a stable sort keeps dask's order among equals
            state["ready"].sort(key=of.__getitem__)


def _fused_priority(task, given: Mapping[Hashable, float]) -> float | None:
    """For a chain of tasks that dask's optimization fused into one: the given priority of the
    chain's output, else the highest given to a task inside it; None for any other task."""
    if getattr(task, "func", None) is not getattr(_task_spec, "_execute_subgraph", ()):
        return None
    inner, out = task.args[0], task.args[1]  # Task.fuse: the tasks by key, and the output's key
    if out in given:
        return given[out]
    return max((given[k] for k in inner if k in given), default=None)


@contextlib.contextmanager
def honoured(arrays: Iterable[dsa.Array]) -> Iterator[None]:
    """Within the block, computations on the local scheduler run ready tasks of
    ``arrays``' graphs by their ``priority`` annotations (higher first).

    Nothing changes when no key has a priority, or when a ``distributed``
    client is active: its scheduler honours them already.
    """
    from geoseg.blocks import _client

    priorities = annotated(arrays)
    if not priorities or _client() is not None:
        yield
        return
    with _ReadyByPriority(priorities):
        yield
