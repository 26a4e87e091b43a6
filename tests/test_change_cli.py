"""`geoseg change` and `geoseg.change` on the demo catalog: products, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import geoseg
from geoseg.cli import main as cli
from geoseg.models import build_network, save
from tests.helpers import make_card

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "catalogs" / "demo"
PARIS = "2.315,48.805,2.350,48.840"
CHANGE_MODEL = REPO / "models" / "oscd-urban-change.json"


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    card = make_card(("blue", "green", "red", "nir", "swir16"), tile_size=128, halo=32, divisor=32, encoder="mobilenet_v2", name="seg")
    return save(build_network(card).eval(), card, d)


def run(capsys, *args) -> tuple[int, str]:
    rc = cli([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.integration
@pytest.mark.slow
def test_change_command_writes_everything(tmp_path, seg_model, capsys):
    if not CHANGE_MODEL.exists():
        pytest.skip("shipped change model not built yet")
    import pyogrio

    out = tmp_path / "paris"
    rc, err = run(capsys, "change", DEMO, out, "--bbox", PARIS, "--before", "2016", "--after", "2017",
                  "--model", seg_model, "--change-model", CHANGE_MODEL, "--min-area", 200, "--workers", 1)
    assert rc == 0, err
    dates = "2016-11-30_2017-11-07"
    for name in (f"paris_transitions_{dates}.tif", f"paris_transitions_{dates}.csv", f"paris_change_probability_{dates}.tif",
                 f"paris_change_{dates}.tif", "paris.gpkg", "run.json"):
        assert (out / name).exists(), name
    layers = dict(pyogrio.list_layers(out / "paris.gpkg"))
    assert f"seg_transitions_{dates}" in layers and f"oscd-urban-change_{dates}" in layers
    assert layers[f"seg_transition_areas_{dates}"] is None  # a non-spatial table
    with rasterio.open(out / f"paris_transitions_{dates}.tif") as ds:
        assert ds.colormap(1)[255][3] == 0 and "→" in ds.tags(1)["CLASS_1"]
    csv = (out / f"paris_transitions_{dates}.csv").read_text().splitlines()
    assert csv[0].startswith("from \\ to (ha)") and csv[-1].startswith("unknown")


def test_single_date_card_as_change_model_is_refused(tmp_path, seg_model, capsys):
    rc, err = run(capsys, "change", DEMO, tmp_path / "o", "--bbox", PARIS, "--before", "2016", "--after", "2017", "--change-model", seg_model)
    assert rc == 2 and "is single-date, but --change-model takes a bi-temporal model" in err
    assert not (tmp_path / "o").exists()


def test_bitemporal_card_as_model_is_refused(tmp_path, capsys):
    if not CHANGE_MODEL.exists():
        pytest.skip("shipped change model not built yet")
    rc, err = run(capsys, "change", DEMO, tmp_path / "o", "--bbox", PARIS, "--before", "2016", "--after", "2017", "--model", CHANGE_MODEL)
    assert rc == 2 and "is bi-temporal, but --model takes a single-date model" in err


def test_window_without_scene_is_no_data(tmp_path, seg_model, capsys):
    rc, err = run(capsys, "change", DEMO, tmp_path / "o", "--bbox", PARIS, "--before", "2016", "--after", "2019",
                  "--model", seg_model, "--workers", 1)
    assert rc == 3 and "no scene in the after window '2019-01-01/2019-12-31'" in err and "2017-11-07" in err
    assert not list((tmp_path / "o").glob("*.tif"))


def test_change_api_is_lazy_and_consistent(seg_model):
    result = geoseg.change(str(DEMO), PARIS, "2016", "2017", model=seg_model)
    assert result.pair.dates == ("2016-11-30", "2017-11-07")
    assert result.transitions.odc.geobox == result.before.odc.geobox
    table = result.table()
    px = 100 / 1e4
    codes = result.transitions.values
    assert table.valid_ha + table.unknown_ha == pytest.approx(codes.size * px)
    changed = int((result.before.values != result.after.values)[codes != 255].sum())
    assert table.changed_ha == pytest.approx(changed * px)
    assert result.probability is None
    assert np.isin(np.unique(codes), list(range(4)) + [255]).all()
