"""geoseg evaluate: scores of a hand-made prediction / label pair are known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from geoseg.metrics import confusion, monitor_value, scores

# ------------------------------------------------------------------ metrics on arrays


def test_scores_of_a_hand_made_pair():
    truth = np.array([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0], [255, 255, 0, 0, 0]], dtype="uint8")
    pred = np.array([[1, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 0, 255, 0]], dtype="uint8")
    cm = confusion(truth, pred, 2)
    # class 1: TP 3, FN 2 (0,3) (1,0), FP 1 (0,4); unlabelled and unpredicted pixels skipped
    assert cm.tolist() == [[6, 1], [2, 3]]
    s = scores(cm, ["land", "water"])
    w = s["per_class"]["water"]
    assert w["iou"] == pytest.approx(3 / 6) and w["f1"] == pytest.approx(6 / 9)
    assert w["precision"] == pytest.approx(3 / 4) and w["recall"] == pytest.approx(3 / 5)
    assert (w["tp"], w["fp"], w["fn"], w["support"], w["predicted"]) == (3, 1, 2, 5, 4)
    land = s["per_class"]["land"]
    assert land["iou"] == pytest.approx(6 / 9) and land["f1"] == pytest.approx(12 / 15)
    assert s["accuracy"] == pytest.approx(9 / 12) and s["pixels"] == 12
    assert s["mean_iou"] == pytest.approx((3 / 6 + 6 / 9) / 2)
    assert monitor_value(s, "f1:water") == pytest.approx(6 / 9) and monitor_value(s, "miou") == pytest.approx(s["mean_iou"])


def test_undefined_scores_are_none_not_zero():
    s = scores(np.array([[5, 0], [0, 0]]), ["a", "b"])
    assert s["per_class"]["b"]["iou"] is None and s["per_class"]["b"]["precision"] is None
    assert s["per_class"]["a"]["f1"] == 1.0 and s["mean_iou"] == 1.0


def test_streaming_confusion_matches_in_memory():
    from geoseg.evaluate import streaming_confusion

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (70, 90)).astype("uint8")
    truth[rng.random(truth.shape) < 0.1] = 255  # unlabelled
    ids = rng.choice(np.array([2, 5, 7, 255], dtype="uint8"), size=truth.shape)  # class ids 2, 5, 7; 255 = nodata
    lut = np.full(256, 255, dtype="uint8")
    lut[[2, 5, 7]] = [0, 1, 2]
    cm, unscored = streaming_confusion(dsa.from_array(ids, chunks=(16, 23)), truth, lut, 3)
    assert cm.tolist() == confusion(truth, lut[ids], 3).tolist()
    assert unscored == int(((truth != 255) & (ids == 255)).sum())
    keep = rng.random(truth.shape) < 0.5
    cm2, _ = streaming_confusion(dsa.from_array(ids, chunks=32), truth, lut, 3, keep)
    assert cm2.tolist() == confusion(np.where(keep, truth, 255), lut[ids], 3).tolist()


# ------------------------------------------------------------------ the whole command on a hand-made scene

ORIGIN = (450000.0, 5400000.0)


def _write(path: Path, data: np.ndarray, *, descriptions=None, nodata=None):
    prof = dict(driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0], dtype=data.dtype,
                crs="EPSG:32631", transform=Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]), nodata=nodata)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or [], 1):
            dst.set_band_description(i, d)


@pytest.fixture
def scene(tmp_path):
    """An 8 x 8 scene on a 10 m UTM grid, its labels, and the prediction the fake model makes."""
    truth = np.zeros((8, 8), dtype="int16")
    truth[0:2, 0:5] = 1  # 10 water pixels
    truth[7, :] = -1  # unlabelled row
    pred = np.zeros((8, 8), dtype="uint8")
    pred[0:2, 0:3] = 1  # 6 true positives, 4 false negatives
    pred[2, 0:2] = 1  # 2 false positives
    pred[7, :] = 1  # on unlabelled pixels: must not count
    invalid = np.zeros((8, 8), bool)
    invalid[5, 5] = True  # the model has no prediction here (a labelled not-water pixel)
    # imagery: MNDWI > 0 on 8 of the 10 water pixels, < 0 elsewhere
    green = np.full((8, 8), 0.05, dtype="float32")
    swir = np.full((8, 8), 0.20, dtype="float32")
    swir[0:2, 0:4] = 0.01
    _write(tmp_path / "image.tif", np.stack([green, swir]), descriptions=["B3", "B11"])
    _write(tmp_path / "labels.tif", truth[None])
    return {"dir": tmp_path, "truth": truth, "pred": pred, "invalid": invalid}


@pytest.fixture
def water_card(tmp_path):
    from geoseg.models import ClassInfo, ModelCard, Normalization, build_network, save

    card = ModelCard(
        name="hand-water", version="0.0.1", architecture="Unet", encoder="mobilenet_v2",
        architecture_kwargs={"encoder_depth": 3, "decoder_channels": [8, 8, 8]}, bands=("green", "swir16"),
        normalization=Normalization(mean=(0.05, 0.1), std=(0.02, 0.05)),
        classes=(ClassInfo(id=0, name="not-water", color=(200, 200, 200)), ClassInfo(id=1, name="water", color=(0, 0, 255))),
        resolution=10.0, tile_size=16, halo=4, size_divisor=8, weights="hand-water.safetensors",
    )
    import torch

    torch.manual_seed(0)
    return save(build_network(card), card, tmp_path / "model")


def _eval_yaml(d: Path) -> Path:
    cfg = {
        "title": "hand-made",
        "classes": [{"name": "water", "values": [1]}, {"name": "not-water", "values": [0]}],
        "ignore_values": [-1],
        "scenes": [{"id": "hand", "dates": [str(d / "image.tif")], "labels": {"path": str(d / "labels.tif")}}],
        "baselines": [{"name": "MNDWI > 0", "rule": "mndwi", "threshold": 0.0, "positive_class": "water"}],
    }
    path = d / "hand.eval.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_evaluate_command_known_scores(scene, water_card, monkeypatch, capsys):
    import xarray as xr

    import geoseg.inference
    from geoseg.cli import main

    def fake_predict(stack, model, **kw):
        assert stack.odc.geobox.shape == (8, 8) and stack.odc.geobox.resolution.x == 10
        probs = np.stack([(scene["pred"] == 0), (scene["pred"] == 1)]).astype("float32")
        probs[:, scene["invalid"]] = np.nan
        coords = {k: v for k, v in stack.coords.items() if set(v.dims) <= {"y", "x"}}
        return xr.DataArray(dsa.from_array(probs, chunks=(2, 3, 8)), dims=("class", "y", "x"), coords=coords).assign_coords({"class": [0, 1]})

    monkeypatch.setattr(geoseg.inference, "predict", fake_predict)
    cfg = _eval_yaml(scene["dir"])
    assert main(["evaluate", str(water_card), "--config", str(cfg)]) == 0
    report = json.loads((scene["dir"] / "hand.eval.json").read_text())
    s = report["scenes"][0]
    assert s["labelled_pixels"] == 56 and s["unscored_pixels"] == 1
    w = s["model"]["per_class"]["water"]
    assert (w["tp"], w["fp"], w["fn"]) == (6, 2, 4)
    assert w["iou"] == pytest.approx(0.5) and w["f1"] == pytest.approx(2 / 3)
    assert w["precision"] == pytest.approx(0.75) and w["recall"] == pytest.approx(0.6)
    nw = s["model"]["per_class"]["not-water"]
    assert (nw["tp"], nw["fp"], nw["fn"]) == (43, 4, 2) and nw["iou"] == pytest.approx(43 / 49)
    assert s["model"]["confusion"] == [[43, 2], [4, 6]]  # rows truth (not-water, water), columns prediction
    # the rule, on the same 55 pixels
    b = s["baselines"]["MNDWI > 0"]
    assert b["pixels"] == s["model"]["pixels"] == 55
    bw = b["per_class"]["water"]
    assert (bw["tp"], bw["fp"], bw["fn"]) == (8, 0, 2) and bw["f1"] == pytest.approx(16 / 18)
    assert report["overall"]["model"]["per_class"]["water"]["iou"] == pytest.approx(0.5)
    md = (scene["dir"] / "hand.eval.md").read_text()
    assert "| hand | model | 0.5000 | 0.6667 | 0.7500 | 0.6000 | 10 | 8 |" in md
    assert "| hand | MNDWI > 0 | 0.8000 | 0.8889 | 1.0000 | 0.8000 | 10 | 8 |" in md
    assert report["command"].startswith("geoseg evaluate ") and "--config" in report["command"]
    assert "overall water: IoU 0.5" in capsys.readouterr().out


def test_evaluate_real_path_is_repeatable(scene, water_card, tmp_path):
    """Through the real tiled predictor: the same command gives the same numbers."""
    from geoseg.cli import main

    cfg = _eval_yaml(scene["dir"])
    runs = []
    for out in ("a", "b"):
        assert main(["evaluate", str(water_card), "--config", str(cfg), "--out", str(tmp_path / out)]) == 0
        r = json.loads((tmp_path / out / "hand.eval.json").read_text())
        assert r["scenes"][0]["labelled_pixels"] == 56
        runs.append((r["overall"], r["scenes"]))
    assert runs[0] == runs[1]


def test_evaluate_with_options_instead_of_config(scene, water_card, tmp_path):
    from geoseg.cli import main

    d = scene["dir"]
    assert main(["evaluate", str(water_card), "--image", str(d / "image.tif"), "--labels", str(d / "labels.tif"),
                 "--values", "water=1", "--values", "not-water=0", "--ignore", "-1", "--out", str(tmp_path / "o")]) == 0
    r = json.loads((tmp_path / "o" / "hand-water.eval.json").read_text())
    assert r["scenes"][0]["labelled_pixels"] == 56 and r["baselines"] == {}


def test_evaluate_bad_input(scene, water_card, tmp_path, capsys):
    from geoseg.cli import main

    d = scene["dir"]
    # a label value the config does not map
    assert main(["evaluate", str(water_card), "--image", str(d / "image.tif"), "--labels", str(d / "labels.tif"),
                 "--values", "water=1", "--values", "not-water=0"]) == 2
    err = capsys.readouterr().err
    assert "-1 (8 px)" in err and "fix:" in err
    # a class the model does not have
    assert main(["evaluate", str(water_card), "--image", str(d / "image.tif"), "--labels", str(d / "labels.tif"),
                 "--values", "cloud=1"]) == 2
    assert "class 'cloud', which the model does not have" in capsys.readouterr().err
    # neither --config nor --image
    assert main(["evaluate", str(water_card)]) == 2
