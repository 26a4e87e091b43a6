"""Overviews built while a COG streams: GDAL's levels and values where GDAL's are exact, valid COGs, no leftovers."""

from __future__ import annotations

import itertools

import dask.array as dsa
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from odc.geo.geobox import GeoBox
from rio_cogeo.cogeo import cog_validate

from geoseg import overviews
from geoseg.io import write_cog
from geoseg.overviews import average2, factors, mode2


def _gbox(shape):
    return GeoBox.from_bbox((300000, 5000000, 300000 + shape[1] * 10, 5000000 + shape[0] * 10), crs="EPSG:32631", resolution=10)


def _levels(path):
    with rasterio.open(path) as ds:
        return [ds.read(out_shape=(ds.count, -(-ds.height // f), -(-ds.width // f))) for f in ds.overviews(1)]


def _write(data, path, chunks, **spec):
    """A COG through geoseg; chunks whose edges are all even stream the overviews, odd ones leave them to GDAL."""
    return write_cog(dsa.from_array(data, chunks=chunks), path, _gbox(data.shape[-2:]), overwrite=True, **spec)


@pytest.mark.parametrize("shape,expected", [((2048, 2048), [2, 4]), ((512, 512), []), ((513, 100), [2]), ((10980, 10980), [2, 4, 8, 16, 32])])
def test_factors_are_gdals(shape, expected, tmp_path):
    assert factors(*shape, 512) == expected
    if max(shape) <= 2048:  # what GDAL's COG driver itself picks
        path = _write(np.zeros(shape, "float32"), tmp_path / "a.tif", (191, 191))
        with rasterio.open(path) as ds:
            assert ds.overviews(1) == expected


def _average_reference(block, nodata):
    b, h, w = block.shape
    out = np.empty((b, -(-h // 2), -(-w // 2)))
    for k, i, j in itertools.product(range(b), range(out.shape[1]), range(out.shape[2])):
        win = block[k, 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(float).ravel()
        win = win[~np.isnan(win) & (win != nodata)]
        out[k, i, j] = win.mean() if win.size else nodata
    return out


@pytest.mark.parametrize("nodata", [np.nan, -1.0, None])
@pytest.mark.parametrize("shape", [(2, 8, 6), (1, 7, 9), (1, 1, 1)])
def test_average2_ignores_nodata_and_halves_odd_edges(nodata, shape):
    rng = np.random.default_rng(0)
    block = rng.random(shape).astype("float32")
    if nodata is not None:
        block[rng.random(shape) < 0.3] = nodata
        block[:, :2, :2] = nodata  # a window with nothing valid
    out = average2(block, nodata)
    assert out.dtype == np.float32 and out.shape == (shape[0], -(-shape[1] // 2), -(-shape[2] // 2))
    np.testing.assert_allclose(out, _average_reference(block, np.nan if nodata is None else nodata), rtol=1e-6, equal_nan=True)


def test_average2_of_a_block_without_nodata_is_the_masked_mean_bit_for_bit():
    """Blocks without nodata take a shortcut: it must give exactly what the masked path gives."""
    block = np.random.default_rng(1).random((2, 64, 96)).astype("float32") * 1000
    holed = block.copy()
    holed[0, 0, 0] = np.nan  # one NaN: the masked path, for the whole block
    fast, masked = average2(block, np.nan), average2(holed, np.nan)
    fast[0, 0, 0] = masked[0, 0, 0] = 0
    assert fast.dtype == masked.dtype == np.float32
    np.testing.assert_array_equal(fast, masked)


def test_average2_ignores_nan_beside_a_numeric_nodata():
    block = np.array([[[1.0, np.nan, -1.0, -1.0], [3.0, -1.0, np.nan, -1.0]]], dtype="float32")
    np.testing.assert_array_equal(average2(block, -1.0), [[[2.0, -1.0]]])


def _mode_reference(window, nodata):
    """GDAL's MODE: the first value (row-major) to reach the top count."""
    best, top, seen = nodata, 0, {}
    for v in window:
        if v == nodata:
            continue
        seen[v] = seen.get(v, 0) + 1
        if seen[v] > top:
            best, top = v, seen[v]
    return best


def test_mode2_on_every_window_of_four_values_and_nodata():
    windows = list(itertools.product([1, 2, 3, 4, 255], repeat=4))
    block = np.zeros((1, 2, 2 * len(windows)), dtype="uint8")
    for n, (a, b, c, d) in enumerate(windows):
        block[0, :, 2 * n:2 * n + 2] = [[a, b], [c, d]]
    out = mode2(block, 255)[0, 0]
    assert out.tolist() == [_mode_reference(w, 255) for w in windows]


def test_mode2_odd_edges_and_no_nodata():
    block = np.array([[[1, 2, 2], [1, 3, 2], [5, 5, 4]]], dtype="uint8")
    np.testing.assert_array_equal(mode2(block, None), [[[1, 2], [5, 4]]])
    np.testing.assert_array_equal(mode2(block, 2), [[[1, 2], [5, 4]]])  # the all-2 column is nodata


def test_streamed_average_overviews_equal_gdals(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.random((1, 1536, 1280)).astype("float32")  # even at every level: GDAL's values are exact pairs
    data[0, 100:333, 50:90] = np.nan
    data[0, ::13, ::7] = np.nan
    streamed = _write(data, tmp_path / "s.tif", (1, 192, 640), nodata=float("nan"))
    gdal = _write(data, tmp_path / "g.tif", (1, 191, 640), nodata=float("nan"))
    assert cog_validate(str(streamed))[0]
    for a, b in zip(_levels(streamed), _levels(gdal), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, equal_nan=True)
    with rasterio.open(streamed) as ds:
        np.testing.assert_array_equal(ds.read(), data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tif", "s.tif"]  # no staging files left


def test_streamed_mode_overviews_equal_gdals_with_colours_and_names(tmp_path):
    rng = np.random.default_rng(2)
    data = np.repeat(np.repeat(rng.integers(0, 4, (1, 300, 200)), 4, axis=1), 4, axis=2).astype("uint8")  # patches
    data[rng.random(data.shape) < 0.2] = rng.integers(0, 4)  # and speckle, for ties
    data[0, 500:700, 100:300] = 255
    spec = dict(dtype="uint8", nodata=255, overview_resampling="mode", colormap={1: (255, 0, 0, 255), 255: (0, 0, 0, 0)},
                descriptions=["class"], tags={"model": "m"}, band_tags=[{"class_names": '{"1": "water"}'}])
    streamed = _write(data, tmp_path / "s.tif", (1, 320, 400), **spec)
    gdal = _write(data, tmp_path / "g.tif", (1, 321, 400), **spec)
    assert cog_validate(str(streamed))[0]
    for a, b in zip(_levels(streamed), _levels(gdal), strict=True):
        np.testing.assert_array_equal(a, b)
    with rasterio.open(streamed) as ds, rasterio.open(gdal) as ref:
        assert ds.colormap(1)[1] == (255, 0, 0, 255) and ds.nodata == 255
        assert ds.descriptions == ref.descriptions and ds.tags(1) == ref.tags(1) and ds.tags()["model"] == "m"


def test_odd_scene_halves_its_last_windows(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.random((1, 1111, 1537)).astype("float32")
    path = _write(data, tmp_path / "s.tif", (1, 192, 1920), nodata=float("nan"))
    assert cog_validate(str(path))[0]
    expected = data
    for level in _levels(path):
        expected = average2(expected, np.nan)
        np.testing.assert_array_equal(level, expected)


@pytest.mark.parametrize("dtype,resampling,chunks,levels", [
    ("float32", "average", ((1,), (192, 192, 100), (640, 3)), 6),  # every block starts on a multiple of 64
    ("float32", "average", ((1,), (191, 193), (640,)), 0),  # a block starting on an odd row: GDAL builds them
    ("uint8", "mode", ((1,), (64, 32), (64,)), 6),
    ("uint8", "average", ((1,), (64,), (64,)), 0),  # integer averages are GDAL's (rounding)
    ("float32", "nearest", ((1,), (64,), (64,)), 0),
])
def test_levels_built_while_streaming(dtype, resampling, chunks, levels):
    assert overviews.streamable(np.dtype(dtype), resampling, chunks) == levels


def test_levels_past_the_blocks_alignment_are_built_at_the_end(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.random((1, 2560, 1024)).astype("float32")  # levels 2, 4, 8; blocks of 192 rows stream all three
    data[0, 300:700, 100:200] = np.nan
    ref = _write(data, tmp_path / "a.tif", (1, 192, 1024), nodata=float("nan"))
    late = _write(data, tmp_path / "b.tif", (1, 322, 1024), nodata=float("nan"))  # 322 = 2 x 161: one level streamed
    assert overviews.streamable(np.dtype("float32"), "average", ((1,), (322, 322), (1024,))) == 1
    for a, b in zip(_levels(ref), _levels(late), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*_):
        raise RuntimeError("disk full")

    monkeypatch.setattr(overviews.Pyramid, "finish", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(np.ones((1, 1200, 1200), "float32"), tmp_path / "s.tif", (1, 400, 400), nodata=float("nan"))
    assert list(tmp_path.iterdir()) == []
