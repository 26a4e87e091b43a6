#!/usr/bin/env python
"""Build ``catalogs/demo``: a small, real Sentinel-2 L1C STAC catalog with per-band COGs.

Source: the Onera Satellite Change Detection dataset (OSCD) as stored in
``<repo>/../shared/data/oscd``: one EPSG:4326 GeoTIFF per band and date, plus an
ungeoreferenced change label per city.  For each city and date this script

* reprojects every band into the scene's UTM zone at its native Sentinel-2
  resolution (10 / 20 / 60 m) on a grid snapped outward to 60 m, so the three
  resolutions nest exactly and both dates of a city share one grid;
* writes each band as a Cloud-Optimized GeoTIFF (nodata 0, like Sentinel-2 DN 0);
* estimates ``eo:cloud_cover`` with a simple top-of-atmosphere threshold test;
* describes the scene as a STAC item shaped like Earth Search v1 ``sentinel-2-l1c``.

The change label of each city is written as a COG on the same 10 m grid under
``labels/``.  Nothing written depends on the wall clock, so rebuilds are
byte-identical.  See ``catalogs/README.md`` for the rules applied.

Usage::

    python catalogs/build_demo.py [--src ../shared/data/oscd] [--out catalogs/demo]
                                  [--cities paris nantes bordeaux]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import pystac.validation
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine, array_bounds
from rasterio.warp import Resampling, reproject, transform_bounds
from rio_cogeo.cogeo import cog_validate

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO_ROOT.parent / "shared" / "data" / "oscd"
DEFAULT_OUT = REPO_ROOT / "catalogs" / "demo"
DEFAULT_CITIES = ("paris", "nantes", "bordeaux")

CATALOG_ID = "geoseg-demo"
COLLECTION_ID = "sentinel-2-l1c"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GRID_SNAP_M = 60  # coarsest Sentinel-2 resolution: 10/20/60 m grids nest exactly
DN_SCALE = 0.0001  # TOA reflectance = DN * scale + offset (offset 0 before baseline 04.00)
FALLBACK_TIME = dt.time(10, 30, tzinfo=dt.timezone.utc)  # nominal S2 overpass time
SENTINEL_LICENSE_URL = "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"
OSCD_URL = "https://rcdaudt.github.io/oscd/"

ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
]
COLLECTION_EXTENSIONS = [
    "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 MSI band, as described by Earth Search v1 ``sentinel-2-l1c``."""

    name: str
    asset_key: str
    gsd: int
    title: str
    common_name: str
    center_wavelength: float
    full_width_half_max: float


# Titles and wavelengths copied from a real Earth Search v1 sentinel-2-l1c item.
BANDS = (
    Band("B01", "coastal", 60, "Coastal - 60m", "coastal", 0.443, 0.027),
    Band("B02", "blue", 10, "Blue - 10m", "blue", 0.49, 0.098),
    Band("B03", "green", 10, "Green - 10m", "green", 0.56, 0.045),
    Band("B04", "red", 10, "Red - 10m", "red", 0.665, 0.038),
    Band("B05", "rededge1", 20, "Red Edge 1 - 20m", "rededge", 0.704, 0.019),
    Band("B06", "rededge2", 20, "Red Edge 2 - 20m", "rededge", 0.74, 0.018),
    Band("B07", "rededge3", 20, "Red Edge 3 - 20m", "rededge", 0.783, 0.028),
    Band("B08", "nir", 10, "NIR 1 - 10m", "nir", 0.842, 0.145),
    Band("B8A", "nir08", 20, "NIR 2 - 20m", "nir08", 0.865, 0.033),
    Band("B09", "nir09", 60, "NIR 3 - 60m", "nir09", 0.945, 0.026),
    Band("B10", "cirrus", 60, "Cirrus - 60m", "cirrus", 1.3735, 0.075),
    Band("B11", "swir16", 20, "SWIR 1.6\u03bcm - 20m", "swir16", 1.61, 0.143),
    Band("B12", "swir22", 20, "SWIR 2.2\u03bcm - 20m", "swir22", 2.19, 0.242),
)

COG_OPTIONS = {
    "BLOCKSIZE": 256,
    "COMPRESS": "DEFLATE",
    "PREDICTOR": 2,
    "OVERVIEWS": "AUTO",
    "OVERVIEW_RESAMPLING": "AVERAGE",
}

# Cloud test thresholds (TOA reflectance); documented in catalogs/README.md.
CLOUD_BLUE_MIN = 0.2
CLOUD_NDSI_MAX = 0.4
CLOUD_CIRRUS_MIN = 0.012

# ESA tile-product name: the timestamp is the PROCESSING time, not the sensing time.
OPER_NAME = re.compile(
    r"^(?P<platform>S2[AB])_OPER_MSI_L1C_TL_\w{4}_(?P<stamp>\d{8}T\d{6})"
    r"_A\d{6}_T(?P<tile>\d{2}[C-X][A-Z]{2})_(?P<band>B[0-9][0-9A])\.tif$"
)
# Compact name (PSD >= 14): the timestamp is the datatake SENSING time.
SENSING_NAME = re.compile(
    r"^T(?P<tile>\d{2}[C-X][A-Z]{2})_(?P<stamp>\d{8}T\d{6})_(?P<band>B[0-9][0-9A])\.tif$"
)


@dataclass(frozen=True)
class Scene:
    """One OSCD acquisition (city, date) and what its file names tell about it."""

    city: str
    date_index: int
    sensing_date: dt.date
    band_paths: dict[str, Path]
    tile: str  # MGRS tile without the leading "T", e.g. "31UDQ"
    platform: str | None  # "S2A" / "S2B" when the file name says so
    name_stamp: dt.datetime  # the timestamp in the file names
    stamp_is_sensing: bool  # True for compact names, False for processing-time names


@dataclass(frozen=True)
class Grid:
    """A north-up UTM pixel grid: EPSG code, bounds (left, bottom, right, top) in metres."""

    epsg: int
    bounds: tuple[float, float, float, float]

    def transform(self, res: int) -> Affine:
        """Affine transform of this grid at ``res`` metres."""
        return Affine(res, 0.0, self.bounds[0], 0.0, -res, self.bounds[3])

    def shape(self, res: int) -> tuple[int, int]:
        """(rows, cols) of this grid at ``res`` metres."""
        left, bottom, right, top = self.bounds
        return round((top - bottom) / res), round((right - left) / res)


# --------------------------------------------------------------------------- source


def parse_band_filename(name: str) -> dict:
    """Split an OSCD band file name into tile, platform, timestamp and band."""
    for pattern, is_sensing in ((OPER_NAME, False), (SENSING_NAME, True)):
        match = pattern.match(name)
        if match:
            fields = match.groupdict()
            return {
                "tile": fields["tile"],
                "platform": fields.get("platform"),
                "stamp": dt.datetime.strptime(fields["stamp"], "%Y%m%dT%H%M%S").replace(
                    tzinfo=dt.timezone.utc
                ),
                "stamp_is_sensing": is_sensing,
                "band": fields["band"],
            }
    raise ValueError(f"unrecognised Sentinel-2 band file name: {name}")


def read_sensing_dates(city_dir: Path) -> dict[int, dt.date]:
    """Read ``dates.txt`` (``date_1: YYYYMMDD`` / ``date_2: ...``) into {1: date, 2: date}."""
    dates = {}
    for line in (city_dir / "dates.txt").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip().startswith("date_"):
            dates[int(key.strip()[5:])] = dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    return dates


def load_scene(src: Path, city: str, date_index: int) -> Scene:
    """Collect the 13 band files of one city/date and the metadata their names carry."""
    city_dir = src / "images" / city
    if not city_dir.is_dir():
        raise FileNotFoundError(f"no OSCD city {city!r} under {src / 'images'}")
    band_paths, parsed = {}, []
    for path in sorted((city_dir / f"imgs_{date_index}").glob("*.tif")):
        info = parse_band_filename(path.name)
        band_paths[info["band"]] = path
        parsed.append(info)
    missing = {b.name for b in BANDS} - band_paths.keys()
    if missing:
        raise FileNotFoundError(f"{city} date {date_index}: missing bands {sorted(missing)}")
    if len({(p["tile"], p["platform"], p["stamp"]) for p in parsed}) != 1:
        raise ValueError(f"{city} date {date_index}: band files disagree on tile/product")
    first = parsed[0]
    return Scene(
        city=city,
        date_index=date_index,
        sensing_date=read_sensing_dates(city_dir)[date_index],
        band_paths=band_paths,
        tile=first["tile"],
        platform=first["platform"],
        name_stamp=first["stamp"],
        stamp_is_sensing=first["stamp_is_sensing"],
    )


def scene_datetime(scene: Scene) -> dt.datetime:
    """Sensing datetime: date from dates.txt; time from the file name only when it is a
    sensing timestamp on that same date, else the nominal 10:30 UTC."""
    if scene.stamp_is_sensing and scene.name_stamp.date() == scene.sensing_date:
        return scene.name_stamp
    return dt.datetime.combine(scene.sensing_date, FALLBACK_TIME)


def item_id(scene: Scene) -> str:
    """Earth Search style id, e.g. ``S2A_31UDQ_20161130_0_L1C`` (``S2_`` if platform unknown)."""
    return f"{scene.platform or 'S2'}_{scene.tile}_{scene.sensing_date:%Y%m%d}_0_L1C"


# --------------------------------------------------------------------------- grids


def utm_epsg(tile: str) -> int:
    """EPSG code of the WGS84 UTM zone of an MGRS tile (bands N..X are northern)."""
    zone, band = int(tile[:2]), tile[2]
    return (32600 if band >= "N" else 32700) + zone


def read_georef(path: Path) -> tuple[Affine, CRS, tuple[int, int]]:
    """Transform, CRS and shape of a raster."""
    with rasterio.open(path) as ds:
        return ds.transform, ds.crs, ds.shape


def footprint_bounds(path: Path) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a north-up raster, in its own CRS."""
    transform, _, (rows, cols) = read_georef(path)
    return array_bounds(rows, cols, transform)


def utm_grid(b02_path: Path, epsg: int) -> Grid:
    """UTM grid covering a B02 footprint, snapped outward to multiples of 60 m."""
    _, crs, _ = read_georef(b02_path)
    left, bottom, right, top = transform_bounds(
        crs, CRS.from_epsg(epsg), *footprint_bounds(b02_path), densify_pts=101
    )
    snap = GRID_SNAP_M
    return Grid(
        epsg=epsg,
        bounds=(
            math.floor(left / snap) * snap,
            math.floor(bottom / snap) * snap,
            math.ceil(right / snap) * snap,
            math.ceil(top / snap) * snap,
        ),
    )


def footprint_wgs84(b02_path: Path) -> tuple[dict, list[float]]:
    """GeoJSON polygon and bbox of the valid data, in WGS84.

    The source rasters are north-up EPSG:4326 rectangles that the UTM grid fully
    contains, so the valid-data footprint is exactly that rectangle.
    """
    _, crs, _ = read_georef(b02_path)
    if crs.to_epsg() != 4326:
        raise ValueError(f"{b02_path}: expected EPSG:4326, got {crs}")
    west, south, east, north = footprint_bounds(b02_path)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, [west, south, east, north]


# --------------------------------------------------------------------------- rasters


def reproject_band(path: Path, grid: Grid, res: int) -> np.ndarray:
    """Bilinearly resample one uint16 band onto ``grid`` at ``res`` m.

    Pixels outside the source footprint become 0 (nodata); valid pixels are
    rounded and kept >= 1 so that no real measurement turns into nodata.
    """
    with rasterio.open(path) as ds:
        source = ds.read(1).astype(np.float32)
        src_transform, src_crs = ds.transform, ds.crs
    dest = np.full(grid.shape(res), np.nan, dtype=np.float32)
    reproject(
        source,
        dest,
        src_transform=src_transform,
        src_crs=src_crs,
        dst_transform=grid.transform(res),
        dst_crs=CRS.from_epsg(grid.epsg),
        dst_nodata=np.nan,
        resampling=Resampling.bilinear,
    )
    valid = np.isfinite(dest)
    out = np.zeros(dest.shape, dtype=np.uint16)
    out[valid] = np.clip(np.rint(dest[valid]), 1, np.iinfo(np.uint16).max)
    return out


def reproject_label(path: Path, b02_path: Path, grid: Grid) -> np.ndarray:
    """Nearest-neighbour resample an ungeoreferenced OSCD label (georeferenced like B02)
    onto the 10 m grid; outside the footprint is 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            label = ds.read(1)
    src_transform, src_crs, src_shape = read_georef(b02_path)
    if label.shape != src_shape:
        raise ValueError(f"{path}: shape {label.shape} != B02 shape {src_shape}")
    dest = np.zeros(grid.shape(10), dtype=np.uint8)
    reproject(
        label,
        dest,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=0,
        dst_transform=grid.transform(10),
        dst_crs=CRS.from_epsg(grid.epsg),
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    return dest


def write_cog(
    path: Path,
    data: np.ndarray,
    grid: Grid,
    res: int,
    description: str,
    overview_resampling: str = "AVERAGE",
) -> None:
    """Write a single-band COG with nodata 0 and validate it."""
    profile = {
        "driver": "COG",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": CRS.from_epsg(grid.epsg),
        "transform": grid.transform(res),
        "nodata": 0,
        **COG_OPTIONS,
        "OVERVIEW_RESAMPLING": overview_resampling,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, description)
    is_valid, errors, _ = cog_validate(str(path), quiet=True)
    if not is_valid:
        raise RuntimeError(f"{path} is not a valid COG: {errors}")


def estimate_cloud_cover(bands: dict[str, np.ndarray]) -> float:
    """Percentage of valid pixels flagged cloudy by a simple TOA test, on the 10 m grid.

    cloudy = (blue B02 > 0.2 and NDSI(B03, B11) < 0.4) or cirrus B10 > 0.012.
    The 20/60 m bands are expanded to 10 m by block replication (the grids nest).
    """
    shape = bands["B02"].shape

    def at_10m(name: str) -> np.ndarray:
        factor = shape[0] // bands[name].shape[0]
        return np.repeat(np.repeat(bands[name], factor, axis=0), factor, axis=1)

    blue, green = bands["B02"], bands["B03"]
    swir16, cirrus = at_10m("B11"), at_10m("B10")
    valid = (blue > 0) & (green > 0) & (swir16 > 0) & (cirrus > 0)
    green_r, swir_r = green * DN_SCALE, swir16 * DN_SCALE
    with np.errstate(invalid="ignore", divide="ignore"):
        ndsi = (green_r - swir_r) / (green_r + swir_r)
    cloudy = ((blue * DN_SCALE > CLOUD_BLUE_MIN) & (ndsi < CLOUD_NDSI_MAX)) | (
        cirrus * DN_SCALE > CLOUD_CIRRUS_MIN
    )
    return round(100.0 * np.count_nonzero(cloudy & valid) / np.count_nonzero(valid), 2)


# --------------------------------------------------------------------------- STAC


def band_asset(band: Band, grid: Grid) -> pystac.Asset:
    """STAC asset for one band COG stored next to its item JSON."""
    return pystac.Asset(
        href=f"./{band.name}.tif",
        media_type=COG_MEDIA_TYPE,
        title=band.title,
        roles=["data", "reflectance"],
        extra_fields={
            "eo:bands": [band_eo(band)],
            "gsd": band.gsd,
            "proj:epsg": grid.epsg,
            "proj:shape": list(grid.shape(band.gsd)),
            "proj:transform": list(grid.transform(band.gsd))[:6],
            "raster:bands": [band_raster(band)],
        },
    )


def band_eo(band: Band) -> dict:
    """``eo:bands`` entry of a band."""
    return {
        "name": band.name,
        "common_name": band.common_name,
        "center_wavelength": band.center_wavelength,
        "full_width_half_max": band.full_width_half_max,
    }


def band_raster(band: Band) -> dict:
    """``raster:bands`` entry of a band (offset 0: processing baseline < 04.00)."""
    return {
        "nodata": 0,
        "data_type": "uint16",
        "spatial_resolution": band.gsd,
        "scale": DN_SCALE,
        "offset": 0,
    }


def build_item(scene: Scene, grid: Grid, cloud_cover: float) -> pystac.Item:
    """STAC item for one scene, shaped like an Earth Search v1 sentinel-2-l1c item."""
    geometry, bbox = footprint_wgs84(scene.band_paths["B02"])
    properties = {}
    if scene.platform:
        properties["platform"] = f"sentinel-{scene.platform[1:].lower()}"
    properties.update(
        {
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": cloud_cover,
            "proj:epsg": grid.epsg,
            "mgrs:utm_zone": int(scene.tile[:2]),
            "mgrs:latitude_band": scene.tile[2],
            "mgrs:grid_square": scene.tile[3:],
            "grid:code": f"MGRS-{scene.tile}",
            "s2:mgrs_tile": scene.tile,
            "s2:product_type": "S2MSI1C",
            "oscd:city": scene.city,
        }
    )
    item = pystac.Item(
        id=item_id(scene),
        geometry=geometry,
        bbox=bbox,
        datetime=scene_datetime(scene),
        properties=properties,
        stac_extensions=list(ITEM_EXTENSIONS),
    )
    for band in BANDS:
        item.add_asset(band.asset_key, band_asset(band, grid))
    return item


def build_collection(items: list[pystac.Item]) -> pystac.Collection:
    """The ``sentinel-2-l1c`` collection, adapted from Earth Search v1, with computed extent."""
    bboxes = np.array([item.bbox for item in items])
    times = sorted(item.datetime for item in items)
    platforms = sorted({item.properties["platform"] for item in items if "platform" in item.properties})
    collection = pystac.Collection(
        id=COLLECTION_ID,
        title="Sentinel-2 Level-1C (geoseg demo: OSCD crops)",
        description=(
            "Sentinel-2 MSI Level-1C top-of-atmosphere reflectance over small city crops "
            "from the Onera Satellite Change Detection (OSCD) dataset, reprojected to UTM "
            "as per-band Cloud-Optimized GeoTIFFs at native 10/20/60 m resolution. "
            "Items follow the Earth Search v1 sentinel-2-l1c layout. Contains modified "
            "Copernicus Sentinel data 2015-2018."
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([[*bboxes[:, :2].min(axis=0), *bboxes[:, 2:].max(axis=0)]]),
            pystac.TemporalExtent([[times[0], times[-1]]]),
        ),
        license="other",
        keywords=["sentinel", "earth observation", "esa", "oscd", "change detection"],
        providers=[
            pystac.Provider("ESA", roles=["producer", "licensor"], url="https://earth.esa.int/web/guest/home"),
            pystac.Provider("ONERA (OSCD)", roles=["processor"], url=OSCD_URL),
            pystac.Provider("geoseg", roles=["processor", "host"]),
        ],
        summaries=pystac.Summaries(
            {
                "platform": platforms,
                "constellation": ["sentinel-2"],
                "instruments": ["msi"],
                "gsd": [10, 20, 60],
                "proj:epsg": sorted({item.properties["proj:epsg"] for item in items}),
                "eo:cloud_cover": {
                    "minimum": min(item.properties["eo:cloud_cover"] for item in items),
                    "maximum": max(item.properties["eo:cloud_cover"] for item in items),
                },
                "eo:bands": [band_eo(band) for band in BANDS],
            }
        ),
        stac_extensions=list(COLLECTION_EXTENSIONS),
    )
    collection.extra_fields["item_assets"] = {
        band.asset_key: {
            "type": COG_MEDIA_TYPE,
            "title": band.title,
            "eo:bands": [band_eo(band)],
            "gsd": band.gsd,
            "raster:bands": [band_raster(band)],
            "roles": ["data", "reflectance"],
        }
        for band in BANDS
    }
    collection.add_link(
        pystac.Link("license", SENTINEL_LICENSE_URL, media_type="text/html",
                    title="Legal notice on the use of Copernicus Sentinel Data")
    )
    collection.add_link(
        pystac.Link("cite-as", "https://doi.org/10.5270/S2_-742ikth",
                    title="Copernicus Sentinel-2 MSI Level-1C (L1C) Top-of-Atmosphere Reflectance")
    )
    collection.add_link(
        pystac.Link("related", OSCD_URL, media_type="text/html",
                    title="Onera Satellite Change Detection (OSCD) dataset, source of the crops")
    )
    for item in items:
        collection.add_item(item)
    return collection


ATTRIBUTION = """\
Contains modified Copernicus Sentinel data 2015-2018.
Copernicus Sentinel data are provided under the Copernicus licence (free, full and
open access): https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice

The imagery and change labels were built from the Onera Satellite Change Detection
(OSCD) dataset, https://rcdaudt.github.io/oscd/ : the per-band GeoTIFFs were
reprojected to UTM and rewritten as Cloud-Optimized GeoTIFFs; the change maps
(labels/*-cm.tif) were georeferenced on the 10 m grid of their city.

The OSCD change labels are released under Creative Commons BY-NC-SA 4.0
(non-commercial; https://creativecommons.org/licenses/by-nc-sa/4.0/). For
commercial use, contact the OSCD authors.

Please cite:
  R. Caye Daudt, B. Le Saux, A. Boulch, Y. Gousseau, "Urban Change Detection for
  Multispectral Earth Observation Using Convolutional Neural Networks",
  IEEE International Geoscience and Remote Sensing Symposium (IGARSS), 2018.
"""


# --------------------------------------------------------------------------- build


def build_scene(scene: Scene, grid: Grid, item_dir: Path) -> pystac.Item:
    """Write the 13 band COGs of a scene into ``item_dir`` and return its STAC item."""
    item_dir.mkdir(parents=True)
    arrays = {}
    for band in BANDS:
        arrays[band.name] = reproject_band(scene.band_paths[band.name], grid, band.gsd)
        write_cog(item_dir / f"{band.name}.tif", arrays[band.name], grid, band.gsd, band.name)
    return build_item(scene, grid, estimate_cloud_cover(arrays))


def build_city(src: Path, city: str, out: Path) -> list[pystac.Item]:
    """Build both dates of a city on one shared grid, plus the city's label COG."""
    scenes = [load_scene(src, city, index) for index in (1, 2)]
    if len({scene.tile for scene in scenes}) != 1:
        raise ValueError(f"{city}: dates are on different MGRS tiles")
    b02 = scenes[0].band_paths["B02"]
    if read_georef(b02) != read_georef(scenes[1].band_paths["B02"]):
        raise ValueError(f"{city}: the two dates are not on the same source grid")
    grid = utm_grid(b02, utm_epsg(scenes[0].tile))
    items = [build_scene(s, grid, out / COLLECTION_ID / item_id(s)) for s in scenes]
    label = reproject_label(src / "labels" / city / "cm" / f"{city}-cm.tif", b02, grid)
    (out / "labels").mkdir(exist_ok=True)
    write_cog(out / "labels" / f"{city}-cm.tif", label, grid, 10, "change", "NEAREST")
    return items


def build_catalog(src: Path, cities: list[str], out: Path) -> pystac.Catalog:
    """Build every city into ``out`` (COGs, labels, STAC JSON, ATTRIBUTION)."""
    items = [item for city in cities for item in build_city(src, city, out)]
    catalog = pystac.Catalog(
        id=CATALOG_ID,
        title="geoseg demo catalog",
        description=(
            "Small real Sentinel-2 L1C catalog for geoseg demos and tests, built from "
            "OSCD city crops (" + ", ".join(cities) + ") by catalogs/build_demo.py."
        ),
    )
    catalog.add_child(build_collection(items))
    catalog.normalize_hrefs(str(out))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    (out / "ATTRIBUTION").write_text(ATTRIBUTION)
    return catalog


def check_replaceable(out: Path) -> None:
    """Refuse to overwrite an existing directory that is not a previous catalog build."""
    if out.exists() and not (out / "catalog.json").is_file():
        raise SystemExit(f"refusing to replace {out}: it is not a STAC catalog directory")


def replace_dir(new: Path, out: Path) -> None:
    """Move a freshly built ``new`` directory to ``out``, replacing an older build."""
    check_replaceable(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old)
    else:
        new.rename(out)


# --------------------------------------------------------------------------- checks


def check_catalog(out: Path) -> None:
    """Reopen the catalog with pystac, schema-validate the item JSON as written, and
    check that every asset's proj:* fields match what rasterio reads from its COG."""
    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = list(catalog.get_items(recursive=True))
    # pystac migrates projection v1.1 (proj:epsg) to v2 (proj:code) on read, so
    # compare against the JSON exactly as it was written.
    written = [read_json(Path(item.get_self_href())) for item in items]
    schema_note = validate_stac_dicts([*map(read_json, out.glob("**/*.json"))])
    for item, item_dict in zip(items, written):
        for key, asset in item_dict["assets"].items():
            with rasterio.open(item.assets[key].get_absolute_href()) as ds:
                expected = (list(ds.shape), list(ds.transform)[:6], ds.crs.to_epsg())
            declared = (asset["proj:shape"], asset["proj:transform"], asset["proj:epsg"])
            if declared != expected:
                raise AssertionError(f"{item.id}/{key}: STAC {declared} != COG {expected}")
    print(f"check: {len(items)} items; proj:* match every COG; {schema_note}")


def read_json(path: Path) -> dict:
    """Parse a JSON file."""
    return json.loads(path.read_text())


def validate_stac_dicts(stac_dicts: list[dict]) -> str:
    """JSON-schema validate STAC objects (as dicts) and say how far validation went.

    The core STAC schema ships with pystac; extension schemas are fetched online,
    so without network only the core schema is checked.
    """
    try:
        import jsonschema  # noqa: F401  (pystac's validator needs it)
    except ImportError:
        return "schema validation skipped (jsonschema not installed)"
    for stac_dict in stac_dicts:
        pystac.validation.validate_dict({**stac_dict, "stac_extensions": []})
    validator_log = logging.getLogger("pystac.validation.stac_validator")
    level = validator_log.level
    validator_log.setLevel(logging.CRITICAL)
    try:
        for stac_dict in stac_dicts:
            pystac.validation.validate_dict(stac_dict)
    except pystac.validation.GetSchemaError:
        return "STAC JSON valid against the core schemas (extension schemas need the network)"
    finally:
        validator_log.setLevel(level)
    return "STAC JSON valid against the core and extension schemas"


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="OSCD root (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output catalog directory")
    parser.add_argument("--cities", nargs="+", default=list(DEFAULT_CITIES), help="OSCD cities")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the catalog into a temporary directory, swap it into place, then check it."""
    args = parse_args(argv)
    out = args.out.resolve()
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-tmp-", dir=out.parent))
    try:
        catalog = build_catalog(args.src.resolve(), args.cities, tmp)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for item in catalog.get_items(recursive=True):
        print(f"{item.id}  {item.properties['oscd:city']:<9} {item.datetime:%Y-%m-%dT%H:%M:%SZ}  "
              f"cloud {item.properties['eo:cloud_cover']:6.2f}%")
    check_catalog(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
