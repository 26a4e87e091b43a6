"""The change stage of a workflow run (see :mod:`geoseg.runner`).

Post-classification: both dates segmented with the single-date model (reusing
the scene products), then the from→to raster, the transition table (CSV, and a
non-spatial table in the GeoPackage) and change polygons. Model-based: the
bi-temporal model on the (before, after) stack, giving a change probability
COG, a thresholded change COG and change polygons.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from geoseg.compare import Pair, change_probability, transition_codes, transition_colormap, transition_names, transition_table
from geoseg.fetch import load
from geoseg.io import RasterSpec, write_cogs
from geoseg.models import ClassInfo, read_card


def open_class_cog(path: Path) -> xr.DataArray:
    """A class COG as a lazy (y, x) uint8 DataArray with its grid."""
    import rioxarray as rxr

    da = rxr.open_rasterio(path, chunks={"x": 2048, "y": 2048}, lock=False).isel(band=0, drop=True)
    return da


def _class_files(record: dict) -> tuple[Path, Path]:
    files = [Path(p) for p in record["files"]]
    cls = next(p for p in files if p.name.endswith("_class.tif"))
    conf = next(p for p in files if p.name.endswith("_confidence.tif"))
    return cls, conf


def _product(runner, model: Path, pair: Pair):
    """(card, date label, product key, record if already done)."""
    card = read_card(model)
    label = f"{pair.dates[0]}_{pair.dates[1]}"
    key = f"change-{label}-{card.name}"
    done = None
    if runner._done(key):
        done = runner.report.products.setdefault(key, runner.previous.get(key))
    return card, label, key, done


def post_classification(runner, pair: Pair) -> dict:
    job = runner.job
    card, label, key, done = _product(runner, job.segment_model, pair)
    if done:
        return done
    before = runner.scene(list(pair.before), "+".join(it.id for it in pair.before))
    after = runner.scene(list(pair.after), "+".join(it.id for it in pair.after))
    (cb, fb), (ca, fa) = _class_files(before), _class_files(after)
    with runner.stage("change"), dask.config.set(scheduler="threads"):
        codes = transition_codes(open_class_cog(cb), open_class_cog(ca), card)
        gbox = codes.odc.geobox
        names = transition_names(card)
        tags = {"model": card.name, "before": pair.dates[0], "after": pair.dates[1],
                "stac_items_before": ",".join(it.id for it in pair.before), "stac_items_after": ",".join(it.id for it in pair.after)}
        band = {"class_names": json.dumps({str(k): v for k, v in names.items()}), **{f"CLASS_{k}": v for k, v in names.items()}}
        cog = runner.out / f"{job.name}_transitions_{label}.tif"
        write_cogs([RasterSpec(cog, codes, dtype="uint8", nodata=255, descriptions=["transition"], colormap=transition_colormap(card),
                               tags=tags, band_tags=[band], overview_resampling="mode")], gbox, overwrite=True)
        table = transition_table(codes, card)
        csv = runner.out / f"{job.name}_transitions_{label}.csv"
        table.to_csv(csv)
    files = [cog, csv]
    runner.report.change["post_classification"] = {
        "dates": list(pair.dates), "changed_ha": round(table.changed_ha, 4), "valid_ha": round(table.valid_ha, 4),
        "unknown_ha": round(table.unknown_ha, 4), "table": table.rows(),
    }
    runner.echo(f"  transitions {label}: {table.changed_ha:.2f} ha changed of {table.valid_ha:.2f} ha seen; "
                f"{table.unknown_ha:.2f} ha unknown (nodata/cloud on either date)")
    if job.products.geopackage:
        with runner.stage("vectorize"):
            from geoseg.change_vectors import transition_polygons

            files.append(transition_polygons(runner, cog, fb, fa, card, table, label, pair))
    runner._record(key, files)
    return runner.report.products[key]


def model_based(runner, pair: Pair) -> dict:
    job = runner.job
    card, label, key, done = _product(runner, job.change_model, pair)
    if done:
        return done
    runner.echo(f"  {key}")
    with runner.stage("load"):
        stack = load(list(pair.before) + list(pair.after), list(card.bands), **runner._grid_kwargs(card))
    with runner.stage("predict"):
        probs = runner._predict_cached(stack, job.change_model, key)
    prob = change_probability(probs, card)
    threshold = float(card.provenance.get("threshold", 0.5)) if isinstance(card.provenance, dict) else 0.5
    change_id = int(prob.coords["class"].item())
    classes = (ClassInfo(id=0, name="no change", color=(235, 235, 235)), ClassInfo(id=1, name="change", color=(230, 25, 75)))
    cls = xr.where(prob.isnull(), 255, (prob >= threshold).astype("uint8")).astype("uint8")
    tags = {"model": card.name, "model_version": card.version, "before": pair.dates[0], "after": pair.dates[1],
            "threshold": str(threshold), "change_class_id": str(change_id)}
    prob_cog = runner.out / f"{job.name}_change_probability_{label}.tif"
    cls_cog = runner.out / f"{job.name}_change_{label}.tif"
    with runner.stage("write"), dask.config.set(scheduler="threads"):
        write_cogs([
            RasterSpec(prob_cog, prob, dtype="float32", nodata=float("nan"), descriptions=["change probability"], tags=tags),
            RasterSpec(cls_cog, cls, dtype="uint8", nodata=255, descriptions=["change"], overview_resampling="mode", tags=tags,
                       colormap={0: (*classes[0].color, 255), 1: (*classes[1].color, 255), 255: (0, 0, 0, 0)},
                       band_tags=[{"class_names": json.dumps({"0": "no change", "1": "change"}), "CLASS_0": "no change", "CLASS_1": "change"}]),
        ], prob.odc.geobox, overwrite=True)
    files = [prob_cog, cls_cog]
    with dask.config.set(scheduler="threads"):
        counts = np.bincount(np.asarray(cls.values).ravel(), minlength=256)
    px = abs(prob.odc.geobox.resolution.x * prob.odc.geobox.resolution.y)
    runner.report.change["model_based"] = {"dates": list(pair.dates), "model": card.name, "threshold": threshold,
                                           "change_ha": round(counts[1] * px / 1e4, 4), "no_change_ha": round(counts[0] * px / 1e4, 4),
                                           "unknown_ha": round(counts[255] * px / 1e4, 4)}
    runner.echo(f"  model-based change {label}: {counts[1] * px / 1e4:.2f} ha of change (p >= {threshold:g})")
    if job.products.geopackage:
        with runner.stage("vectorize"):
            from geoseg.change_vectors import change_polygons

            files.append(change_polygons(runner, cls_cog, prob_cog, classes, label, pair, card))
    shutil.rmtree(runner.cache / key, ignore_errors=True)
    runner._record(key, files)
    return runner.report.products[key]


def run_change(runner, pair: Pair) -> None:
    runner.echo(f"change: {pair.describe()}")
    if runner.job.segment_model is not None:
        post_classification(runner, pair)
    if runner.job.change_model is not None:
        model_based(runner, pair)
