"""Label values to classes, vector labels, and rule-derived (weak) labels.

Inside geoseg a label array holds the class *index* (position of the class in
the model's output channels, 0..n-1) and :data:`UNLABELLED` (255) where there is
no usable label. :class:`LabelMap` turns the values of a label file (OSCD's
1/2, Sen1Floods11's -1/0/1, or class names in a GeoPackage attribute) into those
indices, and refuses values it was not told about.

:class:`IndexRule` derives labels from the imagery itself with a spectral index
threshold (e.g. water where MNDWI > 0): the labels of a weakly supervised model,
and also the plain baseline such a model must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from odc.geo.geobox import GeoBox

from geoseg.errors import InputError
from geoseg.rasters import OUTSIDE, burn_shapes

#: Class-index value of pixels without a usable label.
UNLABELLED = 255


class LabelError(InputError):
    """Labels that do not fit the configuration (unknown values, no overlap, empty class)."""


@dataclass(frozen=True)
class LabelMap:
    """Which label values (numbers, or names in a vector attribute) mean which class."""

    class_names: tuple[str, ...]
    """Class names in output-channel order; a class's index is its position."""
    values: tuple[tuple[int, int], ...]
    """(label value, class index) pairs."""
    ignore: frozenset[int] = frozenset()
    """Label values that mean 'no label' (nodata, unlabelled)."""

    def describe(self) -> str:
        per = {i: [] for i in range(len(self.class_names))}
        for v, i in self.values:
            per[i].append(v)
        text = "; ".join(f"{n}={per[i]}" for i, n in enumerate(self.class_names))
        return text + (f"; ignored={sorted(self.ignore)}" if self.ignore else "")

    def lookup(self, value: Any) -> int | None:
        """Class index of one label value (a number or a class name); None if ignored.

        Raises :class:`LabelError` for a value the map does not know.
        """
        if isinstance(value, str):
            if value in self.class_names:
                return self.class_names.index(value)
            try:
                value = int(value)
            except ValueError:
                raise LabelError(f"label {value!r} is not a class of the config ({self.describe()})",
                                 fix="add it to a class's `values`, rename it to a class name, or add it to `ignore_values`") from None
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if float(value) != int(value):
            raise LabelError(f"label value {value!r} is not an integer", fix="class values must be integers or class names")
        value = int(value)
        if value in self.ignore:
            return None
        for v, i in self.values:
            if v == value:
                return i
        raise LabelError(f"label value {value} is not in the config's classes ({self.describe()})",
                         fix=f"add {value} to a class's `values`, or to `ignore_values` if it means 'no label'")

    def to_classes(self, raw: np.ndarray, *, source: str = "labels") -> np.ndarray:
        """uint8 class indices of an array of label values (:data:`~geoseg.rasters.OUTSIDE` -> unlabelled)."""
        raw = np.asarray(raw)
        out = np.full(raw.shape, UNLABELLED, dtype="uint8")
        known = np.zeros(raw.shape, dtype=bool)
        known |= raw == OUTSIDE
        for v in self.ignore:
            known |= raw == v
        for v, i in self.values:
            hit = raw == v
            out[hit] = i
            known |= hit
        if not known.all():
            vals, counts = np.unique(raw[~known], return_counts=True)
            listed = ", ".join(f"{v} ({c} px)" for v, c in list(zip(vals.tolist(), counts.tolist()))[:10])
            raise LabelError(
                f"{source} holds values that are not in the config's classes: {listed} (config: {self.describe()})",
                fix="add each value to a class's `values`, or to `ignore_values` if it means 'no label'",
            )
        return out


# ------------------------------------------------------------------ vector labels

def vector_labels(
    path: str | Path, geobox: GeoBox, labelmap: LabelMap, *, attribute: str, layer: str | None = None,
    background: Any = None,
) -> np.ndarray:
    """Rasterize the polygons of a GeoPackage / GeoJSON onto ``geobox`` as class indices.

    ``attribute`` holds each polygon's class (a label value or a class name).
    Pixels no polygon covers are unlabelled, or the class of ``background``.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise LabelError(f"vector labels {str(path)!r} do not exist", fix="check the path")
    try:
        gdf = gpd.read_file(path, layer=layer) if layer else gpd.read_file(path)
    except Exception as err:  # pyogrio raises several types
        raise LabelError(f"vector labels {str(path)!r} cannot be read: {err}", fix="give a GeoPackage or GeoJSON file (and `layer:` for a multi-layer GeoPackage)") from None
    if attribute not in gdf.columns:
        raise LabelError(f"vector labels {str(path)!r} have no attribute {attribute!r}",
                         fix="set `attribute:` to one of: " + ", ".join(c for c in gdf.columns if c != gdf.geometry.name))
    if gdf.crs is None:
        raise LabelError(f"vector labels {str(path)!r} have no CRS", fix="write the file with its CRS (GeoJSON is EPSG:4326)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    gdf = gdf.to_crs(geobox.crs.to_wkt())
    fill = UNLABELLED if background is None else labelmap.lookup(background)
    fill = UNLABELLED if fill is None else fill
    shapes = []
    for geom, value in zip(gdf.geometry, gdf[attribute]):
        idx = labelmap.lookup(value)
        if idx is not None:
            shapes.append((geom, idx))
    from shapely.geometry import box

    extent = box(*geobox.extent.boundingbox)
    if not any(g.intersects(extent) for g, _ in shapes):
        raise LabelError(f"no labelled polygon of {str(path)!r} overlaps the imagery", fix="check that the labels belong to this scene (and their CRS)")
    return burn_shapes(shapes, geobox, fill=fill, dtype="uint8")


# ------------------------------------------------------------------ index rules

#: Normalized-difference indices: name -> (positive band, negative band).
INDICES = {
    "mndwi": ("green", "swir16"),  # Xu 2006: open water
    "ndwi": ("green", "nir"),  # McFeeters 1996: open water
    "ndvi": ("nir", "red"),
}


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), NaN where undefined."""
    a = np.asarray(a, dtype="float32")
    b = np.asarray(b, dtype="float32")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / (a + b)
    out[~np.isfinite(out)] = np.nan
    return out


@dataclass(frozen=True)
class IndexRule:
    """Binary labels from a spectral index threshold.

    Positive (label value 1) where ``index > threshold + margin`` and every
    ``below`` condition holds; negative (0) where ``index < threshold - margin``;
    -1 (no label) in between, where a band is NaN, or where a ``below``
    condition fails for a would-be positive. Positive regions smaller than
    ``min_region`` pixels (8-connected) become -1 too.

    ``margin=0``, no conditions and ``min_region=0`` is the plain index rule.
    """

    index: str = "mndwi"
    threshold: float = 0.0
    margin: float = 0.0
    below: tuple[tuple[str, float], ...] = ()
    """(band, value): positives need reflectance of ``band`` < value (e.g. nir < 0.15 keeps snow and cloud out)."""
    min_region: int = 0

    @property
    def bands(self) -> tuple[str, ...]:
        out = list(INDICES[self.index])
        out += [b for b, _ in self.below if b not in out]
        return tuple(out)

    def describe(self) -> str:
        a, b = INDICES[self.index]
        text = f"{self.index.upper()} = ({a} - {b}) / ({a} + {b}); positive where {self.index.upper()} > {self.threshold + self.margin:g}"
        text += "".join(f" and {band} < {v:g}" for band, v in self.below)
        text += f"; negative where {self.index.upper()} < {self.threshold - self.margin:g}"
        if self.margin or self.below:
            text += "; no label otherwise"
        if self.min_region:
            text += f"; positive regions under {self.min_region} px (8-connected) get no label"
        return text

    def apply(self, bands: Mapping[str, np.ndarray]) -> np.ndarray:
        """int16 labels (1 positive, 0 negative, -1 none) from reflectance arrays by common name."""
        missing = [b for b in self.bands if b not in bands]
        if missing:
            raise InputError(f"rule {self.index} needs band(s) {', '.join(missing)}", fix="load those bands too")
        a, b = INDICES[self.index]
        idx = normalized_difference(bands[a], bands[b])
        pos = idx > self.threshold + self.margin
        neg = idx < self.threshold - self.margin
        for band, v in self.below:
            pos &= np.asarray(bands[band]) < v
        out = np.full(idx.shape, -1, dtype="int16")
        out[neg] = 0
        out[pos] = 1
        if self.min_region > 0 and pos.any():
            import rasterio.features

            mask = pos.astype("uint8")
            sieved = rasterio.features.sieve(mask, size=self.min_region, connectivity=8)
            out[(mask == 1) & (sieved == 0)] = -1
        return out


@dataclass(frozen=True)
class LabelStats:
    """Pixel counts per class index of one label array."""

    counts: tuple[int, ...]
    unlabelled: int

    @classmethod
    def of(cls, labels: np.ndarray, n_classes: int) -> "LabelStats":
        c = np.bincount(labels.ravel(), minlength=256)
        return cls(tuple(int(x) for x in c[:n_classes]), int(c[UNLABELLED]))

    @property
    def labelled(self) -> int:
        return sum(self.counts)


def check_labels(labels: np.ndarray, valid: np.ndarray, labelmap: LabelMap, *, source: str) -> LabelStats:
    """Refuse labels that do not overlap the valid imagery; return their class counts there."""
    labels = np.where(valid, labels, UNLABELLED).astype("uint8")
    stats = LabelStats.of(labels, len(labelmap.class_names))
    if stats.labelled == 0:
        raise LabelError(f"{source}: no labelled pixel lies on valid imagery (the labels do not overlap the scene)",
                         fix="check that labels and imagery are of the same place (and the label's reference raster)")
    return stats


__all__ = [
    "UNLABELLED", "LabelError", "LabelMap", "vector_labels", "IndexRule", "INDICES", "normalized_difference",
    "LabelStats", "check_labels",
]
