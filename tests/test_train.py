"""geoseg train: a tiny change model trained for a few steps on small real OSCD
crops, from raster labels and from the same labels as polygons; bad input is
refused before any training starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests._oscd_crops import need_oscd, tiny_config, write_crop
from geoseg.errors import BandNotFoundError
from geoseg.labels import LabelError
from geoseg.train import TrainError, train
from geoseg.train_config import ConfigError, TrainConfig


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    need_oscd()
    root = tmp_path_factory.mktemp("oscd-crops")
    return {city: write_crop(city, root) for city in ("bercy", "aguasclaras")}


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    """The tiny model trained twice: from raster labels and from polygons."""
    out = {}
    for kind in ("raster", "polygons"):
        d = tmp_path_factory.mktemp(f"model-{kind}")
        cfg = TrainConfig.model_validate(tiny_config(crops, labels=kind))
        out[kind] = train(cfg, d, root=Path("."), command=f"test ({kind})", threads=1, progress=False, log=lambda s: None)
    return out


@pytest.mark.parametrize("kind", ["raster", "polygons"])
def test_tiny_training_writes_a_loadable_model(trained, crops, kind):
    res = trained[kind]
    # the loss falls
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # files and card
    assert res.card_path.exists() and res.weights_path.exists()
    card = json.loads(res.card_path.read_text())
    assert card["bands"] == ["blue", "green", "red", "nir"] and card["time_steps"] == 2
    assert [c["name"] for c in card["classes"]] == ["no-change", "change"]
    assert len(card["normalization"]["mean"]) == 8 and all(s > 0 for s in card["normalization"]["std"])
    assert card["size_divisor"] == 8 and card["tile_size"] == 64 and card["halo"] == 8 and card["resolution"] == 10
    prov = card["provenance"]
    assert prov["command"] == f"test ({kind})"
    assert prov["config"]["name"] == "tiny-change"
    files = [f for d in prov["data"] for f in d["files"]]
    assert files and all(len(f["sha256"]) == 64 for f in files)
    assert any(f["path"].endswith(".gpkg" if kind == "polygons" else "-cm.tif") for f in files)
    assert prov["validation"]["monitor"] == "f1:change" and "per_class" in prov["validation"]["scores"]
    assert prov["split"] == {"train": ["bercy"], "val": ["aguasclaras"], "val_groups": ["aguasclaras"]}
    # the CPU layout was measured after training (the config says auto) and recorded with its timings
    assert card["cpu_memory_format"] in ("contiguous", "channels_last")
    assert prov["cpu_memory_format"].startswith(card["cpu_memory_format"] + ": measured here, one 64² tile")

    # geoseg.models.load + the tiled predictor run on the result
    from geoseg.models import load
    from geoseg.inference import classify, predict
    from geoseg.scenes import RasterSource, Scene, open_scene

    model = load(res.card_path)
    scene = Scene(id="bercy", group="bercy", dates=tuple(RasterSource(Path(p)) for p in crops["bercy"]["dates"]))
    opened = open_scene(scene, model.card.bands, resolution=model.card.resolution)
    probs = predict(opened.stack, model, device="cpu")
    classes, confidence = classify(probs, model.card)
    cls = classes.values
    assert cls.shape == tuple(opened.geobox.shape.yx)
    assert set(np.unique(cls)) <= {0, 1, model.card.nodata_class}
    assert np.isfinite(confidence.values[cls != model.card.nodata_class]).all()


def test_raster_and_polygon_labels_agree(crops):
    from geoseg.scenes import open_scene, scene_labels

    cfg_r = TrainConfig.model_validate(tiny_config(crops, labels="raster"))
    cfg_v = TrainConfig.model_validate(tiny_config(crops, labels="polygons"))
    for sr, sv in zip(cfg_r.scenes, cfg_v.scenes):
        o = open_scene(sr.build(Path(".")), cfg_r.bands)
        a = scene_labels(o, cfg_r.labelmap())
        b = scene_labels(open_scene(sv.build(Path(".")), cfg_v.bands), cfg_v.labelmap())
        assert (a == b).mean() > 0.99
        assert (a == 1).sum() > 0


def test_same_seed_same_weights(trained, crops, tmp_path):
    """A fixed seed makes a CPU run repeatable: the same config trains the same weights."""
    cfg = TrainConfig.model_validate(tiny_config(crops, labels="raster"))
    again = train(cfg, tmp_path, root=Path("."), command="test (raster)", threads=1, progress=False, log=lambda s: None)
    first = trained["raster"]
    assert [h["loss"] for h in again.history] == [h["loss"] for h in first.history]
    assert json.loads(again.card_path.read_text())["weights_sha256"] == json.loads(first.card_path.read_text())["weights_sha256"]


# ------------------------------------------------------------------ bad input, refused before training

@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if a training step would start."""
    import geoseg.train

    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(geoseg.train, "ChipSampler", boom)


def _train(cfg: dict, tmp_path):
    out = tmp_path / "out"
    try:
        return train(TrainConfig.model_validate(cfg), out, root=Path("."), progress=False, log=lambda s: None)
    finally:
        assert not out.exists() or not any(out.iterdir())


def test_label_values_not_in_config(crops, tmp_path, no_training):
    cfg = tiny_config(crops)
    cfg["classes"][1]["values"] = [3]
    with pytest.raises(LabelError, match=r"not in the config's classes: 2 \(") as e:
        _train(cfg, tmp_path)
    assert "ignore_values" in str(e.value)


def test_empty_class(crops, tmp_path, no_training):
    cfg = tiny_config(crops)
    cfg["classes"].append({"name": "water", "color": [0, 0, 255], "values": [7]})
    with pytest.raises(LabelError, match="'water' never occurs in the training labels"):
        _train(cfg, tmp_path)


def test_labels_not_overlapping_imagery(crops, tmp_path, no_training):
    # georeferenced raster labels five degrees away
    cfg = tiny_config(crops)
    cfg["scenes"][0]["labels"] = {"path": crops["bercy"]["labels"].replace("bercy-cm.tif", "far.tif")}
    import rasterio
    from affine import Affine

    with rasterio.open(crops["bercy"]["reference"]) as ref:
        prof = ref.profile
        prof.update(dtype="uint8", transform=Affine.translation(5.0, 0) @ ref.transform)  # five degrees east
        with rasterio.open(cfg["scenes"][0]["labels"]["path"], "w", **prof) as dst:
            dst.write(np.ones((1, ref.height, ref.width), dtype="uint8"))
    with pytest.raises(LabelError, match="do not overlap the imagery of scene 'bercy'"):
        _train(cfg, tmp_path)


def test_polygons_not_overlapping_imagery(crops, tmp_path, no_training):
    far = write_crop("bercy", tmp_path / "far", shift_labels_deg=3.0)
    cfg = tiny_config(crops, labels="polygons")
    cfg["scenes"][0]["labels"] = {"path": far["polygons"], "attribute": "cls"}
    with pytest.raises(LabelError, match="overlaps the imagery"):
        _train(cfg, tmp_path)


def test_chip_size_not_divisible_names_nearest(crops, tmp_path, no_training):
    cfg = tiny_config(crops)
    cfg["sampling"]["chip_size"] = 100
    with pytest.raises(TrainError, match="chip_size 100 is not a multiple of 8") as e:
        _train(cfg, tmp_path)
    assert "use 96 or 104" in str(e.value)


def test_band_the_data_lacks(crops, tmp_path, no_training):
    cfg = tiny_config(crops, bands=["blue", "green", "red", "swir16"])
    with pytest.raises(BandNotFoundError, match="'swir16' not found") as e:
        _train(cfg, tmp_path)
    assert "blue (B02)" in str(e.value) and "nir (B08)" in str(e.value)


def test_unknown_band_name_and_unknown_key(crops, tmp_path):
    cfg = tiny_config(crops)
    cfg["sampling"]["chip_sise"] = 64
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "chip_sise" in l)
    with pytest.raises(ConfigError, match=rf"bad.yaml:{line}: unknown key 'sampling.chip_sise'"):
        train(path, tmp_path / "out")
    cfg = tiny_config(crops, bands=["blue", "infrared"])
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match="band 'infrared' is not a known band"):
        train(path, tmp_path / "out")


def test_cli_bad_config_exit_2(crops, tmp_path, capsys):
    from geoseg.cli import main

    cfg = tiny_config(crops)
    cfg["split"] = {"val_groups": ["atlantis"]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "atlantis" in err and "Traceback" not in err and "fix:" in err


def test_stac_item_scene_matches_raster_files():
    """A scene given as STAC items (the demo catalog) lands on the same grid as the raw OSCD files."""
    need_oscd()
    from tests._oscd_crops import OSCD, REPO
    from geoseg.scenes import RasterLabels, RasterSource, Scene, StacSource, open_scene, scene_labels
    from geoseg.labels import LabelMap

    items = REPO / "catalogs" / "demo" / "sentinel-2-l1c"
    stac = Scene(id="paris", group="paris", dates=(
        StacSource(str(items / "S2A_31UDQ_20161130_0_L1C" / "S2A_31UDQ_20161130_0_L1C.json")),
        StacSource(str(items / "S2_31UDQ_20171107_0_L1C" / "S2_31UDQ_20171107_0_L1C.json"))),
        labels=RasterLabels(path=REPO / "catalogs" / "demo" / "labels" / "paris-cm.tif"))
    raw = Scene(id="paris", group="paris", dates=(RasterSource(OSCD / "images" / "paris" / "imgs_1"),
                                                  RasterSource(OSCD / "images" / "paris" / "imgs_2")))
    a, b = open_scene(stac, ["red", "nir"]), open_scene(raw, ["red", "nir"])
    assert a.geobox == b.geobox and a.stack.dims == b.stack.dims == ("time", "band", "y", "x")
    va, vb = a.stack.values, b.stack.values
    both = np.isfinite(va) & np.isfinite(vb)
    assert both.mean() > 0.9 and np.median(np.abs(va[both] - vb[both])) < 0.01
    y = scene_labels(a, LabelMap(("no-change", "change"), ((1, 0), (2, 1))))
    assert (y == 1).sum() > 400
