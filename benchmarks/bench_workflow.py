"""Workflow benchmark: the demo workflow on a LocalCluster of 1 worker vs 2
workers (wall time of `geoseg run`, cluster start included), side by side.

    python -m benchmarks workflow [--repeat N]

Each configuration runs N times (alternating) into a fresh output directory;
medians are compared. On a 2-core machine the ideal ratio is about 2.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def workflow_with(workers: int, out: Path) -> Path:
    data = yaml.safe_load((REPO / "workflows" / "demo.yaml").read_text())
    base = REPO / "workflows"
    data["catalog"]["serve"] = str((base / data["catalog"]["serve"]).resolve())
    for key, value in list(data["models"].items()):
        data["models"][key] = str((base / value).resolve())
    data["output"] = str(out)
    data["dask"] = {"workers": workers, "threads_per_worker": 1, "memory_limit": "4GiB"}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed_run(workers: int, tmp: Path, i: int) -> float:
    out = tmp / f"w{workers}-{i}"
    wf = workflow_with(workers, out)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "geoseg", "run", str(wf)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks workflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    times = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-wf-") as tmp:
        for i in range(args.repeat):
            for workers in (1, 2):
                times[workers].append(timed_run(workers, Path(tmp), i))
    m1, m2 = statistics.median(times[1]), statistics.median(times[2])
    print("demo workflow (workflows/demo.yaml: 2 scenes segmented, post-classification + model-based change, GeoPackage)")
    print(f"    1 worker : median {m1:.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times[1])})")
    print(f"    2 workers: median {m2:.1f} s  (runs: {', '.join(f'{t:.1f}' for t in times[2])})")
    print(f"    => speed-up 2 workers / 1 worker = {m1 / m2:.2f}x")


if __name__ == "__main__":
    main()
