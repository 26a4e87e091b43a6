"""Class and confidence COGs: valid COGs with the right grid, nodata, colours and names; atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from geoseg.errors import InputError
from geoseg.models import Model
from geoseg.outputs import write_prediction
from geoseg.inference import classify, predict
from tests.helpers import make_card, make_stack
from tests.test_predict_seams import FakeConvNet, random_scene


@pytest.fixture()
def prediction():
    card = make_card(classes=3, tile_size=64, halo=8)
    model = Model(card=card, network=FakeConvNet(2, 3).eval())
    stack = make_stack(random_scene((300, 260), holes=True), ["red", "nir"])
    return card, stack, predict(stack, model, device="cpu")


def test_class_and_confidence_cogs(prediction, tmp_path):
    card, stack, probs = prediction
    paths = write_prediction(probs, card, tmp_path, "scene", probabilities=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_class.tif", "scene_confidence.tif", "scene_probabilities.tif"]
    gbox = stack.odc.geobox
    p = probs.values
    valid = np.isfinite(p).all(axis=0)
    for key, path in paths.items():
        ok, errors, _ = cog_validate(str(path))
        assert ok, (key, errors)
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 32631
            assert ds.transform == gbox.transform
            assert (ds.height, ds.width) == tuple(gbox.shape)
            assert ds.overviews(1) or max(ds.shape) <= 512
    with rasterio.open(paths["class"]) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == card.nodata_class
        cmap = ds.colormap(1)
        for c in card.classes:
            assert cmap[c.id] == (*c.color, 255)
        assert cmap[card.nodata_class][3] == 0
        names = json.loads(ds.tags(1)["class_names"])
        assert names == {str(c.id): c.name for c in card.classes}
        assert ds.tags(1)["CLASS_2"] == "class 2"
        assert ds.tags()["model"] == card.name
        data = ds.read(1)
        assert (data[~valid] == card.nodata_class).all()
        np.testing.assert_array_equal(data[valid], np.argmax(p, axis=0)[valid])
    with rasterio.open(paths["confidence"]) as ds:
        conf = ds.read(1)
        assert np.isnan(ds.nodata)
        np.testing.assert_allclose(conf[valid], p.max(axis=0)[valid], rtol=1e-6)
        assert np.isnan(conf[~valid]).all()
    with rasterio.open(paths["probabilities"]) as ds:
        assert ds.count == 3 and ds.descriptions == ("class 0", "class 1", "class 2")


@pytest.mark.parametrize("classes", [2, 5])
def test_classes_take_the_first_top_class_on_ties(classes):
    card = make_card(classes=classes)
    rng = np.random.default_rng(0)
    p = rng.integers(0, 3, (classes, 40, 50)).astype("float32") / 4  # many exact ties
    p[:, :5, :5] = np.nan
    probs = make_stack(p, [f"c{i}" for i in range(classes)]).rename(band="class")
    cls, conf = classify(probs, card)
    expected = np.where(np.isfinite(p).all(axis=0), np.asarray(card.class_ids)[np.argmax(np.nan_to_num(p), axis=0)], card.nodata_class)
    np.testing.assert_array_equal(cls.values, expected)
    np.testing.assert_array_equal(conf.values, np.where(np.isfinite(p).all(axis=0), p.max(axis=0), np.nan))


def test_existing_output_is_refused_unless_overwrite(prediction, tmp_path):
    card, _, probs = prediction
    write_prediction(probs, card, tmp_path, "scene")
    with pytest.raises(InputError, match="already exists"):
        write_prediction(probs, card, tmp_path, "scene")
    write_prediction(probs, card, tmp_path, "scene", overwrite=True)


def test_crash_midway_leaves_nothing(prediction, tmp_path):
    card, stack, _ = prediction

    class Exploding(FakeConvNet):
        calls = 0

        def forward(self, x):
            Exploding.calls += 1
            if Exploding.calls > 2:
                raise RuntimeError("worker died")
            return super().forward(x)

    probs = predict(stack, Model(card=card, network=Exploding(2, 3).eval()), device="cpu", batch_size=1)
    with pytest.raises(RuntimeError, match="worker died"):
        write_prediction(probs, card, tmp_path, "scene")
    assert list(tmp_path.iterdir()) == []  # no partial COG, no temporary file


def test_read_only_directory_is_a_clear_error(prediction, tmp_path):
    card, _, probs = prediction
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        import os

        if os.access(ro, os.W_OK):  # running as root: permissions do not bind
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(InputError, match="not writable"):
            write_prediction(probs, card, ro, "scene")
    finally:
        ro.chmod(0o755)


def test_uncreatable_output_directory_is_a_clear_error(prediction, tmp_path):
    card, _, probs = prediction
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match="cannot create output directory"):
        write_prediction(probs, card, blocker / "out", "scene")
