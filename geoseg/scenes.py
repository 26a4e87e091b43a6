"""Labelled scenes: imagery of one or two dates on one grid, and its labels.

The records here are what a validated config (:mod:`geoseg.train_config`)
builds; :func:`open_scene` turns one into a lazy stack on its grid (the same
``(band, y, x)`` / ``(time, band, y, x)`` layout the predictor takes) and
:func:`scene_labels` reads its labels onto that grid as class indices.
Training and evaluation both load scenes through here, so they see the same
pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from geoseg.errors import InputError
from geoseg.labels import UNLABELLED, IndexRule, LabelError, LabelMap, check_labels, vector_labels
from geoseg.rasters import band_files, footprint, label_footprint, read_label_raster, read_stack
from geoseg.grid import target_geobox


@dataclass(frozen=True)
class RasterSource:
    """Imagery of one date in raster files (see :func:`geoseg.rasters.band_files`)."""

    path: Path
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None


@dataclass(frozen=True)
class StacSource:
    """Imagery of one date as a STAC item (path or URL of its JSON)."""

    item: str


Source = Union[RasterSource, StacSource]


@dataclass(frozen=True)
class RasterLabels:
    path: Path
    reference: Path | None = None
    band: int = 1
    nodata: float | None = None


@dataclass(frozen=True)
class VectorLabels:
    path: Path
    attribute: str
    layer: str | None = None
    background: Any = None


@dataclass(frozen=True)
class RuleLabels:
    rule: IndexRule


Labels = Union[RasterLabels, VectorLabels, RuleLabels]


@dataclass(frozen=True)
class Scene:
    """One sample: a place, its imagery per date, its labels."""

    id: str
    group: str
    """Split unit: a group is wholly in training or wholly in validation."""
    dates: tuple[Source, ...]
    labels: Labels | None = None


@dataclass(frozen=True)
class OpenScene:
    """A scene's lazy stack on its grid, and the files it reads."""

    scene: Scene
    stack: xr.DataArray
    """``(band, y, x)`` for one date, ``(time, band, y, x)`` for two; float32 reflectance, NaN invalid."""
    geobox: GeoBox
    files: tuple[str, ...]
    """Every input file (or URL) of the imagery."""


def _stac_item(ref: str):
    import pystac

    try:
        return pystac.Item.from_file(ref)
    except Exception as err:
        raise InputError(f"STAC item {ref!r} cannot be read: {err}", fix="give the path or URL of a STAC item JSON") from None


def scene_footprint(scene: Scene, bands: Sequence[str]) -> Geometry:
    """Where every date of the scene has every band."""
    out = None
    for src in scene.dates:
        if isinstance(src, StacSource):
            from geoseg.fetch import footprint as items_footprint

            g = items_footprint([_stac_item(src.item)])
        else:
            g = footprint(band_files(src.path, bands, scale=src.scale, offset=src.offset, nodata=src.nodata))
        out = g if out is None else out.intersection(g.to_crs(out.crs))
    if out is None or out.is_empty:
        raise InputError(f"the dates of scene {scene.id!r} do not overlap", fix="give imagery of one place for every date")
    return out


def scene_geobox(scene: Scene, bands: Sequence[str], *, resolution: float = 10.0, crs=None) -> GeoBox:
    """The scene's grid: ``resolution`` m in its UTM zone (or ``crs``), edges at multiples of the resolution."""
    return target_geobox(scene_footprint(scene, bands), crs=crs, resolution=resolution)


def _open_date(src: Source, bands: Sequence[str], geobox: GeoBox, chunks: int) -> tuple[xr.DataArray, list[str]]:
    if isinstance(src, StacSource):
        from geoseg.bands import resolve_bands
        from geoseg.fetch import load

        item = _stac_item(src.item)
        arr = load(item, list(bands), geobox=geobox, resampling="bilinear", chunks=chunks)
        arr = arr.drop_vars([c for c in arr.coords if c not in ("band", "y", "x", "spatial_ref")])
        return arr, [b.href for b in resolve_bands(item, list(bands))]
    files = band_files(src.path, bands, scale=src.scale, offset=src.offset, nodata=src.nodata)
    return read_stack(files, geobox, chunks=chunks), [f.path for f in files]


def open_scene(
    scene: Scene, bands: Sequence[str], *, resolution: float = 10.0, crs=None, geobox: GeoBox | None = None, chunks: int = 1024,
) -> OpenScene:
    """The scene's imagery (``bands`` by common name) as a lazy stack on its grid."""
    if geobox is None:
        geobox = scene_geobox(scene, bands, resolution=resolution, crs=crs)
    layers, files = [], []
    for src in scene.dates:
        arr, f = _open_date(src, bands, geobox, chunks)
        layers.append(arr)
        files += f
    if len(layers) == 1:
        stack = layers[0]
    else:
        stack = xr.concat(layers, dim="time", coords="minimal", compat="override", join="override")
        stack = stack.assign_coords(time=np.arange(len(layers))).transpose("time", "band", "y", "x")
    stack.attrs = {"nodata": np.nan, "scene": scene.id}
    stack.name = "reflectance"
    return OpenScene(scene=scene, stack=stack, geobox=geobox, files=tuple(dict.fromkeys(files)))


def label_files(scene: Scene) -> tuple[str, ...]:
    """The files the scene's labels come from (none for rule labels)."""
    lab = scene.labels
    if isinstance(lab, RasterLabels):
        return (str(lab.path),) + ((str(lab.reference),) if lab.reference else ())
    if isinstance(lab, VectorLabels):
        return (str(lab.path),)
    return ()


def scene_labels(opened: OpenScene, labelmap: LabelMap, *, valid: np.ndarray | None = None) -> np.ndarray:
    """The scene's labels on its grid as uint8 class indices (255 = no label).

    Raises :class:`~geoseg.labels.LabelError` for label values the map does
    not know and for labels that do not overlap the scene (or its ``valid``
    pixels, when given).
    """
    scene, gb = opened.scene, opened.geobox
    lab = scene.labels
    if lab is None:
        raise LabelError(f"scene {scene.id!r} has no labels", fix="give the scene a `labels:` entry")
    if isinstance(lab, RasterLabels):
        fp = label_footprint(lab.path, reference=lab.reference)
        if not fp.to_crs(gb.crs).intersects(gb.extent):
            raise LabelError(f"labels {str(lab.path)!r} do not overlap the imagery of scene {scene.id!r}",
                             fix="check that the labels belong to this scene (and, for labels without georeferencing, the reference raster)")
        raw = read_label_raster(lab.path, gb, reference=lab.reference, band=lab.band, nodata=lab.nodata).values
        out = labelmap.to_classes(raw, source=f"labels {str(lab.path)!r}")
    elif isinstance(lab, VectorLabels):
        out = vector_labels(lab.path, gb, labelmap, attribute=lab.attribute, layer=lab.layer, background=lab.background)
    else:
        arr = opened.stack if "time" not in opened.stack.dims else opened.stack.isel(time=0)
        have = set(arr.band.values.tolist())
        if set(lab.rule.bands) <= have:
            bands = {b: arr.sel(band=b).values for b in lab.rule.bands}
        else:
            extra = open_scene(scene, lab.rule.bands, geobox=gb).stack
            bands = {b: extra.sel(band=b).values for b in lab.rule.bands}
        raw = lab.rule.apply(bands).astype("int32")
        out = labelmap.to_classes(raw, source=f"rule labels of scene {scene.id!r}")
    if valid is not None:
        check_labels(out, valid, labelmap, source=f"scene {scene.id!r}")
        out = np.where(valid, out, UNLABELLED).astype("uint8")
    return out
