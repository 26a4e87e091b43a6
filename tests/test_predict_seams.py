"""Tiled + stitched inference equals one whole-image pass.

A fake, translation-equivariant model (two fixed 3x3 convolutions, receptive
field radius 2 <= halo // 2) must give exactly the whole-image result
everywhere, for tile sizes that do and do not divide the scene, for scenes
smaller than one tile, and around nodata holes. Any shift, flip, seam or
dropped edge tile shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from geoseg.models import Model, ModelCard
from geoseg.inference import classify, normalize, predict
from tests.helpers import make_card, make_stack


class FakeConvNet(torch.nn.Module):
    """One fixed 5x5 convolution with zero padding (receptive radius 2): translation-equivariant.

    A single layer on purpose: its only padding is of the input, which is
    exactly what zero-filled pixels beyond the scene are in a tile. (With two
    layers, hidden units just outside the scene see scene pixels in a tile but
    are zero-padded in a whole-image pass, so even a perfect stitcher differs
    at the scene border; the real-network seam test covers deep networks.)
    """

    def __init__(self, in_channels: int, classes: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(in_channels, classes, 5, padding=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.conv(x)


def whole_image(values: np.ndarray, model: Model) -> np.ndarray:
    """The reference: the same normalization, one forward over the whole scene."""
    x, valid = normalize(values.reshape((-1,) + values.shape[-2:]).astype("float32"), model.card)
    with torch.inference_mode():
        p = torch.softmax(model.network(torch.from_numpy(x)[None]), dim=1)[0].numpy()
    p[:, ~valid] = np.nan
    return p


def random_scene(shape, bands=2, holes=False, seed=1):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.02, 0.4, size=(bands,) + shape).astype("float32")
    if holes:
        ny, nx = shape
        v[:, ny // 3: ny // 3 + 7, nx // 4: nx // 4 + 11] = np.nan  # a hole inside tiles
        v[0, 0:5, :] = np.nan  # a nodata stripe along the top edge, in one band only
        v[:, :, nx - 3:] = np.nan  # and along the right edge
    return v


@pytest.mark.parametrize(
    "shape,tile,halo",
    [
        ((96, 64), 32, 8),    # stride 16 divides the scene
        ((101, 77), 32, 8),   # it does not
        ((50, 37), 64, 8),    # scene smaller than one tile
        ((130, 90), 48, 12),  # another size, larger halo
        ((200, 33), 40, 4),   # smallest exact halo for radius 2
    ],
)
@pytest.mark.parametrize("holes", [False, True])
def test_fake_model_tiled_equals_whole_image(shape, tile, halo, holes):
    card = make_card(tile_size=tile, halo=halo)
    model = Model(card=card, network=FakeConvNet(2, 2).eval())
    values = random_scene(shape, holes=holes)
    stack = make_stack(values, ["red", "nir"], chunks=29)  # odd chunks: not aligned to tiles
    got = predict(stack, model, device="cpu", batch_size=3).compute().values
    want = whole_image(values, model)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # nodata in -> nodata out
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, equal_nan=True)
    if holes:
        assert np.isnan(got[:, 0:5, :]).all()


def test_bitemporal_stack_is_flattened_earlier_date_first():
    card = make_card(time_steps=2, tile_size=32, halo=8)
    model = Model(card=card, network=FakeConvNet(4, 2).eval())
    values = random_scene((70, 45), bands=4).reshape(2, 2, 70, 45)
    stack = make_stack(values, ["red", "nir"])
    got = predict(stack, model, device="cpu").compute().values
    np.testing.assert_allclose(got, whole_image(values, model), atol=2e-6)


def test_classify_maps_ids_and_nodata():
    card = make_card(classes=3)
    model = Model(card=card, network=FakeConvNet(2, 3).eval())
    values = random_scene((40, 40), holes=True)
    probs = predict(make_stack(values, ["red", "nir"]), model, device="cpu")
    cls, conf = classify(probs, card)
    c, f, p = cls.values, conf.values, probs.values
    valid = np.isfinite(p).all(axis=0)
    assert (c[~valid] == card.nodata_class).all() and np.isnan(f[~valid]).all()
    np.testing.assert_array_equal(c[valid], np.argmax(p, axis=0)[valid])
    np.testing.assert_allclose(f[valid], p.max(axis=0)[valid])
    assert cls.odc.geobox == probs.odc.geobox


def test_classify_maps_probabilities_to_the_cards_ids():
    """Ids other than 0..K-1 go through the card's table; NaN and infinite probabilities are nodata."""
    fields = make_card(classes=3).model_dump()
    fields["classes"] = [{**c, "id": i} for c, i in zip(fields["classes"], (3, 7, 9))]
    card = ModelCard.model_validate(fields)
    p = np.array([[0.2, 0.1, 0.3, np.nan, 0.5, 0.2], [0.5, 0.1, 0.3, 0.2, -np.inf, 0.2], [0.3, 0.8, 0.4, 0.2, 0.5, 0.6]], "float32")
    probs = xr.DataArray(p.reshape(3, 2, 3), dims=("class", "y", "x"))
    cls, conf = classify(probs, card)
    np.testing.assert_array_equal(cls.values.ravel(), [7, 9, 9, card.nodata_class, card.nodata_class, 9])
    np.testing.assert_array_equal(conf.values.ravel(), np.array([0.5, 0.8, 0.4, np.nan, np.nan, 0.6], "float32"))


@pytest.mark.parametrize("group_pixels", [1, 40])  # one tile per task, and two
def test_tile_groups_along_x_stitch_exactly(monkeypatch, group_pixels):
    import geoseg.inference

    monkeypatch.setattr(geoseg.inference, "GROUP_PIXELS", group_pixels)
    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=FakeConvNet(2, 2).eval())
    values = random_scene((70, 150), holes=True)
    probs = predict(make_stack(values, ["red", "nir"], chunks=23), model, device="cpu")
    assert probs.data.numblocks[2] > 3  # several column blocks
    np.testing.assert_allclose(probs.values, whole_image(values, model), atol=2e-6, equal_nan=True)
