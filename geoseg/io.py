"""Writing outputs safely: atomic paths, and COGs streamed block by block.

Every file geoseg writes goes to a hidden temporary name beside its final
path and is renamed into place only once complete (``os.replace`` is atomic
on one filesystem), so a crash never leaves a half-written COG or GeoPackage.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import dask.array as dsa
import numpy as np
import rasterio
import rasterio.shutil
import xarray as xr
from odc.geo.geobox import GeoBox

from geoseg import envvars, priorities
from geoseg.collector import spare_long_lived
from geoseg.errors import InputError
from geoseg.overviews import Pyramid, streamable


def _check_writable(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise InputError(f"output {str(final)!r} already exists", fix="choose another path, or pass --overwrite")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output directory {str(final.parent)!r}: {err.strerror}", fix="choose a writable directory") from None
    if not os.access(final.parent, os.W_OK):
        raise InputError(f"output directory {str(final.parent)!r} is not writable", fix="choose a writable directory, or fix its permissions")


@contextlib.contextmanager
def atomic_path(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    _check_writable(final, overwrite)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.{threading.get_ident()}.tmp{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".aux.xml")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


class _WindowWriter:
    """A ``dask.array.store`` target writing numpy blocks into a rasterio dataset
    (and into the overviews being built beside it, if any)."""

    def __init__(self, dst: rasterio.io.DatasetWriter, pyramid: Pyramid | None = None):
        self.dst, self.pyramid = dst, pyramid
        self.lock = threading.Lock()

    def __setitem__(self, key: tuple[slice, slice, slice], block: np.ndarray) -> None:
        bands, rows, cols = key
        window = rasterio.windows.Window.from_slices(rows, cols)
        indexes = list(range(bands.start + 1, bands.stop + 1))
        with self.lock:
            self.dst.write(block, indexes=indexes, window=window)
        if self.pyramid is not None:
            self.pyramid.add(bands, rows, cols, block)


def _as_bands(data: xr.DataArray | np.ndarray | dsa.Array) -> dsa.Array:
    arr = data.data if isinstance(data, xr.DataArray) else data
    if not isinstance(arr, dsa.Array):
        arr = dsa.from_array(np.asarray(arr), chunks=(1, 1024, 1024) if np.ndim(arr) == 3 else (1024, 1024))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"cannot write an array of {arr.ndim} dims as a raster", fix="give (band, y, x) or (y, x)")
    return arr


@dataclass(frozen=True)
class RasterSpec:
    """One raster to write: data and how to describe it."""

    path: Path
    data: Any
    """(band, y, x) or (y, x): numpy, dask or xarray."""
    dtype: str | None = None
    nodata: float | None = None
    descriptions: Sequence[str] | None = None
    colormap: Mapping[int, tuple[int, ...]] | None = None
    tags: Mapping[str, str] | None = None
    band_tags: Sequence[Mapping[str, str]] | None = None
    overview_resampling: str = "average"


@functools.lru_cache(maxsize=1)
def _finishers() -> ThreadPoolExecutor:
    """Threads that turn staged rasters into COGs, one per CPU, kept for the process: a thread's
    first GDAL call with a CRS sets up its PROJ context (about 15 ms, per COG per call otherwise)."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="geoseg-cog")


def write_cogs(specs: Sequence[RasterSpec], geobox: GeoBox, *, blocksize: int = 512, overwrite: bool = False) -> list[Path]:
    """Write several rasters on one grid as COGs from ONE dask computation.

    Shared upstream work (a model's predictions behind both a class and a
    confidence raster) runs once. Blocks are computed and written a few at a
    time through ``dask.array.store`` into tiled GeoTIFFs, and their overviews
    built as they come where :mod:`geoseg.overviews` can; GDAL's COG driver
    then copies both into the COG (and builds any other overviews). Memory
    stays bounded by the chunk size, never the scene. Every file appears
    under its final name only when complete.
    """
    for spec in specs:
        _check_writable(Path(spec.path), overwrite)
    arrays, stages, datasets, pyramids = [], [], [], []
    with contextlib.ExitStack() as stack:
        stack.enter_context(spare_long_lived())  # computing the graph makes many objects (see geoseg.collector)
        # a bounded GDAL block cache: partly written tiles must not grow with the scene. In bytes:
        # rasterio hands the number to GDALSetCacheMax64, so a bare 64 would be 64 bytes (no cache at all)
        cache_mb = envvars.number("GEOSEG_GDAL_CACHEMAX_MB", 64, minimum=1)
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20))
        tmp_cogs = [stack.enter_context(atomic_path(spec.path, overwrite=overwrite)) for spec in specs]
        try:
            for spec, tmp_cog in zip(specs, tmp_cogs):
                arr = _as_bands(spec.data)
                if tuple(arr.shape[1:]) != tuple(geobox.shape):
                    raise InputError(f"array shape {arr.shape[1:]} does not match the grid {tuple(geobox.shape)}", fix="write the array with its own geobox")
                dtype = np.dtype(spec.dtype or arr.dtype)
                # keep the producer's row blocks (rechunking rows would hold several of them at once)
                arrays.append(arr.astype(dtype).rechunk({0: arr.shape[0]}))
                stage = tmp_cog.with_name(tmp_cog.name + ".stage.tif")
                stages.append(stage)
                profile = dict(
                    driver="GTiff", width=geobox.shape.x, height=geobox.shape.y, count=arr.shape[0],
                    dtype=dtype.name, crs=geobox.crs.to_wkt(), transform=geobox.transform, nodata=spec.nodata,
                    # 16-row tiles: blocks of rows that do not align with them leave only 16-row
                    # tiles half-written in GDAL's cache, whatever the width
                    tiled=True, blockxsize=blocksize, blockysize=16, BIGTIFF="IF_SAFER",
                    # temporary: integers (class maps) shrink ~40x at ZSTD 1; floats (probabilities) only
                    # to ~75 %, and compressing them ran at close, after the last block (2048²: the
                    # COGs were done 0.18 s after it, 0.14 s uncompressed)
                    **({"compress": "zstd", "ZSTD_LEVEL": 1} if dtype.kind in "iub" else {}),
                )
                datasets.append(rasterio.open(stage, "w", **profile))
                # overviews built while the blocks stream in, where geoseg.overviews can
                levels = streamable(dtype, spec.overview_resampling, arrays[-1].chunks)
                pyramids.append(stack.enter_context(contextlib.closing(Pyramid(stage, profile, blocksize, spec.overview_resampling, levels)))
                                if levels else None)
            for spec, ds in zip(specs, datasets):  # metadata first: GDAL cannot add a colour table after pixels
                for i, desc in enumerate(spec.descriptions or [], start=1):
                    ds.set_band_description(i, desc)
                if spec.colormap is not None:
                    ds.write_colormap(1, dict(spec.colormap))
                if spec.tags:
                    ds.update_tags(**spec.tags)
                for i, bt in enumerate(spec.band_tags or [], start=1):
                    ds.update_tags(i, **bt)
            with priorities.honoured(arrays):  # the local scheduler too runs tasks by their priorities
                dsa.store(arrays, [_WindowWriter(ds, p) for ds, p in zip(datasets, pyramids)], lock=False)

            def finalize(spec: RasterSpec, ds, stage: Path, tmp_cog: Path, arr, pyramid: Pyramid | None) -> None:
                ds.close()  # writes the last tiles
                rs = spec.overview_resampling.upper()
                integer = arr.dtype.kind in "iu"
                rasterio.shutil.copy(
                    stage if pyramid is None else pyramid.finish(), tmp_cog, driver="COG", COMPRESS="DEFLATE",
                    PREDICTOR=2 if integer else 3,
                    # floats (probabilities, confidence) gain nothing past level 1 (the demo's: same size), 25 % faster
                    LEVEL=6 if integer else 1,
                    BLOCKSIZE=blocksize, OVERVIEWS="AUTO" if pyramid is None else "FORCE_USE_EXISTING",
                    OVERVIEW_RESAMPLING=rs, RESAMPLING=rs, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
                )

            # one COG per thread: GDAL releases the GIL while it compresses and builds overviews
            for f in [_finishers().submit(finalize, *args) for args in zip(specs, datasets, stages, tmp_cogs, arrays, pyramids)]:
                f.result()
        finally:
            for ds in datasets:
                if not ds.closed:
                    ds.close()
            for stage in stages:
                for leftover in (stage, stage.with_name(stage.name + ".aux.xml")):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
    return [Path(spec.path) for spec in specs]


def write_cog(
    data: xr.DataArray | np.ndarray | dsa.Array,
    path: str | Path,
    geobox: GeoBox,
    *,
    blocksize: int = 512,
    overwrite: bool = False,
    **spec,
) -> Path:
    """Write ``data`` (band, y, x) on ``geobox`` as one Cloud Optimized GeoTIFF
    (see :class:`RasterSpec` for the other keywords)."""
    return write_cogs([RasterSpec(Path(path), data, **spec)], geobox, blocksize=blocksize, overwrite=overwrite)[0]
