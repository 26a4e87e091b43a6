"""Executing a workflow: search, segment every scene, compare dates, record.

:func:`run` takes a resolved :class:`~geoseg.workflow.Job` and runs it on a
Dask cluster (:mod:`geoseg.cluster`):

1. search the catalog (served on loopback for ``catalog.serve``);
2. for each scene: the lazy stack is predicted tile row by tile row on the
   cluster; finished row blocks land in ``OUT/.cache/`` (:mod:`geoseg.blocks`),
   then the class/confidence COGs, the quick-look and the GeoPackage layer
   are written atomically in the client;
3. for the change windows: the best before/after scenes, post-classification
   transitions (raster, area table, polygons) and model-based change;
4. a run manifest (``OUT/run.json``): the workflow as resolved, items and
   asset hrefs, model card hashes, package versions, per-stage timings and how
   many tiles were computed or reused.

A product whose outputs exist (recorded in the manifest) is skipped; an
interrupted product resumes from its cached blocks. One run per output
directory at a time (:mod:`geoseg.lock`).
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dask
import xarray as xr

from geoseg.blocks import cached_array, materialize
from geoseg.catalog import make_query, search
from geoseg.fetch import load
from geoseg.io import atomic_path
from geoseg.lock import RunLock
from geoseg.models import read_card, sha256_file
from geoseg.tiling import TileLayout
from geoseg.workflow import Job

MANIFEST = "run.json"


@dataclass
class Report:
    """What a run did (also written as the manifest)."""

    job: dict
    items: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    products: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=lambda: {"tiles_total": 0, "tiles_computed": 0, "blocks_computed": 0, "blocks_reused": 0})
    versions: dict = field(default_factory=dict)
    change: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("job", "items", "models", "products", "change", "counts", "timings", "versions")}


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("geoseg", "numpy", "dask", "distributed", "xarray", "rasterio", "odc-stac", "odc-geo", "pystac-client", "torch", "segmentation-models-pytorch", "shapely"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _tiles_to_compute(layout: TileLayout, cache: Path) -> int:
    """Tiles that the output blocks missing from ``cache`` need (blocks are row x column-group, as
    :func:`geoseg.inference.predict` lays them out; cache files are named by block index)."""
    from geoseg.inference import _group_size

    g = _group_size(layout)
    rows, cols = layout.output_rows(), layout.output_cols(g)
    need = set()
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if not (cache / f"b0_{i}_{j}.npy").exists():
                need.update((k, l) for k in layout.y.contributors(*r) for l in layout.x.contributors(*c))
    return len(need)


class _Stage:
    def __init__(self, report: Report, name: str, echo):
        self.report, self.name, self.echo = report, name, echo

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.report.timings[self.name] = round(self.report.timings.get(self.name, 0) + dt, 3)


def _progress(echo, label: str):
    last = [-1.0]

    def on_block(done: int, total: int) -> None:
        pct = 100 * done / max(total, 1)
        if done == total or pct - last[0] >= 25:
            echo(f"    {label}: {done}/{total} row blocks")
            last[0] = pct
    return on_block


class Runner:
    """One run of one job (use :func:`run`)."""

    def __init__(self, job: Job, *, echo: Callable[[str], None] = print):
        self.job = job
        self.echo = echo
        self.out = job.output
        self.cache = self.out / ".cache"
        self.report = Report(job=job.as_dict(), versions=_versions())
        self.previous = self._previous()
        self._sweep()

    def _sweep(self) -> None:
        """Remove temporary files a killed run left (outputs are renamed into place only when complete)."""
        if self.out.is_dir():
            for p in self.out.glob(".*.tmp*"):
                p.unlink(missing_ok=True)

    # ---------------------------------------------------------- bookkeeping
    def _previous(self) -> dict:
        path = self.out / MANIFEST
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text()).get("products", {})
        return {}

    def _done(self, key: str) -> bool:
        rec = self.report.products.get(key) or self.previous.get(key)
        return bool(rec) and all(Path(p).exists() for p in rec.get("files", []))

    def _record(self, key: str, files: list[Path], **extra) -> None:
        self.report.products[key] = {"files": [str(p) for p in files], **extra}
        self.write_manifest()

    def write_manifest(self) -> Path:
        path = self.out / MANIFEST
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.report.as_dict(), indent=2, default=str) + "\n")
        return path

    def stage(self, name: str) -> _Stage:
        return _Stage(self.report, name, self.echo)

    # ---------------------------------------------------------- predicting
    def _predict_cached(self, stack, model_path: Path, key: str):
        """Probabilities of ``stack`` through the cluster, via the block cache."""
        from geoseg.inference import predict

        t = self.job.tiling
        probs = predict(stack, model_path, device=self.job.device, batch_size=t.batch_size, tile_size=t.tile_size, halo=t.halo)
        card = read_card(model_path)
        layout = TileLayout(probs.sizes["y"], probs.sizes["x"], t.tile_size or card.tile_size, t.halo if t.halo is not None else card.halo)
        cache = self.cache / key
        tiles = _tiles_to_compute(layout, cache)
        m = materialize(probs.data, cache, on_block=_progress(self.echo, key))
        c = self.report.counts
        c["tiles_total"] += layout.n_tiles
        c["tiles_computed"] += tiles
        c["blocks_computed"] += m.computed
        c["blocks_reused"] += m.reused
        return xr.DataArray(cached_array(cache), dims=probs.dims, coords=probs.coords, attrs=probs.attrs, name=probs.name)

    def _grid_kwargs(self, card) -> dict:
        return {"region": self.job.region, "crs": self.job.crs, "resolution": self.job.resolution or card.resolution}

    # ---------------------------------------------------------- products
    def scene(self, items, source_label: str) -> dict:
        """Segment one scene (a list of items of one day, mosaicked)."""
        from geoseg.outputs import write_prediction
        from geoseg.quicklook import write_quicklook

        job, model = self.job, self.job.segment_model
        card = read_card(model)
        key = "scene-" + "+".join(it.id for it in items) + f"-{card.name}"
        if self._done(key):
            if key not in self.report.products:
                self.echo(f"  {key}: done in an earlier run, skipped")
                self.report.products[key] = self.previous[key]
            return self.report.products[key]
        self.echo(f"  {key}")
        files: list[Path] = []
        with self.stage("load"):
            stack = load(items, list(card.bands), **self._grid_kwargs(card)).isel(time=0)
        if job.products.quicklook and {"red", "green", "blue"} <= set(card.bands):
            with self.stage("quicklook"), dask.config.set(scheduler="threads"):
                cog, png = write_quicklook(stack, self.out / f"{source_label}_rgb.tif", self.out / f"{source_label}_rgb.png", overwrite=True)
            files += [cog, png]
        with self.stage("predict"):
            probs = self._predict_cached(stack, model, key)
        with self.stage("write"), dask.config.set(scheduler="threads"):
            paths = write_prediction(probs, card, self.out, f"{source_label}_{card.name}", probabilities=job.products.probabilities,
                                     provenance=self._provenance(items, model), overwrite=True)
        files += list(paths.values())
        if job.products.geopackage:
            with self.stage("vectorize"):
                files.append(self._vectorize(paths["class"], paths["confidence"], card, layer=card.name, items=items))
        shutil.rmtree(self.cache / key, ignore_errors=True)
        self._record(key, files, items=[it.id for it in items], model=card.name)
        return self.report.products[key]

    def _provenance(self, items, model: Path) -> dict:
        return {
            "stac_items": ",".join(it.id for it in items),
            "datetimes": ",".join(f"{it.datetime:%Y-%m-%dT%H:%M:%SZ}" for it in items if it.datetime),
            "model_card": model.name, "workflow": self.job.name,
        }

    def _vectorize(self, class_cog: Path, confidence_cog: Path | None, card, *, layer: str, items) -> Path:
        """Add (or replace) this scene's layer in the run's GeoPackage."""
        from geoseg.vectorize import vectorize

        gpkg = self.out / f"{self.job.name}.gpkg"
        vectorize(class_cog, gpkg, confidence=confidence_cog, card=card, layer=f"{layer}_{items[0].datetime:%Y%m%d}",
                  min_area=self.job.products.min_area_m2, simplify=self.job.products.simplify_m,
                  provenance=self._provenance(items, self.job.segment_model), append=True, overwrite=True)
        return gpkg

    # ---------------------------------------------------------- the run
    def run(self, catalog_url: str) -> Report:
        job = self.job
        with self.stage("search"):
            scenes = []
            if job.window:
                items = search(catalog_url, make_query(collections=job.collections, region=job.region, datetime=job.window,
                                                       max_cloud_cover=job.max_cloud_cover))
                by_day: dict = {}
                for it in items:
                    by_day.setdefault(it.datetime.date(), []).append(it)
                scenes = list(by_day.values())
            pair = None
            if job.before:
                from geoseg.compare import pair_scenes

                pair = pair_scenes(catalog_url, job.region, job.before, job.after, collections=job.collections,
                                   max_cloud_cover=job.max_cloud_cover)
        for group in scenes + ([list(pair.before), list(pair.after)] if pair else []):
            for it in group:
                self.report.items[it.id] = {"datetime": str(it.datetime), "assets": {k: a.href for k, a in it.assets.items()}}
        for p in (job.segment_model, job.change_model):
            if p is not None:
                self.report.models[p.name] = {"path": str(p), "sha256": sha256_file(p), "weights_sha256": read_card(p).weights_sha256}
        self.echo(f"{len(scenes)} scene(s) to segment" + (f"; change {pair.describe()}" if pair else ""))
        if job.segment_model is not None:
            for group in scenes:
                self.scene(group, "+".join(it.id for it in group))
        if pair is not None and job.products.change:
            from geoseg.change_run import run_change

            run_change(self, pair)
        self.write_manifest()
        return self.report


def run(job: Job, *, scheduler: str | None = None, echo: Callable[[str], None] = print) -> Report:
    """Run ``job`` (see the module docstring); returns the report also written to ``OUT/run.json``."""
    from geoseg.cluster import connect
    from geoseg.serve import LoopbackServers

    with RunLock(job.output, echo=echo):
        runner = Runner(job, echo=echo)
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            url = job.catalog_url
            if job.serve is not None:
                srv = stack.enter_context(LoopbackServers(job.serve))
                url = srv.stac_url
                echo(f"catalog: {job.serve} served at {url} (COGs at {srv.files_url})")
            d = job.dask
            stack.enter_context(connect(address=scheduler or d.scheduler, workers=d.workers, threads_per_worker=d.threads_per_worker,
                                        memory_limit=d.memory_limit, gpus_per_worker=d.gpus_per_worker, echo=echo))
            report = runner.run(url)
        report.timings["total"] = round(time.perf_counter() - t0, 3)
        runner.write_manifest()
        shutil.rmtree(runner.cache, ignore_errors=True)
        c = report.counts
        echo(f"done: {len(report.products)} product(s); tiles computed {c['tiles_computed']} of {c['tiles_total']} "
             f"({c['blocks_reused']} row blocks reused from an interrupted run); manifest {job.output / MANIFEST}")
        return report

