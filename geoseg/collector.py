"""Python's cyclic garbage collector while a prediction is built and computed.

A full (generation 2) collection walks every object the collector tracks.
With torch, dask, xarray and a loaded network imported that is about half a
million objects, and the walk holds the GIL: about 185 ms on 2 cores, during
which no forward starts its next op and no other task runs. Building and
computing a prediction's graph makes enough objects to set one off every few
predictions (on the predict benchmark's 2048² scene: 1 run in 8, 184 ms of
a 3.9 s run, while building the graph with both cores idle).

:func:`spare_long_lived` freezes (:func:`gc.freeze`) the objects that
already exist when it starts, so collections during it walk only the objects
made since, and unfreezes them when it ends: they are collected as before
from then on. Nothing is left uncollected: an object that became garbage
meanwhile is freed by the first full collection after the scope. Nested and
concurrent scopes freeze once, for the outermost. Where something else has
frozen objects already (a server that forks workers, say), or the
collector is disabled, it leaves the collector alone.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_froze = False


@contextlib.contextmanager
def spare_long_lived() -> Iterator[None]:
    """Within this scope, collections leave out the objects that existed when it began."""
    global _depth, _froze
    with _lock:
        if _depth == 0:
            _froze = gc.isenabled() and gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _froze:
                gc.unfreeze()
                _froze = False
