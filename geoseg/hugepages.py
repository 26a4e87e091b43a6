"""Transparent huge pages for torch's large CPU tensors.

torch (2.2 and later) backs CPU allocations of 2 MiB and more with
transparent huge pages when ``THP_MEM_ALLOC_ENABLE=1``. A CPU forward's
activations are tens of MiB per layer; on 4 KiB pages they cost TLB misses
and page faults that depend on how fragmented the process's heap is. In a
whole predict (reading, blending and writing beside the forwards) that made
each forward of a 4096² scene cost about 5 % more than the same forward on
its own; with huge pages, about the same (median +0.2 %, six alternations),
and predict's end-to-end / bare-forward ratio at 4096² rose from 0.864 to
0.894 (medians of six processes each; see the README's benchmarks).

torch reads the variable once, at its first CPU allocation (not at import),
so it is set when ``geoseg`` is imported: it applies wherever geoseg is
imported before the first tensor is made. A value the user set (``0`` to turn
it off) is kept, and it is only set where the kernel offers huge pages to
processes that ask for them (``always`` or ``madvise``).
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "THP_MEM_ALLOC_ENABLE"
SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def kernel_offers(sysfs: Path = SYSFS) -> bool:
    """Whether the kernel gives huge pages to a process that asks (mode ``always`` or ``madvise``)."""
    try:
        mode = sysfs.read_text()
    except OSError:  # not Linux, or a kernel built without them
        return False
    return "[never]" not in mode


def enable(environ=os.environ, sysfs: Path = SYSFS) -> bool:
    """Ask torch for huge pages, unless the user said otherwise; whether they are asked for now."""
    if VARIABLE not in environ and kernel_offers(sysfs):
        environ[VARIABLE] = "1"
    return environ.get(VARIABLE) == "1"
