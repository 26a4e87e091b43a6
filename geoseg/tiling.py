"""Tile layout and blend weights: pure arithmetic, no I/O.

Tiles of ``size`` pixels are laid every ``stride = size - 2 * halo`` pixels,
the first one starting ``halo`` pixels before the scene, so each scene pixel
lies at least ``halo`` pixels inside some tile. Edge tiles hang over the scene
and are padded, never dropped.

Each tile's prediction is weighted by a separable window that is 0 within
``halo // 2`` pixels of the tile edge (where a network sees padding instead
of context), rises along a raised-cosine ramp, and is 1 from ``halo`` pixels
inward. Overlapping predictions are averaged with those weights. Adjacent
tiles overlap by ``2 * halo`` pixels, and their positive-weight zones by at
least ``halo``, so the blend is smooth and no pixel is left without a
prediction. A model whose receptive field reaches at most ``halo // 2``
pixels therefore gives, tiled and stitched, exactly its whole-image result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Axis:
    """Tiling of one axis of ``length`` pixels."""

    length: int
    size: int
    halo: int

    def __post_init__(self):
        if self.length <= 0:
            raise ValueError(f"cannot tile an empty axis (length {self.length})")
        if self.size <= 2 * self.halo:
            raise ValueError(f"tile size {self.size} leaves no core with halo {self.halo}")

    @property
    def stride(self) -> int:
        return self.size - 2 * self.halo

    @property
    def margin(self) -> int:
        """Pixels at each tile edge with zero weight."""
        return self.halo // 2

    @cached_property
    def starts(self) -> tuple[int, ...]:
        """Tile start offsets (the first is ``-halo``)."""
        n = max(0, math.ceil((self.length + self.halo + self.margin - self.size) / self.stride)) + 1
        return tuple(-self.halo + k * self.stride for k in range(n))

    @property
    def padded(self) -> tuple[int, int]:
        """(before, after) padding that makes every tile lie inside the padded axis."""
        return self.halo, self.starts[-1] + self.size - self.length

    def weights(self) -> np.ndarray:
        """1-D blend window of ``size`` values in [0, 1]."""
        d = np.minimum(np.arange(self.size), np.arange(self.size)[::-1])
        m, h = self.margin, self.halo
        w = np.ones(self.size, dtype="float64")
        if h > 0:
            ramp = (d >= m) & (d < h)
            w[d < m] = 0.0
            w[ramp] = 0.5 - 0.5 * np.cos(np.pi * (d[ramp] - m + 1) / (h - m + 1))
        return w.astype("float32")

    def contributors(self, lo: int, hi: int) -> list[int]:
        """Indices of tiles whose positive-weight zone meets pixels [lo, hi)."""
        m = self.margin
        return [k for k, s in enumerate(self.starts) if s + m < hi and s + self.size - m > lo]


@dataclass(frozen=True)
class TileLayout:
    """Tiling of a (ny, nx) scene."""

    ny: int
    nx: int
    size: int
    halo: int

    @cached_property
    def y(self) -> Axis:
        return Axis(self.ny, self.size, self.halo)

    @cached_property
    def x(self) -> Axis:
        return Axis(self.nx, self.size, self.halo)

    @property
    def n_tiles(self) -> int:
        return len(self.y.starts) * len(self.x.starts)

    def window(self) -> np.ndarray:
        """2-D blend window (size, size), float32."""
        return np.outer(self.y.weights(), self.x.weights()).astype("float32")

    def output_rows(self) -> list[tuple[int, int]]:
        """Row blocks [lo, hi) of the output: one per tile row core."""
        s = self.y.stride
        return [(lo, min(lo + s, self.ny)) for lo in range(0, self.ny, s)]

    def tile_groups(self, group: int) -> list[tuple[int, int]]:
        """Tiles of a row split into groups of about ``group`` tiles: [first, last + 1) indices.

        The groups are as even as possible, none more than half again ``group``,
        so no group is a sliver: a row of 7 tiles with ``group=6`` is one group of
        7, not 6 and 1 (a group of one tile costs a read, a normalize and a blend
        of its own for a seventh of the work, and re-reads its overlap).
        """
        n = len(self.x.starts)
        m = max(1, (n + group // 2) // group)
        bounds = [k * n // m for k in range(m + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def output_cols(self, group: int) -> list[tuple[int, int]]:
        """Column blocks [lo, hi) of the output: the cores of each group of :meth:`tile_groups`."""
        los = [first * self.x.stride for first, _ in self.tile_groups(group)]
        return list(zip(los, [*los[1:], self.nx]))
