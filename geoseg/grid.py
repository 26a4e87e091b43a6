"""Target grids. A grid is an odc-geo :class:`~odc.geo.geobox.GeoBox` (shape,
affine, CRS): every stage shares that one value type, so "do these rasters line
up?" is one equality check.
"""

from __future__ import annotations

from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from geoseg.errors import GridError


def utm_crs(region: Geometry) -> CRS:
    """The WGS84 / UTM zone CRS that holds the centroid of ``region``."""
    c = region.to_crs("EPSG:4326").centroid
    lon, lat = c.coords[0]
    zone = min(int((lon + 180) // 6) + 1, 60)
    return CRS(f"EPSG:{(32600 if lat >= 0 else 32700) + zone}")


def as_crs(crs) -> CRS:
    """Parse a CRS spec (``"EPSG:32631"``, ``32631``, WKT), with a clear error."""
    try:
        return CRS(f"EPSG:{crs}" if isinstance(crs, int) else crs)
    except Exception:
        raise GridError(f"unknown CRS {crs!r}", fix='give an EPSG code such as "EPSG:32631", or a WKT string') from None


def target_geobox(region: Geometry, *, crs=None, resolution: float = 10.0) -> GeoBox:
    """The grid covering ``region`` in ``crs`` (default: its UTM zone).

    Pixel edges are anchored at multiples of ``resolution``, so grids of the
    same CRS and resolution built for different regions line up exactly, and
    so do Sentinel-2 tiles (whose origins are multiples of 60 m).
    """
    if not resolution or resolution <= 0:
        raise GridError(f"resolution {resolution!r} is not a positive number", fix="give the pixel size in CRS units, e.g. 10")
    target = utm_crs(region) if crs is None else as_crs(crs)
    if target.geographic and resolution > 1:
        raise GridError(
            f"resolution {resolution} is in degrees for geographic CRS {target}",
            fix="give a projected CRS (e.g. the UTM zone) or a resolution in degrees",
        )
    geom = region.to_crs(target)
    if geom.is_empty or geom.area == 0:
        raise GridError(f"region is empty once projected to {target}", fix="check the region's coordinates")
    return GeoBox.from_geopolygon(geom, resolution=resolution, crs=target)
