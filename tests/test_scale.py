"""Digital numbers to physical values (geoseg.fetch.scale_dn), against the plain xarray formula."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from geoseg.fetch import scale_dn


def dn_array(values: np.ndarray, lazy: bool) -> xr.DataArray:
    data = dsa.from_array(values, chunks=(3, 4)) if lazy else values
    return xr.DataArray(data, dims=("y", "x"), coords={"y": np.arange(values.shape[0]), "x": np.arange(values.shape[1])})


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("scale, offset, nodata", [(1e-4, 0.0, 0), (1e-4, -0.1, 0), (2.0, 1.0, None), (1e-4, 0.0, 65535)])
def test_scale_dn_is_dn_times_scale_plus_offset_nan_at_nodata(lazy, scale, offset, nodata):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 12000, size=(7, 9)).astype("uint16")
    values[0, :3] = 0
    values[4, 4] = 65535
    dn = dn_array(values, lazy)
    expected = dn.astype("float32") * np.float32(scale) + np.float32(offset)
    if nodata is not None:
        expected = expected.where(dn != nodata)
    out = scale_dn(dn, scale, offset, nodata)
    assert out.dtype == np.float32 and out.dims == dn.dims and isinstance(out.data, dsa.Array) == lazy
    np.testing.assert_array_equal(out.values, expected.values.astype("float32"))


def test_float_dn_with_nan_nodata_keeps_nan():
    dn = dn_array(np.array([[1.0, np.nan], [3.0, 4.0]], dtype="float32"), lazy=True)
    np.testing.assert_array_equal(scale_dn(dn, 0.5, 0.0, float("nan")).values, [[0.5, np.nan], [1.5, 2.0]])


def test_bands_with_other_scales_are_other_dask_keys():
    dn = dn_array(np.ones((6, 8), dtype="uint16"), lazy=True)
    a, b = scale_dn(dn, 1e-4, 0.0, 0), scale_dn(dn, 2e-4, 0.0, 0)
    assert a.data.name != b.data.name
    assert float(a[0, 0]) != float(b[0, 0])


@pytest.mark.parametrize("dtype, nodata", [("uint16", -9999), ("uint16", 0.5), ("int16", -9999), ("int16", -1),
                                           ("float32", -9999.0), ("float64", 1e-3), ("uint8", 255)])
@pytest.mark.parametrize("shape", [(11,), (5, 6), (3, 5, 6), (2, 3, 5, 6)])
def test_any_dtype_shape_and_nodata_match_the_plain_formula(dtype, nodata, shape):
    """Block by block, plane by plane, with nodata compared in the data's own type: still the plain
    formula, and a nodata the dtype cannot hold (-9999 in uint16, 0.5 in integers) masks nothing."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 200, size=shape).astype(dtype)
    if np.can_cast(np.min_scalar_type(nodata), dtype) or np.dtype(dtype).kind == "f":
        values.flat[::4] = nodata
    dn = xr.DataArray(dsa.from_array(values, chunks=3), dims=[f"d{i}" for i in range(len(shape))])
    expected = np.where(values == nodata, np.nan, values.astype("float32") * np.float32(1e-4) + np.float32(0.5)).astype("float32")
    np.testing.assert_array_equal(scale_dn(dn, 1e-4, 0.5, nodata).values, expected)
