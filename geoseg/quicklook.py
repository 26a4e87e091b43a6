"""RGB quick-looks of a reflectance stack: an 8-bit COG and a small PNG.

The contrast stretch (per-band 2nd-98th percentiles) is estimated on a strided
subsample, so the scene is streamed, never held in memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import xarray as xr
from odc.geo.geobox import GeoBox

from geoseg.errors import BandNotFoundError
from geoseg.io import atomic_path, write_cog


def stretch_limits(stack: xr.DataArray, *, percentiles=(2.0, 98.0), max_samples: int = 1_000_000) -> np.ndarray:
    """(band, 2) low/high reflectance per band from a strided subsample."""
    ny, nx = stack.sizes["y"], stack.sizes["x"]
    step = max(1, int(np.ceil(np.sqrt(ny * nx / max_samples))))
    sample = stack[:, ::step, ::step].values.reshape(stack.sizes["band"], -1)
    lims = np.nanpercentile(sample, percentiles, axis=1).T if np.isfinite(sample).any() else np.tile([0.0, 1.0], (sample.shape[0], 1))
    lims[:, 1] = np.maximum(lims[:, 1], lims[:, 0] + 1e-6)
    return lims.astype("float32")


def to_rgb8(stack: xr.DataArray, limits: np.ndarray) -> xr.DataArray:
    """Scale to 1..255 (0 stays nodata) lazily."""
    lo = xr.DataArray(limits[:, 0], dims="band", coords={"band": stack.band})
    hi = xr.DataArray(limits[:, 1], dims="band", coords={"band": stack.band})
    scaled = ((stack - lo) / (hi - lo)).clip(0, 1) * 254 + 1
    valid = stack.notnull().all("band")
    return scaled.where(valid, 0).round().astype("uint8")


def write_quicklook(
    stack: xr.DataArray,
    cog_path: str | Path,
    png_path: str | Path | None = None,
    *,
    bands: Sequence[str] = ("red", "green", "blue"),
    geobox: GeoBox | None = None,
    png_size: int = 1024,
    overwrite: bool = False,
) -> tuple[Path, Path | None]:
    """Write an RGB (or false-colour, via ``bands``) quick-look of ``stack``."""
    missing = [b for b in bands if b not in stack.band.values]
    if missing:
        raise BandNotFoundError(
            f"quick-look band(s) {', '.join(missing)} not in the stack",
            fix="load them, or choose from: " + ", ".join(map(str, stack.band.values)),
        )
    rgb = stack.sel(band=list(bands))
    geobox = geobox or stack.odc.geobox
    rgb8 = to_rgb8(rgb, stretch_limits(rgb))
    cog = write_cog(rgb8, cog_path, geobox, dtype="uint8", nodata=0, descriptions=list(bands), overwrite=overwrite)
    png = None if png_path is None else write_png_preview(cog, png_path, size=png_size, overwrite=overwrite)
    return cog, png


def write_png_preview(cog: str | Path, png_path: str | Path, *, size: int = 1024, overwrite: bool = False) -> Path:
    """A PNG of at most ``size`` pixels on its long side, read from the COG's overviews."""
    with rasterio.open(cog) as src:
        scale = max(src.width, src.height) / size
        shape = (src.count, max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        data = src.read(out_shape=shape, resampling=rasterio.enums.Resampling.average)
        colormap = src.colormap(1) if src.count == 1 and src.colorinterp[0].name == "palette" else None
    with atomic_path(png_path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a PNG preview carries no grid
        with rasterio.open(tmp, "w", driver="PNG", width=shape[2], height=shape[1], count=shape[0], dtype=data.dtype) as dst:
            dst.write(data)
            if colormap:
                dst.write_colormap(1, colormap)
    return Path(png_path)
