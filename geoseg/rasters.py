"""Raster and vector files onto one odc-geo grid.

STAC items go through :mod:`geoseg.fetch`; this module is the same job for
plain files: a directory with one GeoTIFF per band (the OSCD layout), a
multi-band file whose band descriptions name the bands (the Sen1Floods11
chips), or an explicit list of files.

* :func:`band_files` finds which file and band index holds each requested band
  (by common name; Sentinel-2 names ``B1``/``B01``/``B8A`` in file names or band
  descriptions are understood) and how to scale its numbers to reflectance.
* :func:`default_geobox` is the grid those files cover: 10 m in their UTM zone,
  pixel edges at multiples of the resolution (:func:`geoseg.grid.target_geobox`).
* :func:`read_stack` builds the lazy ``(band, y, x)`` float32 reflectance
  DataArray on a grid; each dask block warps only the source window it needs.
  ``result.odc.geobox`` is the grid.
* :func:`read_label_raster` reads a label raster onto a grid (nearest), giving
  ungeoreferenced label files (OSCD's change maps) the grid of a reference raster.
* :func:`burn_shapes` rasterizes (geometry, value) pairs onto a grid.

Nothing here maps label values to classes: that is :mod:`geoseg.labels`.
"""

from __future__ import annotations

import functools
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import dask
import dask.array as dsa
import numpy as np
import rasterio
import rasterio.features
import rasterio.windows
import xarray as xr
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import Geometry, box as geom_box
from odc.geo.xr import xr_coords
from rasterio.errors import NotGeoreferencedWarning

from geoseg.bands import SENTINEL2_BANDS
from geoseg.errors import BandNotFoundError, GridError, InputError
from geoseg.grid import target_geobox

#: int32 value of label pixels that no source pixel covers (outside the label raster).
OUTSIDE = np.iinfo(np.int32).min

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")

_S2_NAME = re.compile(r"(?:^|[_\-.])B(0?[1-9]|1[0-2]|8A)$", re.IGNORECASE)
_S2_BY_NAME = {v: k for k, v in SENTINEL2_BANDS.items()}


class RasterReadError(InputError):
    """A raster file that cannot be used as given (missing, unreadable, not georeferenced)."""


def canonical_band(name: str) -> str | None:
    """The common name of a band label, or None when it names no known band.

    ``"red"`` -> ``"red"``; ``"B04"``, ``"B4"``, ``"b04"`` -> ``"red"``;
    ``"B8A"`` -> ``"nir08"``; ``"..._T31UDQ_B02"`` (a file stem) -> ``"blue"``.
    """
    text = name.strip()
    if text in SENTINEL2_BANDS:
        return text
    m = _S2_NAME.search(text)
    if not m:
        return None
    num = m.group(1).upper()
    key = "B8A" if num == "8A" else f"B{int(num):02d}"
    return _S2_BY_NAME.get(key)


@dataclass(frozen=True)
class BandFile:
    """Where one band lives, and how its numbers become reflectance."""

    name: str
    """Common name of the band (``red``, ``swir16``)."""
    path: str
    """File holding it."""
    index: int
    """1-based band index in the file."""
    scale: float
    """Reflectance = DN * scale + offset."""
    offset: float
    nodata: float | None
    """DN that marks missing data, if any."""

    def __dask_tokenize__(self):
        return ("geoseg.BandFile", self.name, self.path, self.index, self.scale, self.offset, self.nodata)


def _files_of(source: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith("."))
            if not files:
                raise RasterReadError(f"directory {str(path)!r} holds no raster files ({', '.join(RASTER_SUFFIXES)})",
                                      fix="point at the directory of the scene's band files, or at a multi-band file")
            return files
        paths = [path]
    else:
        paths = [Path(p) for p in source]
    for p in paths:
        if not p.exists():
            raise RasterReadError(f"raster {str(p)!r} does not exist", fix="check the path (relative paths are resolved against the config's root)")
    return paths


def _open(path: str | Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.RasterioIOError as err:
        raise RasterReadError(f"raster {str(path)!r} cannot be read: {err}", fix="check that it is a GeoTIFF (or another GDAL raster) and not corrupt") from None


def _default_scale(dtype: str, declared_scale: float, declared_offset: float) -> tuple[float, float]:
    if declared_scale != 1.0 or declared_offset != 0.0:
        return declared_scale, declared_offset
    if np.dtype(dtype).kind in "iu":
        return 1e-4, 0.0  # Sentinel-2 DN convention: reflectance x 10000
    return 1.0, 0.0


def band_files(
    source: str | Path | Sequence[str | Path],
    bands: Sequence[str],
    *,
    scale: float | None = None,
    offset: float | None = None,
    nodata: float | None = None,
) -> tuple[BandFile, ...]:
    """Find each requested band (common names) in ``source``.

    ``source`` is a directory of single-band files (the band read from the file
    name, e.g. ``..._B02.tif``, or from the band description), one multi-band
    file (band descriptions ``B1``..``B12``, ``B8A``, or common names), or a
    list of such files.

    ``scale``/``offset`` default to the file's declared values; integer data
    without declared values get 1e-4 (Sentinel-2's reflectance x 10000).
    ``nodata`` defaults to the file's nodata.

    Raises
    ------
    BandNotFoundError
        Naming the missing bands and listing those the files hold.
    """
    if isinstance(bands, str):
        bands = [bands]
    wanted = []
    for b in bands:
        c = canonical_band(b)
        if c is None:
            raise BandNotFoundError(f"band {b!r} is not a band geoseg knows", fix="name bands by common name: " + ", ".join(SENTINEL2_BANDS))
        wanted.append(c)
    found: dict[str, BandFile] = {}
    for path in _files_of(source):
        with _open(path) as src:
            descs = list(src.descriptions)
            for i in range(1, src.count + 1):
                label = descs[i - 1] or ""
                name = canonical_band(label)
                if name is None and src.count == 1:
                    name = canonical_band(path.stem)
                if name is None:
                    continue
                if name in found and found[name].path != str(path):
                    raise BandNotFoundError(
                        f"band {name!r} is in two files: {found[name].path!r} and {str(path)!r}",
                        fix="keep one file per band in the scene's directory, or list the files explicitly",
                    )
                s, o = _default_scale(src.dtypes[i - 1], float(src.scales[i - 1]), float(src.offsets[i - 1]))
                found.setdefault(name, BandFile(
                    name=name, path=str(path), index=i,
                    scale=float(scale) if scale is not None else s,
                    offset=float(offset) if offset is not None else o,
                    nodata=nodata if nodata is not None else src.nodatavals[i - 1],
                ))
    missing = [b for b, c in zip(bands, wanted) if c not in found]
    if missing:
        have = ", ".join(f"{n} ({SENTINEL2_BANDS.get(n, '')})" for n in sorted(found, key=list(SENTINEL2_BANDS).index)) or "none recognised"
        raise BandNotFoundError(
            f"band{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found in {str(source)!r}",
            fix=f"use bands the data holds: {have}",
        )
    return tuple(found[c] for c in wanted)


def file_footprint(path: str | Path) -> Geometry:
    """The area a georeferenced raster covers, in its own CRS."""
    with _open(path) as src:
        if src.crs is None:
            raise RasterReadError(f"raster {str(path)!r} has no CRS", fix="give a georeferenced file, or a reference raster for labels")
        return geom_box(*src.bounds, crs=str(src.crs))


def footprint(files: Iterable[BandFile | str | Path]) -> Geometry:
    """Where every given file has data: the intersection of their footprints."""
    out = None
    for f in files:
        g = file_footprint(f.path if isinstance(f, BandFile) else f)
        out = g if out is None else out.intersection(g.to_crs(out.crs))
    if out is None or out.is_empty:
        raise GridError("the band files do not overlap", fix="give files of one scene")
    return out


def default_geobox(files: Iterable[BandFile | str | Path], *, resolution: float = 10.0, crs=None) -> GeoBox:
    """The grid the files cover together: ``resolution`` metres in their UTM zone
    (or ``crs``), pixel edges at multiples of the resolution."""
    return target_geobox(footprint(files), crs=crs, resolution=resolution)


# ----------------------------------------------------------------- block readers
#
# Blocks are sampled point by point: each target pixel centre is projected
# exactly (pyproj) into the source's pixel space and sampled there (nearest, or
# bilinear over the valid neighbours). GDAL's warper is not used because its
# approximate transformer (0.125 px error) and per-call kernel scaling make a
# block's values depend on the block's extent: here a pixel's value depends
# only on the pixel, so any chunking gives the same array.

_RESAMPLINGS = ("nearest", "bilinear")
_PROJ_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _projected_centres(gbox: GeoBox, src_crs: str) -> tuple[np.ndarray, np.ndarray]:
    """x, y of every pixel centre of ``gbox`` in ``src_crs`` (cached: all bands of a date share it)."""
    from pyproj import Transformer

    ny, nx = gbox.shape.yx
    t = gbox.transform
    cols, rows = np.meshgrid(np.arange(nx) + 0.5, np.arange(ny) + 0.5)
    x = t.c + cols * t.a + rows * t.b
    y = t.f + cols * t.d + rows * t.e
    if not gbox.crs == src_crs:
        tr = Transformer.from_crs(gbox.crs.to_wkt(), src_crs, always_xy=True)
        x, y = tr.transform(x, y)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _source_pixels(gbox: GeoBox, src_transform, src_crs: str) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (col, row) in the source of every pixel centre of ``gbox``."""
    with _PROJ_LOCK:
        x, y = _projected_centres(gbox, src_crs)
    inv = ~src_transform
    col = inv.c + x * inv.a + y * inv.b
    row = inv.f + x * inv.d + y * inv.e
    return col, row


def _sample(src, index: int, gbox: GeoBox, resampling: str, nodata, src_transform, src_crs: str):
    """Values of band ``index`` of open dataset ``src`` at ``gbox``'s pixel centres.

    Returns ``(values float64, valid bool)``.
    """
    col, row = _source_pixels(gbox, src_transform, src_crs)
    H, W = src.height, src.width
    inside = np.isfinite(col) & np.isfinite(row) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    values = np.zeros(col.shape, dtype="float64")
    if not inside.any():
        return values, inside
    c_in, r_in = col[inside], row[inside]
    c0, c1 = max(0, int(np.floor(c_in.min())) - 1), min(W, int(np.ceil(c_in.max())) + 2)
    r0, r1 = max(0, int(np.floor(r_in.min())) - 1), min(H, int(np.ceil(r_in.max())) + 2)
    data = src.read(index, window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0))
    ok = np.ones(data.shape, bool) if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)) else data != nodata
    if np.dtype(data.dtype).kind == "f":
        ok &= np.isfinite(data)
    h, w = data.shape
    if resampling == "nearest":
        ci = np.clip(np.floor(c_in).astype(int) - c0, 0, w - 1)
        ri = np.clip(np.floor(r_in).astype(int) - r0, 0, h - 1)
        values[inside] = data[ri, ci]
        valid = inside.copy()
        valid[inside] = ok[ri, ci]
        return values, valid
    # bilinear between the four surrounding pixel centres, over the valid ones
    fc, fr = c_in - 0.5 - c0, r_in - 0.5 - r0
    ci, ri = np.floor(fc).astype(int), np.floor(fr).astype(int)
    wc, wr = fc - ci, fr - ri
    acc = np.zeros(c_in.shape, dtype="float64")
    wsum = np.zeros(c_in.shape, dtype="float64")
    for dr, dc, wgt in ((0, 0, (1 - wr) * (1 - wc)), (0, 1, (1 - wr) * wc), (1, 0, wr * (1 - wc)), (1, 1, wr * wc)):
        rr, cc = np.clip(ri + dr, 0, h - 1), np.clip(ci + dc, 0, w - 1)
        g = wgt * ok[rr, cc]
        acc += g * np.where(ok[rr, cc], data[rr, cc], 0).astype("float64")
        wsum += g
    good = wsum > 1e-9
    values[inside] = np.where(good, acc / np.where(good, wsum, 1), 0)
    valid = inside.copy()
    valid[inside] = good
    return values, valid


def _read_band_block(bf: BandFile, gbox: GeoBox, resampling: str) -> np.ndarray:
    with _open(bf.path) as src:
        values, valid = _sample(src, bf.index, gbox, resampling, bf.nodata, src.transform, str(src.crs))
    out = (values * bf.scale + bf.offset).astype("float32")
    out[~valid] = np.nan
    return out


def _read_label_block(path: str, index: int, gbox: GeoBox, override: tuple | None, nodata: float | None) -> np.ndarray:
    with _open(path) as src:
        transform, crs = override if override is not None else (src.transform, str(src.crs))
        values, valid = _sample(src, index, gbox, "nearest", nodata, transform, crs)
    out = values.astype("int64")
    out[~valid] = OUTSIDE
    return out.astype("int32")


def _tiled(fn, args_of, geobox: GeoBox, chunks: int, dtype) -> dsa.Array:
    tiles = GeoboxTiles(geobox, (chunks, chunks))
    ny, nx = tiles.shape.yx
    rows = []
    for iy in range(ny):
        row = []
        for ix in range(nx):
            tile = tiles[iy, ix]
            block = dask.delayed(fn, pure=True)(*args_of(tile))
            row.append(dsa.from_delayed(block, shape=tile.shape.yx, dtype=dtype))
        rows.append(row)
    return dsa.block(rows)


def _wrap(data: dsa.Array, geobox: GeoBox, leading: dict | None = None, **attrs) -> xr.DataArray:
    coords = dict(xr_coords(geobox, crs_coord_name="spatial_ref", always_yx=True))
    dims = ("y", "x")
    if leading:
        for k, v in leading.items():
            coords[k] = v
        dims = tuple(leading) + dims
    return xr.DataArray(data, coords=coords, dims=dims, attrs=attrs)


def read_stack(
    files: Sequence[BandFile], geobox: GeoBox, *, resampling: str = "bilinear", chunks: int = 1024,
) -> xr.DataArray:
    """Lazy ``(band, y, x)`` float32 reflectance of ``files`` warped onto ``geobox``.

    Band coordinate: the common names. Source nodata and pixels outside a
    file are NaN. Each dask block reads only the source window it needs.
    """
    if resampling not in _RESAMPLINGS:
        raise InputError(f"unknown resampling {resampling!r}", fix="use one of: " + ", ".join(_RESAMPLINGS))
    layers = [_tiled(_read_band_block, lambda t, bf=bf: (bf, t, resampling), geobox, chunks, np.float32) for bf in files]
    arr = dsa.stack(layers)
    out = _wrap(arr, geobox, {"band": [bf.name for bf in files]}, nodata=np.nan, sources=[bf.path for bf in files])
    out.name = "reflectance"
    return out


def _georeferenced(src) -> bool:
    return src.crs is not None and not src.transform.is_identity


def read_label_raster(
    path: str | Path, geobox: GeoBox, *, reference: str | Path | None = None, band: int = 1,
    nodata: float | None = None, chunks: int = 1024,
) -> xr.DataArray:
    """Lazy int32 label values of ``path`` on ``geobox`` (nearest neighbour).

    A label file without georeferencing takes the transform and CRS of
    ``reference`` (a raster of exactly its shape, e.g. the scene's B02 file for
    OSCD). Pixels the label does not cover, and its nodata, are :data:`OUTSIDE`.
    """
    path = Path(path)
    if not path.exists():
        raise RasterReadError(f"label raster {str(path)!r} does not exist", fix="check the path")
    with _open(path) as src:
        if band < 1 or band > src.count:
            raise RasterReadError(f"label raster {str(path)!r} has {src.count} band(s), not band {band}", fix="give a band between 1 and the band count")
        if np.dtype(src.dtypes[band - 1]).kind not in "iu":
            raise RasterReadError(f"label raster {str(path)!r} holds {src.dtypes[band - 1]} values, not integer classes", fix="give a raster of integer class values")
        file_nodata = src.nodatavals[band - 1] if nodata is None else nodata
        override = None
        if not _georeferenced(src):
            if reference is None:
                raise RasterReadError(
                    f"label raster {str(path)!r} has no georeferencing",
                    fix="give `reference:` a georeferenced raster of exactly the same shape (for OSCD: the city's date-1 B02 file)",
                )
            with _open(reference) as ref:
                if not _georeferenced(ref):
                    raise RasterReadError(f"reference raster {str(reference)!r} has no georeferencing either", fix="give a georeferenced reference raster")
                if (ref.height, ref.width) != (src.height, src.width):
                    raise RasterReadError(
                        f"label raster {str(path)!r} is {src.height} x {src.width} px but reference {str(reference)!r} is {ref.height} x {ref.width}",
                        fix="give as reference the raster the labels were drawn on (same shape)",
                    )
                override = (ref.transform, str(ref.crs))
    arr = _tiled(_read_label_block, lambda t: (str(path), band, t, override, file_nodata), geobox, chunks, np.int32)
    out = _wrap(arr, geobox, nodata=int(OUTSIDE), source=str(path))
    out.name = "labels"
    return out


def label_footprint(path: str | Path, *, reference: str | Path | None = None) -> Geometry:
    """The area a label raster covers (using ``reference``'s grid when it has none)."""
    with _open(path) as src:
        if _georeferenced(src):
            return geom_box(*src.bounds, crs=str(src.crs))
    if reference is None:
        raise RasterReadError(f"label raster {str(path)!r} has no georeferencing", fix="give a reference raster of the same shape")
    return file_footprint(reference)


def burn_shapes(shapes: Iterable[tuple[object, int]], geobox: GeoBox, *, fill: int, dtype: str = "uint8") -> np.ndarray:
    """Rasterize ``(geometry, value)`` pairs (geometries in ``geobox``'s CRS) onto the grid.

    A pixel takes the value of the last shape covering its centre
    (``all_touched=False``); pixels no shape covers get ``fill``.
    """
    shapes = list(shapes)
    if not shapes:
        return np.full(geobox.shape.yx, fill, dtype=dtype)
    return rasterio.features.rasterize(
        shapes, out_shape=geobox.shape.yx, transform=geobox.transform, fill=fill, dtype=dtype, all_touched=False,
    )
