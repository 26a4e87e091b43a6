"""Predict benchmark: throughput overhead and peak memory.

(a) End-to-end throughput (read COG -> normalize -> infer -> blend -> write
    class + confidence COGs) divided by the bare model-forward throughput on
    the same tiles, in the same process. Goal: >= 0.9 on CPU. Measured with
    the model geoseg ships and the demo runs (models/s2-water.json: Unet /
    MobileNetV2, 6 bands, tiles of 512 with a halo of 96), on a synthetic
    6-band scene. Then the same with small tiles (a random Unet / MobileNetV2,
    4 bands, tiles of 256 with a halo of 32): half the forward work per scene
    pixel, so the work beside the forwards weighs about twice as much. The
    bare forward runs the very tiles the end-to-end run fed the network
    (recorded), and is the faster of one stream of batches using every torch
    thread and one stream per core on threads kept from run to run (one torch
    thread each, as predict runs on the CPU), both through predict's CPU
    network (batch norm folded, the card's memory layout: geoseg.cpunet); the
    eager network's forwards are timed beside them (informative: the speed-up
    of that network). Seven alternations; the ratio is
    the median of the seven pairs (each end-to-end run against the bare
    forwards right after it), so that a machine whose speed drifts between
    runs compares like with like. Every timed run starts with a full garbage
    collection, so that none pays for one that objects of an earlier run set
    off (a full collection walks about 500 000 objects here, ~185 ms with the
    GIL held).
(b) Peak RSS predicting a synthetic 4-band scene with a tiny model: one full
    Sentinel-2 tile (10980 x 10980) and a scene of 4x its area (2x each side),
    each in its own process. Goals: < 2 GiB, growing < 20 %.

    A 2048² scene has more tiles per pixel than a larger one (its edge tiles
    hang over by a halo on every side: 49 tiles of 512² for 4.2 Mpx, where a
    4096² scene has 169 for 16.8 Mpx), so it gives the forward more work per
    pixel, and the work beside it (which goes with pixels) less weight:
    ``--size 4096`` measures (a) nearer the proportions of a whole
    Sentinel-2 tile (10980²: 1225 tiles), in about four times the time.

    ``--device cuda`` runs (a) on a GPU (informative: the goal is the CPU's):
    the model under bf16/fp16 autocast in batches of 16, the bare forward one
    stream of the same batches through the same runner (host to device and
    back included, as predict pays them), reading, blending and writing on
    every core meanwhile. (b) always runs on the CPU.

    python -m benchmarks predict [--quick] [--size N] [--device cpu|cuda] [--skip-memory] [--skip-small-tiles]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.array as dsa
import numpy as np


def synthetic_scene(path: Path, size: int, bands: int = 4, seed: int = 0) -> Path:
    """A uint16 COG of smooth 'land cover' blobs (DN = reflectance x 10000, nodata 0), written streaming."""
    from odc.geo.geobox import GeoBox

    from geoseg.io import write_cog

    gbox = GeoBox.from_bbox((300000, 5000000 - size * 10, 300000 + size * 10, 5000000), crs="EPSG:32631", resolution=10, tight=True)

    def block(_, block_info=None):
        (b0, b1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy, xx = np.mgrid[y0:y1, x0:x1].astype("float32")
        out = np.empty((b1 - b0, y1 - y0, x1 - x0), dtype="uint16")
        for i, b in enumerate(range(b0, b1)):
            f = 0.15 + 0.1 * np.sin(xx / (37.0 + 11 * b)) * np.cos(yy / (53.0 + 7 * b)) + 0.05 * np.sin((xx + yy) / 211.0)
            out[i] = np.clip(f * 10000, 1, 65535).astype("uint16")
        return out

    arr = dsa.map_blocks(block, dsa.zeros((bands, size, size), chunks=(bands, 2048, 2048), dtype="uint16"), dtype="uint16")
    return write_cog(arr, path, gbox, nodata=0, overwrite=True)


def open_stack(path: Path, names):
    """Lazy reflectance stack from a COG (rioxarray), scaled by geoseg.load's own
    scale_dn: float32(DN) * scale, NaN where DN is the nodata value."""
    import rioxarray

    from geoseg.fetch import scale_dn

    dn = rioxarray.open_rasterio(path, chunks={"band": -1, "y": 512, "x": 2048}, lock=False)
    return scale_dn(dn, 1e-4, 0.0, 0).assign_coords(band=list(names))


def tiny_model(bands: int):
    import torch

    from geoseg.models import ClassInfo, Model, ModelCard, Normalization

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(bands, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    card = ModelCard(
        name="tiny", version="0", architecture="Unet", encoder="resnet18", bands=tuple(f"b{i}" for i in range(bands)),
        normalization=Normalization(mean=(0.15,) * bands, std=(0.1,) * bands),
        classes=(ClassInfo(id=0, name="a", color=(0, 0, 0)), ClassInfo(id=1, name="b", color=(255, 255, 255))),
        resolution=10, tile_size=512, halo=32, size_divisor=32, weights="tiny.safetensors",
    )
    return Model(card=card, network=Tiny().eval())


def small_tile_model(bands: int):
    import torch

    from geoseg.models import ClassInfo, Model, ModelCard, Normalization, build_network

    torch.manual_seed(0)
    card = ModelCard(
        name="unet-mobilenet", version="0", architecture="Unet", encoder="mobilenet_v2", bands=tuple(f"b{i}" for i in range(bands)),
        normalization=Normalization(mean=(0.15,) * bands, std=(0.1,) * bands),
        classes=(ClassInfo(id=0, name="a", color=(0, 0, 0)), ClassInfo(id=1, name="b", color=(255, 255, 255))),
        resolution=10, tile_size=256, halo=32, size_divisor=32, weights="x.safetensors",
    )
    return Model(card=card, network=build_network(card).eval())


def shipped_model():
    """The trained water model geoseg ships (models/s2-water.json), as the demo runs it."""
    from geoseg.models import load

    return load(Path(__file__).resolve().parent.parent / "models" / "s2-water.json")


@contextlib.contextmanager
def fed_tiles(runner_type):
    """Every batch of normalized tiles the network is given meanwhile, in a list."""
    call, fed, lock = runner_type.__call__, [], threading.Lock()

    def record(self, tiles):
        with lock:
            fed.append(tiles.copy())
        return call(self, tiles)

    runner_type.__call__ = record
    try:
        yield fed
    finally:
        runner_type.__call__ = call


def throughput(workdir: Path, size: int, model, device: str = "cpu") -> dict:
    """(a): end-to-end vs bare forward on the same tiles, same process."""
    import torch

    from geoseg.outputs import write_prediction
    from geoseg.inference import Runner, default_batch_size, predict

    card = model.card
    bands = len(card.bands)
    cog = synthetic_scene(workdir / "scene.tif", size, bands)
    stack = open_stack(cog, card.bands)
    runner = Runner(card=card, device=device, batch_size=default_batch_size(device, card.tile_size), model=model)
    runner(np.zeros((runner.batch_size, bands, card.tile_size, card.tile_size), "float32"))  # warm-up

    def end_to_end() -> float:
        gc.collect()  # every timed run starts from the same collector state (see the module's docstring)
        t0 = time.perf_counter()
        probs = predict(stack, model, device=device)  # the device's default batch, as the runner's
        write_prediction(probs, card, workdir / "out", "scene", overwrite=True)
        return time.perf_counter() - t0

    # the bare forward runs the very tiles the end-to-end run feeds the network, recorded on its
    # warm-up run (random tiles ran ~1.5 % slower)
    with fed_tiles(Runner) as fed:
        end_to_end()
    tiles = np.concatenate(fed)
    n = len(tiles)
    if device != "cpu":
        return _on_gpu(end_to_end, runner, tiles, size, card)

    streams = os.cpu_count() or 1

    class Eager(Runner):
        """The network as loaded, batch norm unfolded, contiguous layout: what CPU inference ran before geoseg.cpunet."""

        def network(self):
            return model.network

    eager = Eager(card=card.model_copy(update={"cpu_memory_format": "contiguous"}), device="cpu", batch_size=runner.batch_size, model=model)
    # threads kept from run to run, as dask keeps its pool: fresh threads would start each run
    # with cold heaps (page faults) and made the bare forward ~10 % slower
    pool = ThreadPoolExecutor(streams)

    def bare_forward(parallel: bool, run=runner) -> float:
        """The same tiles through the same runner, nothing else: one stream of batches
        with all torch threads, or one stream per core taking the next batch as it
        finishes one (one thread each, as predict runs on the CPU)."""
        batches = [tiles[i:i + run.batch_size] for i in range(0, n, run.batch_size)]
        gc.collect()
        t0 = time.perf_counter()
        if parallel:
            list(pool.map(run, batches))
        else:
            for batch in batches:
                run(batch)
        return time.perf_counter() - t0

    # alternate, seven times each. The machine's speed drifts (2 shared cores): each end-to-end run is
    # compared with the bare forwards run right after it, and the ratio is the median of those pairs.
    # The baseline of a pair is the faster of its two bare forwards.
    # The eager network's forwards (informative) run after the pair, on the same threads.
    e2e_runs, one_runs, par_runs, eager_runs = [], [], [], []
    bare_forward(True, eager)  # its warm-up
    for _ in range(7):
        e2e_runs.append(end_to_end())
        one_runs.append(bare_forward(False))
        par_runs.append(bare_forward(True))
        eager_runs.append(bare_forward(True, eager))
    pool.shutdown()
    pairs = [min(o, p) / e for e, o, p in zip(e2e_runs, one_runs, par_runs)]
    e2e, one, par, slow = (float(np.median(r)) for r in (e2e_runs, one_runs, par_runs, eager_runs))
    bare = min(one, par)
    mpx = n * card.tile_size ** 2 / 1e6
    return {
        "scene": f"{size}x{size} px, {bands} bands", "model": f"{card.name} ({card.architecture}/{card.encoder})", "tiles": n,
        "tile": card.tile_size, "batch": runner.batch_size, "torch_threads": torch.get_num_threads(),
        "bare_one_stream_s": round(one, 2), f"bare_{streams}_streams_s": round(par, 2),
        "end_to_end_s": round(e2e, 2), "bare_forward_s": round(bare, 2),
        "end_to_end_tiles_per_s": round(n / e2e, 2), "bare_tiles_per_s": round(n / bare, 2),
        "end_to_end_mpx_per_s": round(mpx / e2e, 3), "bare_mpx_per_s": round(mpx / bare, 3),
        "ratio_of_medians": round(bare / e2e, 3),
        "paired_ratios": " ".join(f"{r:.3f}" for r in pairs),
        "ratio": round(float(np.median(pairs)), 3),
        f"eager_network_{streams}_streams_s": round(slow, 2),
        "cpu_network_speedup": round(float(np.median([s / p for s, p in zip(eager_runs, par_runs)])), 3),
    }


def _on_gpu(end_to_end, runner, tiles: np.ndarray, size: int, card) -> dict:
    """(a) on a GPU: forwards run one batch at a time there (predict's runner holds a lock per
    GPU), so the bare forward is one stream of the same batches through the same runner."""
    import torch

    batches = [tiles[i:i + runner.batch_size] for i in range(0, len(tiles), runner.batch_size)]

    def bare_forward() -> float:
        gc.collect()
        t0 = time.perf_counter()
        for batch in batches:
            runner(batch)  # returns the probabilities on the host: synchronized
        return time.perf_counter() - t0

    bare_forward()  # warm-up of the batch shapes
    e2e_runs, bare_runs = [], []
    for _ in range(7):
        e2e_runs.append(end_to_end())
        bare_runs.append(bare_forward())
    pairs = [b / e for e, b in zip(e2e_runs, bare_runs)]
    e2e, bare = float(np.median(e2e_runs)), float(np.median(bare_runs))
    n, mpx = len(tiles), len(tiles) * card.tile_size ** 2 / 1e6
    return {
        "scene": f"{size}x{size} px, {len(card.bands)} bands", "model": f"{card.name} ({card.architecture}/{card.encoder})", "tiles": n,
        "tile": card.tile_size, "batch": runner.batch_size, "device": f"{runner.device} ({torch.cuda.get_device_name()})",
        "cpu_threads": os.cpu_count(), "end_to_end_s": round(e2e, 3), "bare_forward_s": round(bare, 3),
        "end_to_end_tiles_per_s": round(n / e2e, 1), "bare_tiles_per_s": round(n / bare, 1),
        "end_to_end_mpx_per_s": round(mpx / e2e, 2), "bare_mpx_per_s": round(mpx / bare, 2),
        "ratio_of_medians": round(bare / e2e, 3), "paired_ratios": " ".join(f"{r:.3f}" for r in pairs),
        "ratio": round(float(np.median(pairs)), 3),
    }


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that
    across exec from the parent, which would count the scene generator."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(size: int, workdir: str) -> None:
    """Runs in its own process: predict + write one scene, print peak RSS."""
    from geoseg.outputs import write_prediction
    from geoseg.inference import predict

    workdir = Path(workdir)
    cog = workdir / f"scene{size}.tif"
    model = tiny_model(4)
    stack = open_stack(cog, model.card.bands)
    base = peak_rss_mib()
    t0 = time.perf_counter()
    probs = predict(stack, model, device="cpu", batch_size=8)
    write_prediction(probs, model.card, workdir / f"out{size}", "scene", overwrite=True)
    peak = peak_rss_mib()
    print(json.dumps({"size": size, "tiles": probs.attrs["tiles"], "seconds": round(time.perf_counter() - t0, 1),
                      "rss_before_mib": round(base), "peak_rss_mib": round(peak)}))


def memory(workdir: Path, sizes) -> list[dict]:
    out = []
    for size in sizes:
        synthetic_scene(workdir / f"scene{size}.tif", size)
        r = subprocess.run([sys.executable, "-m", "benchmarks.bench_predict", "--child", str(size), str(workdir)],
                           capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        (workdir / f"scene{size}.tif").unlink()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small scenes (a smoke run, not the reported figures)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=2048, help="side of (a)'s synthetic scenes in pixels (default 2048)")
    p.add_argument("--device", default="cpu", help="where (a) runs the model: cpu (the goal's; default) or cuda (informative)")
    p.add_argument("--skip-memory", action="store_true", help="only (a)")
    p.add_argument("--skip-small-tiles", action="store_true", help="(a) with the shipped model only")
    args = p.parse_args(argv)
    if args.device != "cpu":
        from geoseg.errors import InputError
        from geoseg.inference import pick_device

        try:
            args.device = pick_device(args.device)
        except InputError as e:
            p.error(str(e))
    if args.child:
        memory_child(int(args.child[0]), args.child[1])
        return
    tp_size, mem_sizes = (768, (1024, 2048)) if args.quick else (args.size, (10980, 21960))
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        tmp = Path(tmp)
        runs = [("the shipped model", shipped_model)]
        if not args.skip_small_tiles:
            runs.append(("small tiles", lambda: small_tile_model(4)))
        for i, (what, build) in enumerate(runs):
            a = throughput(tmp, tp_size, build(), args.device)
            print(f"({'a' if i == 0 else 'a, ' + what}) predict throughput with {what} on {args.device}, "
                  "end to end vs bare model forward (same tiles, same process)", flush=True)
            for k, v in a.items():
                print(f"    {k:26s} {v}")
            print(f"    => ratio end-to-end / bare = {a['ratio']:.3f}, median of {len(a['paired_ratios'].split())} pairs"
                  + ("  (goal >= 0.9 on CPU)" if i == 0 and args.device == "cpu" else "  (informative)"), flush=True)
        if args.skip_memory:
            return
        m = memory(tmp, mem_sizes)
        print("(b) peak RSS, tiny model, synthetic 4-band scenes (one process each)")
        for r in m:
            print(f"    {r['size']} x {r['size']}: {r['tiles']} tiles in {r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB "
                  f"(after imports {r['rss_before_mib']} MiB)")
        growth = m[1]["peak_rss_mib"] / m[0]["peak_rss_mib"] - 1
        print(f"    => peak {m[0]['peak_rss_mib'] / 1024:.2f} GiB (goal < 2 GiB); 4x area grows it by {growth:+.1%} (goal < +20 %)")


if __name__ == "__main__":
    main()
