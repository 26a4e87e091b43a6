"""Change polygons and area tables in the run's GeoPackage, styled for QGIS.

* ``<model>_transitions_<dates>``: one polygon per connected changed region
  with ``from_class``, ``to_class``, ``area_m2`` and the mean confidence of
  each date (``confidence_before``, ``confidence_after``); pixels that did
  not change, and unknown pixels, are not polygons.
* ``<model>_transition_areas_<dates>``: the transition matrix as a
  non-spatial table (hectares per from→to pair, and the unknown area).
* ``<model>_change_<dates>``: model-based change polygons with ``area_m2``
  and the mean change probability.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geoseg.compare import UNKNOWN, Pair, TransitionTable, transition_card
from geoseg.change_run import open_class_cog
from geoseg.models import ModelCard


def _gpkg(runner) -> Path:
    return runner.out / f"{runner.job.name}.gpkg"


def transition_frame(codes, card: ModelCard, conf_before, conf_after, *, min_area: float = 0.0, simplify: float = 0.0,
                     provenance: dict | None = None):
    """Polygons of the changed regions of a from→to raster (a lazy DataArray),
    with from_class, to_class and each date's mean confidence."""
    from geoseg.vectorize import vectorize

    K = len(card.classes)
    same = np.isin(codes, [i * K + i for i in range(K)])
    changed = codes.where(~same, UNKNOWN).astype("uint8")  # no-change pixels are not polygons (.where keeps the grid)
    kw = dict(card=transition_card(card, changes_only=True), min_area=min_area, simplify=simplify, provenance=provenance)
    before = vectorize(changed, None, confidence=conf_before, **kw)
    after = vectorize(changed, None, confidence=conf_after, **kw)
    gdf = before.rename(columns={"mean_confidence": "confidence_before"})
    gdf["confidence_after"] = after["mean_confidence"].to_numpy()
    gdf["from_class"] = [card.classes[c // K].name for c in gdf["class_id"]]
    gdf["to_class"] = [card.classes[c % K].name for c in gdf["class_id"]]
    return gdf


def transition_polygons(runner, transitions_cog: Path, conf_before: Path, conf_after: Path, card: ModelCard,
                        table: TransitionTable, label: str, pair: Pair) -> Path:
    from geoseg.gpkg import LayerStyle, categories, write_layer

    p = runner.job.products
    prov = {"before": pair.dates[0], "after": pair.dates[1], "stac_items": ",".join(it.id for it in pair.before + pair.after),
            "model": card.name, "model_version": card.version}
    gdf = transition_frame(open_class_cog(transitions_cog), card, conf_before, conf_after,
                           min_area=p.min_area_m2, simplify=p.simplify_m, provenance=prov)
    gpkg = _gpkg(runner)
    write_layer([gdf], gpkg, f"{card.name}_transitions_{label}", metadata=prov,
                description=f"{card.name}: class transitions {pair.dates[0]} -> {pair.dates[1]}",
                style=LayerStyle("class_id", categories(transition_card(card, changes_only=True).classes)), append=True, overwrite=True)
    _write_table(gpkg, f"{card.name}_transition_areas_{label}", table)
    return gpkg


def _write_table(gpkg: Path, name: str, table: TransitionTable) -> None:
    """A non-spatial table in the GeoPackage (GDAL writes it as an attribute table)."""
    import pyogrio

    from geoseg.io import atomic_path

    rows = table.rows() + [{"from_class": "unknown (either date)", "to_class": "", "changed": -1, "area_ha": round(table.unknown_ha, 4)}]
    df = pd.DataFrame(rows)
    with atomic_path(gpkg, overwrite=True) as tmp:
        import shutil

        shutil.copyfile(gpkg, tmp)
        pyogrio.write_dataframe(df, tmp, layer=name, driver="GPKG", layer_options={"OVERWRITE": "YES"})


def change_polygons(runner, change_cog: Path, probability_cog: Path, classes, label: str, pair: Pair, card: ModelCard) -> Path:
    from geoseg.vectorize import vectorize

    cls = open_class_cog(change_cog)
    only_change = cls.where(cls == 1, UNKNOWN).astype("uint8")
    ccard = card.model_copy(update={"classes": (classes[1],), "nodata_class": UNKNOWN})
    p = runner.job.products
    prov = {"before": pair.dates[0], "after": pair.dates[1], "stac_items": ",".join(it.id for it in pair.before + pair.after),
            "model": card.name, "model_version": card.version}
    gpkg = _gpkg(runner)
    gdf = vectorize(only_change, None, confidence=probability_cog, card=ccard, min_area=p.min_area_m2, simplify=p.simplify_m, provenance=prov)
    gdf = gdf.rename(columns={"mean_confidence": "mean_probability"})
    from geoseg.gpkg import LayerStyle, categories, write_layer

    write_layer([gdf], gpkg, f"{card.name}_{label}", metadata=prov, description=f"{card.name}: change {pair.dates[0]} -> {pair.dates[1]}",
                style=LayerStyle("class_id", categories(ccard.classes)), append=True, overwrite=True)
    return gpkg
