"""Regions of interest: a bbox, a GeoJSON geometry or file, or a GeoPackage layer.

Everything becomes one :class:`odc.geo.geom.Geometry` in EPSG:4326 (the CRS of
STAC searches), so later stages never care how the user spelled the region.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, Union

from odc.geo.geom import Geometry, box

from geoseg.errors import RegionError

RegionLike = Union[Geometry, Sequence[float], str, Path, dict]


def parse_bbox(text: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"minx,miny,maxx,maxy"`` (or a 4-sequence) in degrees, checked."""
    if isinstance(text, str):
        parts = [p for p in text.replace(" ", ",").split(",") if p]
    else:
        parts = list(text)
    try:
        minx, miny, maxx, maxy = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise RegionError(
            f"bbox {text!r} is not four numbers",
            fix="give it as minx,miny,maxx,maxy in degrees, e.g. 2.30,48.84,2.40,48.88",
        ) from None
    if not (-180 <= minx < maxx <= 180 and -90 <= miny < maxy <= 90):
        raise RegionError(
            f"bbox {text!r} is not a valid lon/lat box (need -180<=minx<maxx<=180, -90<=miny<maxy<=90)",
            fix="give it as minx,miny,maxx,maxy in degrees (EPSG:4326), west before east, south before north",
        )
    return minx, miny, maxx, maxy


def _from_geojson(obj: dict[str, Any], source: str) -> Geometry:
    kind = obj.get("type")
    if kind == "FeatureCollection":
        geoms = [_from_geojson(f, source) for f in obj.get("features", [])]
        if not geoms:
            raise RegionError(f"{source} holds no features", fix="give a file with at least one polygon")
        out = geoms[0]
        for g in geoms[1:]:
            out = out.union(g)
        return out
    if kind == "Feature":
        return _from_geojson(obj["geometry"], source)
    if kind in ("Polygon", "MultiPolygon"):
        return Geometry(obj, crs="EPSG:4326")
    raise RegionError(
        f"{source} is a GeoJSON {kind!r}, not an area",
        fix="give a Polygon or MultiPolygon (or a Feature/FeatureCollection of them)",
    )


def _from_vector_file(path: Path, layer: str | None) -> Geometry:
    import pyogrio

    try:
        df = pyogrio.read_dataframe(path, layer=layer)
    except Exception as err:  # pyogrio raises several DataSourceError flavours
        raise RegionError(f"cannot read region file {str(path)!r}: {err}", fix="check the path and the layer name") from None
    if df.crs is None:
        raise RegionError(f"region file {str(path)!r} has no CRS", fix="assign one, e.g. ogr2ogr -a_srs EPSG:4326")
    if len(df) == 0:
        raise RegionError(f"region file {str(path)!r} holds no features", fix="give a layer with at least one polygon")
    geom = df.to_crs(4326).geometry.union_all()
    return Geometry(geom, crs="EPSG:4326")


def to_region(region: RegionLike, *, layer: str | None = None) -> Geometry:
    """Turn any supported region spelling into a Geometry in EPSG:4326.

    Accepts an odc-geo Geometry, a bbox (4 numbers or ``"minx,miny,maxx,maxy"``),
    a GeoJSON dict, or a path to a GeoJSON / GeoPackage / other OGR file (with
    ``layer`` for multi-layer files).
    """
    if isinstance(region, Geometry):
        return region.to_crs("EPSG:4326") if region.crs is not None else Geometry(region.geom, crs="EPSG:4326")
    if isinstance(region, dict):
        return _from_geojson(region, "the GeoJSON region")
    if isinstance(region, (str, Path)):
        path = Path(region)
        if path.suffix.lower() in (".json", ".geojson") and path.exists():
            return _from_geojson(json.loads(path.read_text()), str(path))
        if path.exists():
            return _from_vector_file(path, layer)
        if isinstance(region, str) and region.count(",") == 3:
            return box(*parse_bbox(region), crs="EPSG:4326")
        raise RegionError(
            f"region {str(region)!r} is neither an existing file nor a bbox",
            fix="give minx,miny,maxx,maxy in degrees, or a GeoJSON / GeoPackage path",
        )
    return box(*parse_bbox(region), crs="EPSG:4326")
