"""Vectorize benchmark: geoseg's block-wise vectorize vs the naive whole-array way.

A synthetic class raster with realistic blobs (several classes from smooth
random fields, with speckle) is written streaming as a COG. Then, each in its
own process (peak RSS from ``resource.getrusage``):

* **geoseg**: ``geoseg.vectorize.vectorize(COG, OUT.gpkg)`` (block-wise, seam-free);
* **naive**: read the whole array, ``rasterio.features.shapes`` + GeoDataFrame
  + ``to_file`` (GPKG) - the usual recipe.

Both give the same polygons (one per 4-connected region). Printed side by
side: wall time, CPU time, peak RSS, polygons, and geoseg/naive ratios.

    python -m benchmarks vectorize            # 10980 x 10980 (one Sentinel-2 tile)
    python -m benchmarks vectorize --quick    # 2048 x 2048
    python -m benchmarks vectorize --size N --simplify 10   # other sizes; also time a simplified run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask.array as dsa
import numpy as np

CLASSES = 4


def _field(yy: np.ndarray, xx: np.ndarray, k: int) -> np.ndarray:
    """A smooth random-looking field for class ``k``: sinusoids at several scales and angles, plus speckle."""
    rng = np.random.default_rng(1000 + k)
    f = np.zeros(yy.shape, dtype="float32")
    for wavelength in (900.0, 420.0, 190.0, 85.0, 37.0, 17.0):
        for _ in range(2):
            theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            f += np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / wavelength) + phase) * (wavelength / 900.0) ** 0.5
    h = (xx.astype("int64") * 73856093 ^ yy.astype("int64") * 19349663 ^ (k + 1) * 83492791) % 1000003
    return f + 0.35 * (h.astype("float32") / 1000003.0)


def synthetic_classes(path: Path, size: int) -> Path:
    """A uint8 class COG (classes 0..3, nodata 255 in one corner), written streaming from dask."""
    from odc.geo.geobox import GeoBox

    from geoseg.io import write_cog
    from geoseg.models import ClassInfo
    from geoseg.outputs import class_colormap, class_metadata
    from tests.helpers import make_card

    gbox = GeoBox.from_bbox((300000, 5000000 - size * 10, 300000 + size * 10, 5000000), crs="EPSG:32631", resolution=10, tight=True)

    def block(_, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        yy, xx = np.mgrid[y0:y1, x0:x1].astype("float32")
        out = np.argmax(np.stack([_field(yy, xx, k) for k in range(CLASSES)]), axis=0).astype("uint8")
        out[(yy + xx) < size / 10] = 255
        return out

    arr = dsa.map_blocks(block, dsa.zeros((size, size), chunks=(1024, 1024), dtype="uint8"), dtype="uint8")
    names = ("water", "forest", "crops", "urban")
    colors = ((0, 90, 255), (20, 140, 40), (230, 200, 60), (200, 40, 40))
    card = make_card(classes=2).model_copy(update={"classes": tuple(ClassInfo(id=i, name=n, color=c) for i, (n, c) in enumerate(zip(names, colors)))})
    tags, band = class_metadata(card, {"stac_items": "synthetic", "datetimes": "2020-01-01T00:00:00Z"})
    return write_cog(arr, path, gbox, dtype="uint8", nodata=255, colormap=class_colormap(card), tags=tags, band_tags=[band], overwrite=True)


def _child(mode: str, cog: str, out: str, simplify: float) -> None:
    t0 = time.perf_counter()
    if mode == "geoseg":
        import pyogrio

        from geoseg.vectorize import vectorize

        vectorize(cog, out, layer="classes", simplify=simplify)
        n = pyogrio.read_info(out, layer="classes")["features"]
    else:
        import geopandas as gpd
        import rasterio
        import rasterio.features
        from shapely.geometry import shape

        with rasterio.open(cog) as ds:
            a, transform, crs, nodata = ds.read(1), ds.transform, ds.crs, ds.nodata
        geoms, values = [], []
        for g, v in rasterio.features.shapes(a, mask=a != nodata, connectivity=4, transform=transform):
            geoms.append(shape(g))
            values.append(int(v))
        gdf = gpd.GeoDataFrame({"class_id": values}, geometry=geoms, crs=crs)
        gdf.to_file(out, layer="classes", driver="GPKG")
        n = len(gdf)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss = ru.ru_maxrss / 1024  # KiB -> MiB (Linux)
    print(json.dumps({"mode": mode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mib": rss, "polygons": n}))


def _run(mode: str, cog: Path, out: Path, simplify: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_vectorize", "--child", mode, str(cog), str(out), str(simplify)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if r.returncode:
        raise RuntimeError(f"{mode} run failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        _child(argv[1], argv[2], argv[3], float(argv[4]))
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks vectorize", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2048 x 2048 instead of 10980 x 10980")
    p.add_argument("--size", type=int, help="raster side in pixels")
    p.add_argument("--simplify", type=float, default=0.0, help="also time geoseg with this simplification (m)")
    p.add_argument("--keep", type=Path, help="directory to keep the COG and GeoPackages in")
    args = p.parse_args(argv)
    size = args.size or (2048 if args.quick else 10980)
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-vec-") as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        cog = synthetic_classes(d / f"classes_{size}.tif", size)
        print(f"class raster {size} x {size}: generated in {time.perf_counter() - t0:.1f} s ({cog.stat().st_size / 2**20:.0f} MiB COG)", flush=True)
        rows = []
        for mode, simp in [("geoseg", 0.0), ("naive", 0.0)] + ([("geoseg", args.simplify)] if args.simplify else []):
            out = d / f"{mode}_{simp:g}.gpkg"
            out.unlink(missing_ok=True)
            res = _run(mode, cog, out, simp)
            res["label"] = mode + (f" --simplify {simp:g}" if simp else "")
            rows.append(res)
            print(f"  {res['label']:<22} {res['wall_s']:8.1f} s  {res['peak_rss_mib']:8.0f} MiB  {res['polygons']:>9} polygons", flush=True)
        g, n = rows[0], rows[1]
        print(f"{'':24}{'wall s':>10}{'CPU s':>10}{'peak RSS MiB':>14}{'polygons':>11}")
        for r in rows:
            print(f"{r['label']:<24}{r['wall_s']:10.1f}{r['cpu_s']:10.1f}{r['peak_rss_mib']:14.0f}{r['polygons']:11d}")
        print(f"{'geoseg / naive':<24}{g['wall_s'] / n['wall_s']:10.2f}{g['cpu_s'] / n['cpu_s']:10.2f}{g['peak_rss_mib'] / n['peak_rss_mib']:14.2f}"
              f"{'same' if g['polygons'] == n['polygons'] else 'DIFFER':>11}")
        print("(CPU s = user + system time of the process: the fairer time on a busy machine)")


if __name__ == "__main__":
    main(sys.argv[1:])
