"""Computing lazy rasters block by block on a Dask cluster, resumably.

:func:`materialize` runs the blocks of a dask array that are not yet in a
cache directory on whatever scheduler is active (a ``distributed`` cluster
in workflow runs), receives each finished block in the client process and
saves it atomically as ``.npy``. The cache is the run's record of finished
work: after a crash, a second run loads the finished blocks and computes only
the missing ones; a block is never half-saved; a lost worker only means its
blocks are recomputed elsewhere. Workers need no shared filesystem: blocks
come back to the client.

:func:`cached_array` then reads the cache back as a lazy dask array, to be
written to COGs locally.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dask
import dask.array as dsa
import numpy as np


@dataclass(frozen=True)
class Materialized:
    """What :func:`materialize` did."""

    cache: Path
    blocks: int
    computed: int
    reused: int


def _key(index: tuple[int, ...]) -> str:
    return "b" + "_".join(map(str, index))


def _save(path: Path, block: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, block)
    os.replace(tmp, path)


def materialize(arr: dsa.Array, cache: str | Path, *, on_block: Callable[[int, int], None] | None = None) -> Materialized:
    """Compute every block of ``arr`` missing from ``cache`` and save it there.

    ``cache`` also records the array's shape, chunks and dtype; a cache made
    for a different array is refused rather than silently mixed in.
    ``on_block(done, total)`` is called as blocks finish (a progress bar).
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    meta = {"shape": list(arr.shape), "chunks": [list(c) for c in arr.chunks], "dtype": str(arr.dtype)}
    meta_path = cache / "array.json"
    if meta_path.exists():
        if json.loads(meta_path.read_text()) != meta:
            raise RuntimeError(f"block cache {cache} belongs to another array (shape/chunks changed); delete it to start over")
    else:
        meta_path.write_text(json.dumps(meta))

    # Unoptimized: optimizing flattens the graph into one layer and drops the layers' annotations
    # (task priorities, GPU resources; see geoseg.inference). Each block's graph is still culled.
    delayed = arr.to_delayed(optimize_graph=False)
    indices = list(np.ndindex(*delayed.shape))
    todo = [i for i in indices if not (cache / f"{_key(i)}.npy").exists()]
    total, done = len(indices), len(indices) - len(todo)
    if on_block:
        on_block(done, total)
    if todo:
        client = _client()
        if client is not None:
            from distributed import as_completed

            # one submission, so the scheduler ranks all blocks' tasks together (separate submissions
            # each ranked theirs from 0 and interleaved); task priorities set the order (geoseg.inference)
            futures = dict(zip(client.compute([delayed[i] for i in todo]), todo))
            for fut in as_completed(futures):
                _save(cache / f"{_key(futures[fut])}.npy", fut.result())
                fut.release()
                done += 1
                if on_block:
                    on_block(done, total)
        else:
            for i in todo:
                _save(cache / f"{_key(i)}.npy", np.asarray(dask.compute(delayed[i])[0]))
                done += 1
                if on_block:
                    on_block(done, total)
    return Materialized(cache=cache, blocks=total, computed=len(todo), reused=total - len(todo))


def _client():
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def cached_array(cache: str | Path) -> dsa.Array:
    """The cached blocks as a lazy dask array (each block read on demand)."""
    cache = Path(cache)
    meta = json.loads((cache / "array.json").read_text())
    chunks = tuple(tuple(c) for c in meta["chunks"])
    shape = tuple(len(c) for c in chunks)
    blocks = np.empty(shape, dtype=object)
    for i in np.ndindex(*shape):
        block_shape = tuple(chunks[d][i[d]] for d in range(len(i)))
        blocks[i] = dsa.from_delayed(dask.delayed(np.load)(str(cache / f"{_key(i)}.npy")), shape=block_shape, dtype=meta["dtype"])
    return dsa.block(blocks.tolist())
