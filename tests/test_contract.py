"""The band contract: every refusal, and reordering."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.contract import ContractError, conform
from geoseg.models import Model
from geoseg.inference import predict
from tests.helpers import make_card, make_stack
from tests.test_predict_seams import FakeConvNet, random_scene


@pytest.fixture()
def card():
    return make_card(("red", "nir", "swir16"), tile_size=32, halo=8)


@pytest.fixture()
def values():
    return random_scene((60, 50), bands=3)


def test_bands_in_another_order_give_identical_output(card, values):
    model = Model(card=card, network=FakeConvNet(3, 2).eval())
    ordered = make_stack(values, ["red", "nir", "swir16"])
    shuffled = make_stack(values[[2, 0, 1]], ["swir16", "red", "nir"])
    extra = make_stack(np.concatenate([values, values[:1] * 0.5]), ["red", "nir", "swir16", "blue"])
    a = predict(ordered, model, device="cpu").values
    np.testing.assert_array_equal(a, predict(shuffled, model, device="cpu").values)
    np.testing.assert_array_equal(a, predict(extra, model, device="cpu").values)


def test_bands_matched_by_common_name_coord(card, values):
    stack = make_stack(values, ["B04", "B08", "B11"]).assign_coords(common_name=("band", ["red", "nir", "swir16"]))
    assert list(conform(stack, card).band.values) == ["red", "nir", "swir16"]


def test_missing_band_lists_missing_and_available(card, values):
    stack = make_stack(values[:2], ["red", "blue"])
    with pytest.raises(ContractError) as err:
        conform(stack, card)
    msg = str(err.value)
    assert "missing: nir, swir16" in msg and "the stack has: red, blue" in msg and "geoseg.load" in msg


def test_far_resolution_is_refused_or_resampled(card, values):
    coarse = make_stack(values, ["red", "nir", "swir16"], resolution=30.0)
    with pytest.raises(ContractError, match="30 m; model 'test-model' was trained at 10 m"):
        conform(coarse, card)
    resampled = conform(coarse, card, resample=True)
    assert abs(resampled.odc.geobox.resolution.x) == 10
    assert resampled.sizes["y"] == 3 * coarse.sizes["y"]
    near = make_stack(values, ["red", "nir", "swir16"], resolution=11.0)  # within 25 %: accepted as is
    assert conform(near, card).sizes == near.sizes


def test_geographic_grid_is_refused(card, values):
    stack = make_stack(values, ["red", "nir", "swir16"], resolution=10.0)
    from odc.geo.xr import assign_crs

    with pytest.raises(ContractError, match="geographic"):
        conform(assign_crs(stack, "EPSG:4326"), card)


def test_unscaled_digital_numbers_are_refused(card, values):
    dn = make_stack(values * 10000, ["red", "nir", "swir16"])
    with pytest.raises(ContractError) as err:
        conform(dn, card)
    msg = str(err.value)
    assert "unscaled digital numbers" in msg and "-0.5..3 (reflectance)" in msg and "0.0001" in msg


def test_no_valid_pixels_is_refused(card, values):
    with pytest.raises(ContractError, match="no valid pixels"):
        conform(make_stack(values * np.nan, ["red", "nir", "swir16"]), card)


def test_single_date_model_refuses_two_dates(card, values):
    two = make_stack(np.stack([values, values]), ["red", "nir", "swir16"])
    with pytest.raises(ContractError, match="single-date but the stack has 2 dates"):
        conform(two, card)
    one = make_stack(values[None], ["red", "nir", "swir16"])  # a time axis of one is fine
    assert conform(one, card).dims == ("band", "y", "x")


def test_bitemporal_model_refuses_one_date(values):
    card = make_card(("red", "nir", "swir16"), time_steps=2)
    with pytest.raises(ContractError, match="bi-temporal and needs a stack with exactly 2 dates"):
        conform(make_stack(values, ["red", "nir", "swir16"]), card)
    ok = conform(make_stack(np.stack([values, values]), ["swir16", "red", "nir"]), card)
    assert ok.dims == ("time", "band", "y", "x") and list(ok.band.values) == ["red", "nir", "swir16"]


def test_region_smaller_than_one_tile_gives_a_correct_tiny_output(card):
    model = Model(card=card, network=FakeConvNet(3, 2).eval())
    tiny = make_stack(random_scene((3, 5), bands=3), ["red", "nir", "swir16"])
    probs = predict(tiny, model, device="cpu").values
    assert probs.shape == (2, 3, 5) and np.isfinite(probs).all()


def test_value_check_reads_only_its_sample_windows(card):
    """On a lazily read source, the value check reads its five 256² windows, not the chunks under them."""
    import dask.array as dsa

    from geoseg.fetch import scale_dn
    from tests.helpers import Recording

    dn = np.round(random_scene((600, 640), bands=3) * 10000).astype("uint16")
    source = Recording(dn)
    stack = make_stack(dn.astype("float32"), ["red", "nir", "swir16"], chunks=None)
    lazy = scale_dn(stack.copy(data=dsa.from_array(source, chunks=(3, 600, 640))), 1e-4, 0.0, 0)
    conform(lazy, card)
    assert source.pixels_read() == 5 * 3 * 256 * 256  # the whole 600 x 640 chunk is 7x more
    with pytest.raises(ContractError, match="unscaled digital numbers"):
        conform(scale_dn(stack.copy(data=dsa.from_array(Recording(dn), chunks=(3, 300, 320))), 1.0, 0.0, 0), card)
