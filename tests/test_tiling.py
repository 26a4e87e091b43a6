"""Tile layout arithmetic: coverage, weights, halos (property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.tiling import Axis, TileLayout


@st.composite
def axes(draw):
    size = draw(st.integers(4, 96))
    halo = draw(st.integers(0, (size - 1) // 2))
    length = draw(st.integers(1, 400))
    return Axis(length, size, halo)


@settings(max_examples=300, deadline=None)
@given(axes())
def test_every_pixel_has_positive_weight_far_enough_inside_a_tile(axis):
    w = axis.weights()
    total = np.zeros(axis.length)
    for s in axis.starts:
        for i in range(axis.size):
            p = s + i
            if 0 <= p < axis.length and w[i] > 0:
                total[p] += w[i]
                # weighted pixels are never within halo//2 of their tile's edge
                assert min(i, axis.size - 1 - i) >= axis.margin
    assert (total > 0).all()


@settings(max_examples=200, deadline=None)
@given(axes())
def test_layout_shape_invariants(axis):
    starts = axis.starts
    assert starts[0] == -axis.halo
    assert all(b - a == axis.stride for a, b in zip(starts, starts[1:]))
    before, after = axis.padded
    assert before == axis.halo and after >= 0
    assert starts[-1] + axis.size == axis.length + after
    # the last tile is needed: dropping it would leave pixels without weight
    assert len(starts) == 1 or starts[-2] + axis.size - axis.margin < axis.length


@settings(max_examples=200, deadline=None)
@given(axes(), st.data())
def test_contributors_are_exactly_the_tiles_with_weight(axis, data):
    lo = data.draw(st.integers(0, axis.length - 1))
    hi = data.draw(st.integers(lo + 1, axis.length))
    w = axis.weights()
    expected = [k for k, s in enumerate(axis.starts) if any(w[p - s] > 0 for p in range(max(lo, s), min(hi, s + axis.size)))]
    assert axis.contributors(lo, hi) == expected


def test_window_is_symmetric_smooth_and_flat_inside():
    layout = TileLayout(500, 500, 64, 16)
    win = layout.window()
    assert win.shape == (64, 64)
    np.testing.assert_allclose(win, win.T)
    np.testing.assert_allclose(win, win[::-1, ::-1])
    assert win[:8].max() == 0 and win[:, :8].max() == 0  # margin = halo // 2
    assert (win[16:48, 16:48] == 1).all()
    profile = win[32, :32]
    assert (np.diff(profile) >= 0).all()


def test_output_rows_partition_the_scene():
    layout = TileLayout(1000, 10, 256, 32)
    rows = layout.output_rows()
    assert rows[0][0] == 0 and rows[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


@settings(max_examples=300, deadline=None)
@given(axes(), st.integers(1, 12))
def test_tile_groups_are_even_and_output_cols_partition_the_scene(axis, group):
    layout = TileLayout(10, axis.length, axis.size, axis.halo)
    groups = layout.tile_groups(group)
    n = len(axis.starts)
    assert groups[0][0] == 0 and groups[-1][1] == n and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    sizes = [b - a for a, b in groups]
    assert max(sizes) - min(sizes) <= 1  # as even as possible
    assert max(sizes) < 1.5 * group  # never far past the target
    assert min(sizes) >= group // 2 or len(groups) == 1  # and never a sliver
    cols = layout.output_cols(group)
    assert len(cols) == len(groups) and cols[0][0] == 0 and cols[-1][1] == axis.length
    assert all(a[1] == b[0] for a, b in zip(cols, cols[1:])) and all(lo < hi for lo, hi in cols)
    # each column block starts where its group's first tile's core does
    assert [lo for lo, _ in cols] == [axis.starts[first] + axis.halo for first, _ in groups]


def test_a_sliver_of_a_group_joins_its_neighbour():
    layout = TileLayout(2048, 2048, 512, 96)  # 7 tiles per row, stride 320
    assert layout.tile_groups(6) == [(0, 7)]
    assert layout.tile_groups(3) == [(0, 3), (3, 7)]
    assert layout.output_cols(3) == [(0, 960), (960, 2048)]


def test_bad_axes_are_refused():
    with pytest.raises(ValueError, match="no core"):
        Axis(10, 16, 8)
    with pytest.raises(ValueError, match="empty"):
        Axis(0, 16, 2)
