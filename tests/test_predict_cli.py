"""`geoseg predict` end to end through the loopback servers, and every bad
model input through the CLI: a clear message, a non-zero exit, no traceback,
no partial file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
import torch
from rio_cogeo.cogeo import cog_validate

import geoseg
from geoseg.cli import main as cli
from geoseg.models import build_network, save
from tests.helpers import make_card

REPO = Path(__file__).resolve().parent.parent
PARIS = "2.315,48.805,2.350,48.840"
BANDS = ("blue", "green", "red", "nir", "swir16")


@pytest.fixture(scope="module")
def servers():
    with geoseg.LoopbackServers(REPO / "catalogs" / "demo") as srv:
        yield srv


@pytest.fixture()
def card_path(tmp_path) -> Path:
    """A small real smp network saved as card + safetensors (weights seeded, not trained:
    this tests the machinery, not accuracy)."""
    torch.manual_seed(0)
    card = make_card(BANDS, tile_size=128, halo=32, divisor=32, encoder="mobilenet_v2", name="tiny-unet")
    return save(build_network(card).eval(), card, tmp_path / "model")


def run(capsys, *args) -> tuple[int, str]:
    code = cli([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.integration
def test_predict_cli_writes_valid_cogs(servers, card_path, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run(capsys, "predict", card_path, servers.stac_url, out, "--bbox", PARIS, "--datetime", "2016", "--device", "cpu")
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["S2A_31UDQ_20161130_0_L1C_tiny-unet_class.tif", "S2A_31UDQ_20161130_0_L1C_tiny-unet_confidence.tif"]
    for name in names:
        assert cog_validate(str(out / name))[0]
        with rasterio.open(out / name) as ds:
            assert ds.crs.to_epsg() == 32631 and ds.res == (10.0, 10.0)
            assert ds.tags()["stac_items"] == "S2A_31UDQ_20161130_0_L1C"
    # again: refused without --overwrite, nothing changed
    code, err = run(capsys, "predict", card_path, servers.stac_url, out, "--bbox", PARIS, "--datetime", "2016")
    assert code == 2 and "already exists" in err


def test_missing_weights(card_path, tmp_path, capsys):
    card_path.with_suffix(".safetensors").unlink()
    code, err = run(capsys, "predict", card_path, "catalogs/demo", tmp_path / "o")
    assert code == 2 and "does not exist" in err and "safetensors" in err


def test_corrupt_weights(card_path, tmp_path, capsys):
    w = card_path.with_suffix(".safetensors")
    w.write_bytes(w.read_bytes()[:1000])
    code, err = run(capsys, "predict", card_path, REPO / "catalogs" / "demo", tmp_path / "o", "--bbox", PARIS, "--datetime", "2016")
    assert code == 2 and "sha256" in err
    card = json.loads(card_path.read_text())
    card["weights_sha256"] = None  # without the hash, the reader itself must refuse it
    card_path.write_text(json.dumps(card))
    code, err = run(capsys, "predict", card_path, REPO / "catalogs" / "demo", tmp_path / "o", "--bbox", PARIS, "--datetime", "2016")
    assert code == 2 and "not a readable safetensors file" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_card_that_fails_validation_names_the_field(card_path, tmp_path, capsys):
    card = json.loads(card_path.read_text())
    card["tile_size"] = 100
    card_path.write_text(json.dumps(card))
    code, err = run(capsys, "predict", card_path, "catalogs/demo", tmp_path / "o")
    assert code == 2 and "tile_size 100 is not a multiple of size_divisor 32 (nearest: 96 or 128)" in err
    card["tile_size"] = 128
    card["colour"] = "typo"
    card_path.write_text(json.dumps(card))
    code, err = run(capsys, "predict", card_path, "catalogs/demo", tmp_path / "o")
    assert code == 2 and "'colour'" in err
    card_path.write_text("{not json")
    code, err = run(capsys, "predict", card_path, "catalogs/demo", tmp_path / "o")
    assert code == 2 and "not valid JSON" in err


def test_weights_that_do_not_match_the_architecture(card_path, tmp_path, capsys):
    card = json.loads(card_path.read_text())
    card["encoder"] = "resnet18"
    card["weights_sha256"] = None
    card_path.write_text(json.dumps(card))
    code, err = run(capsys, "predict", card_path, REPO / "catalogs" / "demo", tmp_path / "o", "--bbox", PARIS, "--datetime", "2016")
    assert code == 2 and "do not fit the card's network" in err


def test_stack_without_the_model_bands(tmp_path, capsys):
    torch.manual_seed(0)
    card = make_card(("red", "thermal"), tile_size=64, halo=16, divisor=32, encoder="mobilenet_v2", name="thermal")
    path = save(build_network(card).eval(), card, tmp_path / "m")
    code, err = run(capsys, "predict", path, REPO / "catalogs" / "demo", tmp_path / "o", "--bbox", PARIS, "--datetime", "2016")
    assert code == 2 and "'thermal' not found" in err and "swir16" in err


def test_unknown_device(card_path, tmp_path, capsys):
    code, err = run(capsys, "predict", card_path, REPO / "catalogs" / "demo", tmp_path / "o", "--bbox", PARIS,
                    "--datetime", "2016", "--device", "tpu")
    assert code == 2 and "unknown device 'tpu'" in err


def test_bad_gdal_cache_setting(card_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEOSEG_GDAL_CACHEMAX_MB", "64MB")
    code, err = run(capsys, "predict", card_path, REPO / "catalogs" / "demo", tmp_path / "o", "--bbox", PARIS, "--datetime", "2016",
                    "--device", "cpu")
    assert code == 2 and "GEOSEG_GDAL_CACHEMAX_MB='64MB' is not a whole number" in err and "GEOSEG_GDAL_CACHEMAX_MB=64" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
