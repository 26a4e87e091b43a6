"""Change detection: pairing scenes, transitions, areas, unknown pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoseg.compare import (UNKNOWN, ChangeError, change_probability, pair_scenes, transition_codes, transition_colormap,
                           transition_names, transition_table)
from tests.helpers import make_card, make_stack

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "catalogs" / "demo"
PARIS = "2.315,48.805,2.350,48.840"


def class_raster(values: np.ndarray):
    return make_stack(values[None].astype("float32"), ["class"]).isel(band=0).astype("uint8")


@pytest.fixture()
def card():
    return make_card(classes=3)  # ids 0, 1, 2; nodata 255


def test_one_square_changes(card):
    before = np.zeros((60, 80), "uint8")
    before[:, 40:] = 1
    after = before.copy()
    after[10:20, 5:15] = 2  # a 10 x 10 square: class 0 -> class 2
    b, a = class_raster(before), class_raster(after)
    codes = transition_codes(b, a, card).values
    K = 3
    no_change = {i * K + i for i in range(K)}
    changed = ~np.isin(codes, list(no_change))
    assert changed.sum() == 100
    assert (codes[10:20, 5:15] == 0 * K + 2).all()
    table = transition_table(transition_codes(b, a, card), card)
    px_ha = 10 * 10 / 1e4
    assert table.hectares[0, 2] == pytest.approx(100 * px_ha)
    assert table.changed_ha == pytest.approx(100 * px_ha)
    assert table.valid_ha == pytest.approx(60 * 80 * px_ha)  # transition areas sum to the valid area
    assert table.unknown_ha == 0
    assert transition_names(card)[2] == "class 0 → class 2"
    assert transition_names(card)[4] == "class 1 (no change)"


def test_unknown_pixels_are_neither_change_nor_no_change(card):
    before = np.ones((30, 30), "uint8")
    after = np.ones((30, 30), "uint8")
    before[0:5, :] = card.nodata_class  # nodata on date 1
    after[:, 0:3] = card.nodata_class  # cloud/nodata on date 2
    after[20:25, 20:25] = 0
    codes = transition_codes(class_raster(before), class_raster(after), card)
    table = transition_table(codes, card)
    unknown = 5 * 30 + 3 * 25
    assert (codes.values == UNKNOWN).sum() == unknown
    assert table.unknown_ha == pytest.approx(unknown * 100 / 1e4)
    assert table.valid_ha + table.unknown_ha == pytest.approx(30 * 30 * 100 / 1e4)
    assert table.changed_ha == pytest.approx(25 * 100 / 1e4)


def test_transition_colours_and_rows(card):
    cmap = transition_colormap(card)
    assert cmap[UNKNOWN][3] == 0
    from geoseg.compare import CHANGE_COLORS

    changes = [cmap[c][:3] for c in range(9) if c // 3 != c % 3]
    assert len(set(changes)) == 6 and set(changes) <= set(CHANGE_COLORS)  # each change its own strong colour
    assert cmap[4][:3] == tuple(int(255 - 0.35 * (255 - v)) for v in card.classes[1].color)  # no change: faded class colour
    rows = transition_table(transition_codes(class_raster(np.zeros((4, 4), "uint8")), class_raster(np.ones((4, 4), "uint8")), card), card).rows()
    assert {r["from_class"] for r in rows} == {"class 0", "class 1", "class 2"} and len(rows) == 9
    assert [r for r in rows if r["area_ha"] > 0] == [{"from_class": "class 0", "to_class": "class 1", "changed": 1, "area_ha": 0.16}]


def test_change_probability_needs_a_bitemporal_card(card):
    with pytest.raises(ChangeError, match="single-date"):
        change_probability(None, card)


def test_pair_scenes_on_the_demo_catalog():
    pair = pair_scenes(str(DEMO), PARIS, "2016", "2017")
    assert [it.id for it in pair.before] == ["S2A_31UDQ_20161130_0_L1C"]
    assert [it.id for it in pair.after] == ["S2_31UDQ_20171107_0_L1C"]
    assert pair.dates == ("2016-11-30", "2017-11-07")


def test_window_without_scene_names_nearest_dates():
    from geoseg.compare import NoSceneError

    with pytest.raises(NoSceneError) as err:
        pair_scenes(str(DEMO), PARIS, "2016", "2019")
    msg = str(err.value)
    assert "after window '2019'" in msg and "2017-11-07" in msg


def test_same_scene_twice_is_refused():
    with pytest.raises(ChangeError, match="both chose scene S2A_31UDQ_20161130_0_L1C"):
        pair_scenes(str(DEMO), PARIS, "2016", "2016-11")


def test_grids_that_do_not_overlap(card):
    a = class_raster(np.zeros((10, 10), "uint8"))
    b = make_stack(np.zeros((1, 10, 10), "float32"), ["class"], resolution=20).isel(band=0).astype("uint8")
    with pytest.raises(ChangeError, match="not on the same grid"):
        transition_codes(a, b, card)


def test_changed_square_is_one_polygon_with_classes_and_area(card):
    from geoseg.change_vectors import transition_frame

    before = np.zeros((60, 80), "uint8")
    before[:, 40:] = 1
    after = before.copy()
    after[10:20, 5:15] = 2  # 10 x 10 px of class 0 became class 2
    after[30:34, 50:53] = 0  # and 4 x 3 px of class 1 became class 0
    b, a = class_raster(before), class_raster(after)
    conf_b = make_stack(np.full((1, 60, 80), 0.9, "float32"), ["c"]).isel(band=0)
    conf_a = make_stack(np.full((1, 60, 80), 0.6, "float32"), ["c"]).isel(band=0)
    gdf = transition_frame(transition_codes(b, a, card), card, conf_b, conf_a)
    assert len(gdf) == 2
    square = gdf[gdf["to_class"] == "class 2"].iloc[0]
    assert square["from_class"] == "class 0" and square["area_m2"] == 100 * 100.0
    assert square.geometry.area == pytest.approx(100 * 100.0)
    assert square["confidence_before"] == pytest.approx(0.9) and square["confidence_after"] == pytest.approx(0.6)
    other = gdf[gdf["to_class"] == "class 0"].iloc[0]
    assert other["from_class"] == "class 1" and other["area_m2"] == 12 * 100.0
    assert gdf.crs.to_epsg() == 32631 and gdf.geometry.is_valid.all()
