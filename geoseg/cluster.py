"""Where a run computes: an existing Dask cluster, or a LocalCluster.

The address comes from, in order: the ``--scheduler`` option, the
``DASK_SCHEDULER_ADDRESS`` environment variable, the workflow's
``dask.scheduler``. Without one, a ``distributed.LocalCluster`` of worker
processes is started for the run and closed after it. Workers that declare a
``GPU`` resource (``dask worker --resources GPU=1``, one worker per GPU) are
the only ones that receive inference tasks when the model runs on CUDA
(see :func:`geoseg.inference.predict`); reading and writing run anywhere. On a
cluster where no worker declares one, inference runs on any worker.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

from geoseg.errors import GeosegError, InputError


class ClusterError(GeosegError):
    """The Dask scheduler cannot be reached."""


@contextlib.contextmanager
def connect(
    *,
    address: str | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str = "4GiB",
    gpus_per_worker: int = 0,
    echo: Callable[[str], None] = print,
) -> Iterator:
    """Yield a ``distributed.Client`` (the default scheduler while open)."""
    from distributed import Client, LocalCluster

    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({type(err).__name__})",
                               fix="check the address and that `dask scheduler` is running; or omit it to use a local cluster") from None
        with client:
            n = len(client.scheduler_info().get("workers", {}))
            echo(f"dask: connected to {address} ({n} workers); dashboard {client.dashboard_link}")
            yield client
        return
    if workers < 1 or threads_per_worker < 1:
        raise InputError(f"a local cluster needs >= 1 worker and thread (got {workers} x {threads_per_worker})", fix="fix dask.workers / dask.threads_per_worker")
    resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit, processes=True,
        resources=resources, dashboard_address="127.0.0.1:0", silence_logs=40,
    )
    with cluster, Client(cluster) as client:
        echo(f"dask: local cluster, {workers} worker process(es) x {threads_per_worker} thread(s); dashboard {client.dashboard_link}")
        yield client
