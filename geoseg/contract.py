"""The band contract: a stack is given to a model only if it is what the
model card says the model was trained on.

:func:`conform` matches the stack's bands to the card by name (reordering
them), checks dates, ground resolution and value range, and refuses anything
else with an error that names the problem and the fix. Models fed the wrong
bands or unscaled digital numbers produce confident garbage; this module is
what stops that.
"""

from __future__ import annotations

import dask
import dask.array as dsa
import numpy as np
import odc.geo.xr  # noqa: F401  (registers the .odc accessor used on stacks)
import xarray as xr

from geoseg.errors import InputError
from geoseg.models import ModelCard
from geoseg.sources import replayable


class ContractError(InputError):
    """A stack that does not match the model card."""


#: Ground resolutions within this relative tolerance of the card's are accepted.
RESOLUTION_TOLERANCE = 0.25


def _select_bands(stack: xr.DataArray, card: ModelCard) -> xr.DataArray:
    names = [str(b) for b in stack.band.values]
    common = [str(c) for c in stack.coords["common_name"].values] if "common_name" in stack.coords else [""] * len(names)
    index = []
    missing = []
    for want in card.bands:
        if want in names:
            index.append(names.index(want))
        elif want in common:
            index.append(common.index(want))
        else:
            missing.append(want)
    if missing:
        raise ContractError(
            f"model {card.name!r} needs bands {', '.join(card.bands)}; missing: {', '.join(missing)}; "
            f"the stack has: {', '.join(names)}",
            fix=f"load the missing bands, e.g. geoseg.load(items, {list(card.bands)!r})",
        )
    # already in the card's order (the usual case): no selection, whose getitem would hide a lazy
    # stack's window reads from geoseg.sources
    out = stack if index == list(range(len(names))) else stack.isel(band=index)
    return out.assign_coords(band=list(card.bands))


def _select_time(stack: xr.DataArray, card: ModelCard) -> xr.DataArray:
    n = stack.sizes.get("time", 0)
    if card.time_steps == 1:
        if n > 1:
            raise ContractError(
                f"model {card.name!r} is single-date but the stack has {n} dates",
                fix="select one date, e.g. stack.isel(time=0); or use a bi-temporal (change) model",
            )
        return stack.isel(time=0) if n == 1 else stack
    if n != 2:
        raise ContractError(
            f"model {card.name!r} is bi-temporal and needs a stack with exactly 2 dates (time, band, y, x); "
            f"this one has {n or 'no'} time axis" + ("" if n else " (a single-date stack)"),
            fix="load two items of the same place as a list, earlier first: geoseg.load([before, after], bands)",
        )
    return stack


def _check_resolution(stack: xr.DataArray, card: ModelCard, resample: bool) -> xr.DataArray:
    gbox = stack.odc.geobox
    if gbox is None:
        raise ContractError("the stack has no georeferencing (no odc geobox)", fix="load it with geoseg.load, or attach a grid with odc.geo.xr.assign_crs")
    if gbox.crs.geographic:
        raise ContractError(
            f"the stack is on a geographic grid ({gbox.crs}); model {card.name!r} was trained at {card.resolution:g} m",
            fix=f"load it onto a projected grid, e.g. geoseg.load(..., resolution={card.resolution:g}) (UTM by default)",
        )
    res = abs(gbox.resolution.x)
    if abs(res / card.resolution - 1) <= RESOLUTION_TOLERANCE:
        return stack
    if not resample:
        raise ContractError(
            f"the stack's ground resolution is {res:g} m; model {card.name!r} was trained at {card.resolution:g} m",
            fix=f"load at resolution={card.resolution:g}, or pass resample=True (--resample) to resample on the fly",
        )
    from odc.geo.xr import xr_reproject

    target = gbox.zoom_to(resolution=card.resolution) if hasattr(gbox, "zoom_to") else None
    if target is None:  # pragma: no cover
        raise ContractError("cannot resample this stack", fix=f"load it at resolution={card.resolution:g}")
    return xr_reproject(stack, target, resampling="bilinear")


def _samples(stack: xr.DataArray, size: int = 256) -> np.ndarray:
    """Pixels from up to five windows (centre and quadrant centres): cheap on a lazy stack.

    Windows start on multiples of ``size``, so on sources tiled or chunked in
    multiples of it (COG blocks of 256 or 512, dask chunks of 512 or 2048) each
    lies in one block: a centred window would decode up to four.
    """
    ny, nx = stack.sizes["y"], stack.sizes["x"]
    h, w = min(size, ny), min(size, nx)
    centres = [(ny // 2, nx // 2), (ny // 4, nx // 4), (ny // 4, 3 * nx // 4), (3 * ny // 4, nx // 4), (3 * ny // 4, 3 * nx // 4)]
    windows = []
    for cy, cx in centres:
        y0 = int(np.clip(cy // size * size, 0, ny - h))
        x0 = int(np.clip(cx // size * size, 0, nx - w))
        windows.append((slice(y0, y0 + h), slice(x0, x0 + w)))
    replay = replayable(stack.data) if isinstance(stack.data, dsa.Array) else None
    if replay is not None:  # read at the source: dask would compute the chunks under each window
        from dask.threaded import get

        lead = tuple(slice(0, n) for n in stack.shape[:-2])
        # in parallel, on the threads of the local scheduler that will then predict: they open the
        # sources now (a predict's first reads ran 2-3 times slower than later ones: each thread's first)
        graph = {("geoseg-sample", i): (replay(lead + window),) for i, window in enumerate(windows)}
        parts = get(graph, list(graph))
    else:  # one pass over all five: reads run in parallel
        parts = dask.compute(*(stack.isel(y=ys, x=xs).data for ys, xs in windows))
    return np.concatenate([np.asarray(p, dtype="float32").ravel() for p in parts])


def check_values(stack: xr.DataArray, card: ModelCard) -> None:
    """Refuse stacks with no valid pixels, or values outside the card's range
    (the classic case: digital numbers fed to a reflectance model)."""
    values = _samples(stack)
    # percentiles of every few values: about 250 000 of them (all of them took 5 ms of a predict's start)
    sample = values[:: max(1, values.size // 250_000)]
    values = sample[np.isfinite(sample)] if np.isfinite(sample).any() else values[np.isfinite(values)]
    if values.size == 0:
        ny, nx = stack.sizes["y"], stack.sizes["x"]
        step = max(1, int(np.sqrt(ny * nx / 250_000)))
        coarse = np.asarray(stack[..., ::step, ::step].values)
        values = coarse[np.isfinite(coarse)]
        if values.size == 0:
            raise ContractError("the stack has no valid pixels (all nodata)", fix="check the region, dates and cloud cover; pick scenes that cover the region")
    lo, hi = card.value_range
    p_lo, p_hi = np.percentile(values, [0.5, 99.5])
    if p_hi > hi or p_lo < lo:
        looks_dn = p_hi > 100
        raise ContractError(
            f"input values span {p_lo:.4g}..{p_hi:.4g} (0.5-99.5th percentiles) but model {card.name!r} expects "
            f"{lo:g}..{hi:g} (reflectance)" + (": these look like unscaled digital numbers" if looks_dn else ""),
            fix="load with geoseg.load, which applies each asset's raster:bands scale/offset"
            + (" (or multiply Sentinel-2 DN by 0.0001)" if looks_dn else ""),
        )


def conform(stack: xr.DataArray, card: ModelCard, *, resample: bool = False, check: bool = True) -> xr.DataArray:
    """The stack as the model expects it: dims (band, y, x) or (time, band, y, x),
    bands in the card's order; raises :class:`ContractError` otherwise."""
    if "band" not in stack.dims or "y" not in stack.dims or "x" not in stack.dims:
        raise ContractError(f"the stack has dims {stack.dims}; need (band, y, x) or (time, band, y, x)", fix="load it with geoseg.load")
    out = _select_bands(stack, card)
    out = _select_time(out, card)
    out = _check_resolution(out, card, resample)
    out = out.transpose(*(("time",) if card.time_steps == 2 else ()), "band", "y", "x")
    if check:
        check_values(out, card)
    return out
