"""Small builders shared by tests: synthetic geoboxed stacks and tiny model cards."""

from __future__ import annotations

import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.xr import wrap_xr

from geoseg.models import ClassInfo, ModelCard, Normalization


def make_stack(values: np.ndarray, bands, *, resolution: float = 10.0, crs: str = "EPSG:32631", chunks: int | None = 64) -> xr.DataArray:
    """A (band, y, x) or (time, band, y, x) DataArray on a UTM grid at ``resolution``."""
    ny, nx = values.shape[-2:]
    gbox = GeoBox.from_bbox((450000, 5400000 - ny * resolution, 450000 + nx * resolution, 5400000), crs=crs, resolution=resolution, tight=True)
    assert tuple(gbox.shape) == (ny, nx)
    lead = ("band",) if values.ndim == 3 else ("time", "band")
    template = wrap_xr(np.zeros((ny, nx), dtype="float32"), gbox)
    coords = {"band": list(bands), **{k: v for k, v in template.coords.items()}}
    da = xr.DataArray(values.astype("float32"), dims=lead + ("y", "x"), coords=coords)
    if chunks:
        da = da.chunk({"y": chunks, "x": chunks})
    return da


def make_card(bands=("red", "nir"), *, time_steps: int = 1, tile_size: int = 32, halo: int = 8, divisor: int = 1,
              classes: int = 2, architecture: str = "Unet", encoder: str = "resnet18", **kw) -> ModelCard:
    n = len(bands) * time_steps
    fields = dict(
        name="test-model", version="0.0.1", architecture=architecture, encoder=encoder, bands=tuple(bands), time_steps=time_steps,
        normalization=Normalization(mean=tuple([0.1] * n), std=tuple([0.05] * n)),
        classes=tuple(ClassInfo(id=i, name=f"class {i}", color=(40 * i % 256, 200, 255 - 60 * i % 256)) for i in range(classes)),
        resolution=10.0, tile_size=tile_size, halo=halo, size_divisor=divisor, weights="test-model.safetensors",
        task="change" if time_steps == 2 else "segmentation",
    )
    fields.update(kw)
    return ModelCard(**fields)


class Recording:
    """An array-like source (as a lazily opened COG) that records the windows read from it."""

    def __init__(self, values: np.ndarray):
        self.values, self.shape, self.dtype, self.ndim, self.reads = values, values.shape, values.dtype, values.ndim, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.values[key]

    def pixels_read(self) -> int:
        return sum(np.empty(self.shape, dtype=bool)[k].size for k in self.reads)
