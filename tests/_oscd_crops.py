"""Small real crops of OSCD cities for the training and evaluation tests.

Each crop keeps the OSCD layout: one EPSG:4326 GeoTIFF per band and date (the
band in the file name), and a change label *without georeferencing* whose grid
is that of the date-1 B02 crop. The same labels are also written as polygons
(GeoPackage, attribute ``cls`` = 1 no change / 2 change).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import rasterio.windows
from rasterio.errors import NotGeoreferencedWarning

REPO = Path(__file__).resolve().parent.parent
OSCD = REPO.parent / "shared" / "data" / "oscd"

#: city -> (row, col) of a 96 x 96 source-pixel window rich in change pixels
WINDOWS = {"bercy": (224, 48), "aguasclaras": (272, 176)}
SIZE = 96
BANDS = ("B02", "B03", "B04", "B08")


def need_oscd():
    if not (OSCD / "images").is_dir():
        pytest.skip("OSCD data not found at ../shared/data/oscd")


def _write(path: Path, data: np.ndarray, profile: dict | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if profile is None:  # no georeferencing, like the OSCD label files
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype) as dst:
                dst.write(data, 1)
        return
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def write_crop(city: str, out: Path, *, shift_labels_deg: float = 0.0) -> dict:
    """Crop ``city`` into ``out/city``; return paths: dates (2 dirs), labels, reference, polygons."""
    r, c = WINDOWS[city]
    win = rasterio.windows.Window(c, r, SIZE, SIZE)
    root = out / city
    for d in (1, 2):
        for band in BANDS:
            src_path = next((OSCD / "images" / city / f"imgs_{d}").glob(f"*_{band}.tif"))
            with rasterio.open(src_path) as src:
                data = src.read(1, window=win)
                prof = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype=data.dtype, crs=src.crs,
                            transform=rasterio.windows.transform(win, src.transform))
            _write(root / f"imgs_{d}" / f"{city}_{band}.tif", data, prof)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(OSCD / "labels" / city / "cm" / f"{city}-cm.tif") as src:
            labels = src.read(1, window=win)
    label_path = root / "labels" / f"{city}-cm.tif"
    _write(label_path, labels, None)
    reference = root / "imgs_1" / f"{city}_B02.tif"
    with rasterio.open(reference) as ref:
        transform, crs = ref.transform, ref.crs
    # the same labels as polygons
    import geopandas as gpd
    from shapely.geometry import shape
    from shapely import affinity

    geoms, values = [], []
    for geom, value in rasterio.features.shapes(labels, transform=transform):
        g = shape(geom)
        if shift_labels_deg:
            g = affinity.translate(g, xoff=shift_labels_deg)
        geoms.append(g)
        values.append(int(value))
    gpkg = root / "labels" / f"{city}-cm.gpkg"
    gpd.GeoDataFrame({"cls": values}, geometry=geoms, crs=str(crs)).to_file(gpkg, driver="GPKG")
    return {"dates": [str(root / "imgs_1"), str(root / "imgs_2")], "labels": str(label_path), "reference": str(reference),
            "polygons": str(gpkg), "n_change": int((labels == 2).sum())}


def tiny_config(crops: dict, *, labels: str = "raster", name: str = "tiny-change", **overrides) -> dict:
    """A training config (as a dict) for a tiny change model on the crops; ``overrides`` replace top-level keys."""
    scenes = []
    for city, p in crops.items():
        lab = {"path": p["labels"], "reference": p["reference"]} if labels == "raster" else {"path": p["polygons"], "attribute": "cls"}
        scenes.append({"id": city, "dates": p["dates"], "labels": lab})
    cfg = {
        "name": name,
        "task": "change",
        "bands": ["blue", "green", "red", "nir"],
        "classes": [{"name": "no-change", "color": [0, 0, 0], "values": [1]},
                    {"name": "change", "color": [255, 0, 0], "values": [2]}],
        "scenes": scenes,
        "split": {"val_groups": ["aguasclaras"]},
        "network": {"architecture": "Unet", "encoder": "mobilenet_v2",
                    "kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}},
        "sampling": {"chip_size": 64, "batch_size": 4, "steps_per_epoch": 8, "rare_class": "change", "val_tile": 64},
        "loss": {"ce": 1.0, "dice": 1.0},
        "optim": {"lr": 0.003, "epochs": 3, "patience": 3, "monitor": "f1:change", "schedule": "constant"},
        "inference": {"tile_size": 64, "halo": 8},
        "seed": 0,
    }
    cfg.update(overrides)
    return cfg
