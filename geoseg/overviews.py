"""Overviews built while a raster streams to disk.

GDAL's COG driver builds a COG's overviews after the fact: it reads the
whole full-resolution image back, resamples it into a temporary file, then
copies both into the COG. All of that runs after the last block, when
nothing else is left to do. For the resamplings geoseg's outputs use (the
average of floats: confidence, probabilities; the mode of integers: class
maps) geoseg builds the overviews itself instead: every level that the
blocks' alignment allows from each block as it is written (all of them for
predictions, whose blocks start on multiples of the tile stride), any
coarser ones at the end from the last of those, read back in strips. The
COG driver is then given a VRT that lists them and only copies them
(``OVERVIEWS=FORCE_USE_EXISTING``). Converting a 2048² prediction's staged
rasters took 0.014 s instead of 0.096 s for the class COG and 0.09 s
instead of 0.16 s for the confidence COG.

Each level halves the one before it, as GDAL's levels do, over 2 x 2
windows of valid pixels (nodata, NaN included, is ignored; a window with
none is nodata): the mean, or the most frequent value with GDAL's tie rule.
Where a level has an even number of rows and columns this is exactly what
GDAL computes. Where it has an odd number, its last window is a half one
(one row or column); GDAL instead spreads that half pixel across the level,
with fractional weights, so the two differ there by less than one pixel of
position.
"""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window


def factors(height: int, width: int, blocksize: int) -> list[int]:
    """Overview factors as GDAL's COG driver picks them: halve until a level fits in one block."""
    out, f = [], 1
    while max(-(-height // f), -(-width // f)) > blocksize:
        f *= 2
        out.append(f)
    return out


def _windows(block: np.ndarray, nodata: float | None, fill) -> tuple[np.ndarray, np.ndarray]:
    """(4, bands, ceil(h / 2), ceil(w / 2)): the four pixels of every 2 x 2 window in row-major
    order, each a contiguous plane, and whether each is valid; an odd last row or column is
    padded with invalid pixels."""
    b, h, w = block.shape
    x = block
    if h % 2 or w % 2:
        x = np.full((b, h + h % 2, w + w % 2), fill, dtype=block.dtype)
        x[:, :h, :w] = block
    planes = x.reshape(b, x.shape[1] // 2, 2, x.shape[2] // 2, 2).transpose(2, 4, 0, 1, 3).reshape(4, b, x.shape[1] // 2, x.shape[2] // 2)
    valid = ~np.isnan(planes) if planes.dtype.kind == "f" else np.ones(planes.shape, dtype=bool)  # NaN is never data
    if nodata is not None and not np.isnan(nodata):
        valid &= planes != nodata
    if h % 2:
        valid[2:, :, -1, :] = False  # the padding row
    if w % 2:
        valid[1::2, :, :, -1] = False  # the padding column
    return planes, valid


def average2(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """(bands, h, w) → (bands, ceil(h / 2), ceil(w / 2)): the mean of each 2 x 2 window's valid pixels."""
    dtype = np.result_type(block.dtype, np.float32)
    x = block.astype(dtype, copy=False)
    if not (x.shape[1] % 2 or x.shape[2] % 2) and (nodata is None or np.isnan(nodata)) and not np.isnan(x).any():
        # every window whole and valid (the usual block): the sum below, in the same order, without masks
        out = x[:, 0::2, 0::2] + x[:, 0::2, 1::2]
        out += x[:, 1::2, 0::2]
        out += x[:, 1::2, 1::2]
        out /= dtype.type(4)
        return out
    values, valid = _windows(x, nodata, 0)
    total = np.where(valid[0], values[0], 0)
    count = valid[0].astype(dtype)
    for v, ok in zip(values[1:], valid[1:]):
        total += np.where(ok, v, 0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    np.copyto(out, np.nan if nodata is None else nodata, where=count == 0)
    return out


def mode2(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """(bands, h, w) → (bands, ceil(h / 2), ceil(w / 2)): the most frequent valid value of each
    2 x 2 window. A tie goes to the value that reaches the top count first in row-major order,
    as GDAL's MODE resampling does (checked on all 625 windows of four values and nodata)."""
    values, valid = _windows(block, nodata, 0 if nodata is None or np.isnan(nodata) else nodata)
    out, top = values[0].copy(), valid[0].astype("uint8")
    for j in range(1, 4):  # each pixel's count so far of its own value; the first to pass the top count wins
        run = valid[j].astype("uint8")
        for i in range(j):
            run += (values[i] == values[j]) & valid[i] & valid[j]
        better = (run > top).view("uint8")
        out += better * (values[j] - out)  # integer arithmetic wraps around: exact, and branch-free
        np.maximum(top, run, out=top)
    if nodata is not None:
        np.copyto(out, nodata, where=top == 0, casting="unsafe")
    return out


#: How each resampling of :class:`geoseg.io.RasterSpec` is built while streaming, and for which data.
REDUCERS = {"average": (average2, "f"), "mode": (mode2, "iu")}


def streamable(dtype: np.dtype, resampling: str, chunks: Sequence[Sequence[int]]) -> int:
    """How many overview levels can be built while streaming (0: none, GDAL builds them): average
    of floats or mode of integers, one level per factor of 2 that divides every block's first row
    and column (so each block makes whole pixels of that level)."""
    reducer = REDUCERS.get(resampling.lower())
    if reducer is None or np.dtype(dtype).kind not in reducer[1]:
        return 0
    edges = [int(e) for c in chunks[-2:] for e in np.cumsum(c)[:-1]]
    levels = 0
    while all(e % 2 ** (levels + 1) == 0 for e in edges) and levels < 32:
        levels += 1
    return levels


class Pyramid:
    """The overview levels of one raster, written beside its staging file.

    :meth:`add` takes each full-resolution block as it is written (any thread)
    and writes the levels its position allows (``levels``, see
    :func:`streamable`); :meth:`finish` builds any coarser ones from the last
    of those, strip by strip, and returns a VRT of the staging file that lists
    every level as its overviews. :meth:`close` removes the files.
    """

    def __init__(self, stage: Path, profile: dict, blocksize: int, resampling: str, levels: int):
        self.stage, self.blocksize = Path(stage), blocksize
        self.reduce = REDUCERS[resampling.lower()][0]
        self.factors = factors(profile["height"], profile["width"], blocksize)
        self.nodata = profile.get("nodata")
        self.profile = profile
        self.paths = [stage.with_name(f"{stage.name}.ovr{f}.tif") for f in self.factors]
        self.vrt = stage.with_name(stage.name + ".vrt")
        self._lock = threading.Lock()
        self._streamed = [self._open(level) for level in range(min(levels, len(self.factors)))]

    def _open(self, level: int):
        f = self.factors[level]
        height, width = self.profile["height"], self.profile["width"]
        return rasterio.open(self.paths[level], "w", **{**self.profile, "height": -(-height // f), "width": -(-width // f),
                                                        "transform": self.profile["transform"] @ Affine.scale(f)})

    def add(self, bands: slice, rows: slice, cols: slice, block: np.ndarray) -> None:
        """A full-resolution block, placed at ``rows`` x ``cols``."""
        indexes = list(range(bands.start + 1, bands.stop + 1))
        for level, dst in enumerate(self._streamed, start=1):
            block = self.reduce(block, self.nodata)
            window = Window(cols.start >> level, rows.start >> level, block.shape[2], block.shape[1])
            with self._lock:
                dst.write(block, indexes=indexes, window=window)

    def finish(self) -> Path:
        """Close the streamed levels, build the coarser ones; return the VRT listing them all
        (or the staging file itself, for a raster too small to need overviews)."""
        if not self.factors:
            return self.stage
        for dst in self._streamed:
            dst.close()
        deeper = [self._open(level) for level in range(len(self._streamed), len(self.factors))]
        try:
            if deeper:
                with rasterio.open(self.paths[len(self._streamed) - 1]) as last:
                    step = 2 ** len(deeper)  # strips whose every level starts on a whole pixel
                    rows = max(step, self.blocksize // step * step)
                    for r in range(0, last.height, rows):
                        strip = last.read(window=Window(0, r, last.width, min(rows, last.height - r)))
                        for level, dst in enumerate(deeper, start=1):
                            strip = self.reduce(strip, self.nodata)
                            dst.write(strip, window=Window(0, r >> level, strip.shape[2], strip.shape[1]))
        finally:
            for dst in deeper:
                dst.close()
        rasterio.shutil.copy(self.stage, self.vrt, driver="VRT")
        tree = ET.parse(self.vrt)
        for band in tree.getroot().iter("VRTRasterBand"):
            for path in self.paths:
                ovr = ET.SubElement(band, "Overview")
                ET.SubElement(ovr, "SourceFilename", relativeToVRT="0").text = str(path.resolve())
                ET.SubElement(ovr, "SourceBand").text = band.get("band")
        tree.write(self.vrt)
        return self.vrt

    def close(self) -> None:
        for dst in self._streamed:
            if not dst.closed:
                dst.close()
        for path in (*self.paths, self.vrt):
            for leftover in (path, path.with_name(path.name + ".aux.xml")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
