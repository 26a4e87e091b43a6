"""Prediction products as Cloud Optimized GeoTIFFs.

* ``<prefix>_class.tif``: uint8 class ids, the card's colours as an embedded
  colour table, class names in the band metadata (``class_names`` JSON and one
  ``CLASS_<id>`` item per class), nodata = the card's nodata class,
  mode-resampled overviews (classes are never averaged).
* ``<prefix>_confidence.tif``: float32 top-class probability, NaN nodata.
* ``<prefix>_probabilities.tif`` (optional): one float32 band per class.

All are computed from one pass of the model and written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import odc.geo.xr  # noqa: F401  (registers the .odc accessor used on stacks)
import xarray as xr

from geoseg.io import RasterSpec, write_cogs
from geoseg.models import ModelCard
from geoseg.inference import classify


def class_colormap(card: ModelCard) -> dict[int, tuple[int, int, int, int]]:
    """Colour table: each class its RGB colour; the nodata class transparent."""
    cmap = {c.id: (*c.color, 255) for c in card.classes}
    cmap[card.nodata_class] = (0, 0, 0, 0)
    return cmap


def class_metadata(card: ModelCard, provenance: Mapping[str, str] | None = None) -> tuple[dict, dict]:
    """(dataset tags, class band tags) describing the classes and the model."""
    names = {str(c.id): c.name for c in card.classes}
    band = {"class_names": json.dumps(names), **{f"CLASS_{c.id}": c.name for c in card.classes}}
    tags = {"model": card.name, "model_version": card.version, "nodata_class": str(card.nodata_class), **(provenance or {})}
    return tags, band


def write_prediction(
    probs: xr.DataArray,
    card: ModelCard,
    out_dir: str | Path,
    prefix: str,
    *,
    probabilities: bool = False,
    provenance: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the class and confidence COGs (and optionally per-class
    probabilities) of ``probs`` from :func:`geoseg.predict`; returns their paths."""
    out_dir = Path(out_dir)
    cls, conf = classify(probs, card)
    tags, band_tags = class_metadata(card, provenance)
    specs = [
        RasterSpec(out_dir / f"{prefix}_class.tif", cls, dtype="uint8", nodata=card.nodata_class, descriptions=["class"],
                   colormap=class_colormap(card), tags=tags, band_tags=[band_tags], overview_resampling="mode"),
        RasterSpec(out_dir / f"{prefix}_confidence.tif", conf, dtype="float32", nodata=float("nan"),
                   descriptions=["confidence"], tags={**tags, "meaning": "probability of the predicted class"}),
    ]
    if probabilities:
        specs.append(RasterSpec(out_dir / f"{prefix}_probabilities.tif", probs, dtype="float32", nodata=float("nan"),
                                descriptions=[c.name for c in card.classes], tags=tags))
    paths = write_cogs(specs, probs.odc.geobox, overwrite=overwrite)
    return dict(zip(["class", "confidence", "probabilities"], paths))
