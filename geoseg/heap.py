"""The C heap during inference and training: keep the memory each forward reuses.

A forward of a 512² tile allocates and frees tens of MiB of activations, and
tiled inference does so thousands of times. With glibc's default settings
each thread's heap hands that memory back to the kernel when the forward
frees it (blocks above a 128 KiB-32 MiB threshold are unmapped, heap tops
are trimmed) and the next forward faults it back in, one page at a time.
Measured on 2 cores, predicting a 2048² scene (49 tiles of 512²) with the
shipped Unet/MobileNetV2 and writing its COGs, one process per setting,
six processes each: with the defaults 0.19-0.77 M page faults and
0.34-1.35 s of system time per run, and a median run of 5.48 s; with the
settings below about 1 000 faults, 0.05-0.07 s, and 5.30 s (up to 12 %
faster where the defaults fared worst). Peak RSS grew by 40-170 MiB.
Training reallocates its activations and gradients every step, and
:func:`geoseg.train.train` applies the settings too: 25 CPU steps of the
shipped network (batches of 16 chips of 128², one thread) took 19.0 s instead
of 20.7 s (medians of three processes each), with 0.6-0.8 M page faults
instead of 0.9-1.9 M (blocks above 32 MiB are still mapped afresh).

:func:`keep_heap` sets, once per process, a fixed 32 MiB mmap threshold
(glibc's largest: smaller blocks come from the heap) and a 64 MiB top pad
(each arena keeps up to 64 MiB of slack when it trims). The cost is up to
64 MiB of freed memory kept per malloc arena (about one per thread).

It is a process-wide setting, so it stays out of the way: only on glibc,
never over a malloc setting of the environment (``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_THRESHOLD_``, or a ``glibc.malloc`` tunable), and
``GEOSEG_HEAP_TUNING=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

from geoseg import envvars

#: mallopt parameters (glibc's malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20
TOP_PAD = 64 * 2**20

_lock = threading.Lock()
_state: list[bool] = []  # [applied] once decided


def _left_to_environment() -> bool:
    """Whether the environment turned the setting off or sets the heap itself."""
    if not envvars.switch("GEOSEG_HEAP_TUNING", True):
        return True
    return any(name in os.environ for name in ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")) \
        or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


def keep_heap() -> bool:
    """Apply the settings once per process; whether they are in force."""
    if _state:
        return _state[0]
    with _lock:
        if not _state:
            _state.append(_apply())
    return _state[0]


def _apply() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _left_to_environment():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TOP_PAD, TOP_PAD) == 1
