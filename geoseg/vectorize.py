"""Class rasters to polygons, block by block, without seams.

:func:`vectorize` turns a class raster (a COG written by
:mod:`geoseg.outputs`, or a lazy DataArray) into one polygon per connected
region of a class, with attributes, and writes them to a GeoPackage layer
(:mod:`geoseg.gpkg`) or returns a GeoDataFrame.

How it streams
--------------
The raster is read in windows of ``block_size`` pixels, row by row of
blocks; two worker threads polygonize the next blocks (GDAL and GEOS release
the GIL) while at most three blocks are in flight. Each window is polygonized
with GDAL (``rasterio.features.shapes``) in *pixel* coordinates, where every
vertex is an integer and every operation below is exact. A region that
touches no internal block border is final at once and goes out in the next
batch. Pieces touching a border are kept, and their labels along the border
(read from the pieces cut to 1-pixel strips, no rasterizing) are joined to
the neighbouring block's with a union-find; a group of pieces is merged
(coverage union of the outer rings, holes added back) and emitted as soon as
no member touches the border of a block still to come. Memory is therefore
bounded by a few blocks plus the regions that cross the current row of
blocks (a region that spans the whole scene is, necessarily, held whole) and
one output batch (``batch_size`` features).

Guarantees
----------
* **Connectivity**: 4-connectivity (edge neighbours; diagonal pixels of one
  class are separate regions), as ``rasterio.features.shapes`` by default.
  Without clean-up options the output is exactly a whole-raster
  ``shapes(array, connectivity=4)`` (nodata excluded): same polygons, same
  count, whatever the block size; per-class area equals pixel count x pixel
  area exactly.
* **min_area** (m², rounded up to whole pixels) is applied to the raster
  before polygonizing, as a sieve that is global and independent of the
  block size: regions smaller than it are merged into their largest
  neighbouring region (smallest first; a merged group that is still small
  is merged again; ties go to the region whose first pixel in raster order
  comes first), so holes smaller than ``min_area`` are filled by the
  surrounding region and the coverage stays gap-free; small regions whose
  only neighbours are nodata are dropped. The result does not depend on the
  block size. This needs one more read pass (and a graph of the small
  regions and their neighbours in memory).
* **simplify** (m): ``shapely.coverage_simplify`` of each block's coverage
  (all classes *and* the nodata regions together), with the block's outer
  edges fixed (``simplify_boundary=False``). Shared edges are simplified
  once for both neighbours, so no gap or overlap appears between adjacent
  polygons, within a block or across blocks (the pieces of a region still
  meet along the straight block edge and are merged). Vertices are only
  removed, never moved; the points where region edges cross a block edge
  are kept, so a little staircase may remain right at block edges.
* **smooth**: two rounds of Chaikin corner cutting on every edge between
  coverage nodes (points shared by 3+ regions, and block edges, stay put);
  both neighbours get the identical edge, so the coverage stays gap-free.
* Every geometry is valid (``shapely.make_valid`` repairs the rare invalid
  one, keeping its polygonal part) and written as a MultiPolygon.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.errors import InputError
from geoseg.models import ClassInfo, ModelCard

UNKNOWN = "unknown"

#: Columns of the output layer, in order (then the geometry).
COLUMNS = ("class_id", "class_name", "area_m2", "perimeter_m", "mean_confidence", "pixel_count",
           "model", "model_version", "stac_items", "datetimes")


# Blocks are polygonized in pixel coordinates: the top-left block's transform is the
# identity, which rasterio reports as "not georeferenced". Silence only that report.
warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning, module=r"rasterio\.features")


class VectorizeWarning(UserWarning):
    """Something the user should know, that does not stop vectorizing."""


# ------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class ClassRaster:
    """What vectorizing needs to know about a class raster (read once, no pixels)."""

    shape: tuple[int, int]
    """(rows, cols)."""
    transform: Affine
    crs: CRS
    nodata: int | None
    """Class value of pixels without data (not vectorized); None if every pixel is classified."""
    classes: tuple[ClassInfo, ...]
    """Known classes: id, name, colour."""
    provenance: Mapping[str, str] = field(default_factory=dict)
    """model, model_version, stac_items, datetimes (those known)."""


def _default_color(i: int) -> tuple[int, int, int]:
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    return palette[i % len(palette)]


def _classes_from_tags(band_tags: Mapping[str, str], colormap: Mapping[int, Sequence[int]] | None, nodata) -> tuple[ClassInfo, ...]:
    names: dict[int, str] = {}
    if "class_names" in band_tags:
        try:
            names = {int(k): str(v) for k, v in json.loads(band_tags["class_names"]).items()}
        except (ValueError, AttributeError):
            names = {}
    for key, value in band_tags.items():
        if key.startswith("CLASS_") and key[6:].isdigit():
            names.setdefault(int(key[6:]), value)
    out = []
    for i, cid in enumerate(sorted(names)):
        rgba = (colormap or {}).get(cid)
        color = tuple(int(v) for v in rgba[:3]) if rgba is not None and (len(rgba) < 4 or rgba[3] > 0) else _default_color(i)
        if 0 <= cid <= 254 and cid != nodata:
            out.append(ClassInfo(id=cid, name=names[cid], color=color))
    return tuple(out)


def describe(source: Any, card: ModelCard | None = None) -> ClassRaster:
    """Grid, nodata, classes and provenance of a class raster path or DataArray.

    Class names and colours come from ``card`` when given, else from the
    raster's metadata (band tags ``class_names`` / ``CLASS_<id>`` and the
    colour table, as :mod:`geoseg.outputs` writes them).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists() and "://" not in str(source):
            raise InputError(f"class raster {str(source)!r} does not exist", fix="give the path of a *_class.tif written by geoseg predict")
        try:
            with rasterio.open(source) as ds:
                if ds.count < 1:
                    raise InputError(f"{str(source)!r} has no band", fix="give a single-band class raster")
                crs, transform, shape, nodata = ds.crs, ds.transform, (ds.height, ds.width), ds.nodata
                tags, band_tags = ds.tags(), ds.tags(1)
                try:
                    cmap = ds.colormap(1)
                except ValueError:
                    cmap = None
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"cannot read class raster {str(source)!r}: {err}", fix="give a GeoTIFF/COG class raster") from None
    else:
        import odc.geo.xr  # noqa: F401

        da = _as_2d(source)
        try:
            gbox = da.odc.geobox
        except Exception:
            gbox = None
        if gbox is None or gbox.crs is None:
            crs = None
            transform, shape = Affine.identity(), da.shape
        else:
            crs, transform, shape = CRS.from_wkt(gbox.crs.to_wkt()), gbox.transform, tuple(gbox.shape)
        nodata = da.attrs.get("nodata", card.nodata_class if card is not None else None)
        tags = {k: str(v) for k, v in da.attrs.items() if isinstance(v, (str, int, float))}
        band_tags, cmap = tags, None
    if crs is None:
        raise InputError(
            f"class raster {source if isinstance(source, (str, Path)) else 'array'!r} has no CRS, so its polygons cannot be placed on a map",
            fix="assign the grid's CRS first, e.g. `rio edit-info --crs EPSG:32631 FILE` or `gdal_edit.py -a_srs EPSG:32631 FILE`",
        )
    if nodata is not None and (isinstance(nodata, float) and math.isnan(nodata)):
        nodata = None
    nodata = None if nodata is None else int(nodata)
    if card is not None:
        classes = tuple(card.classes)
        prov = {"model": card.name, "model_version": card.version}
    else:
        classes = _classes_from_tags(band_tags, cmap, nodata)
        prov = {}
    for key in ("model", "model_version", "stac_items", "datetimes"):
        if key in tags and key not in prov:
            prov[key] = str(tags[key])
    return ClassRaster(shape=tuple(int(v) for v in shape), transform=transform, crs=crs, nodata=nodata, classes=classes, provenance=prov)


def _as_2d(da):
    if da.ndim == 3 and da.shape[0] == 1:
        da = da[0]
    if da.ndim != 2:
        raise InputError(f"class array has dims {da.dims}, expected (y, x)", fix="select one band")
    return da


class _Reader:
    """Reads windows of a path (rasterio) or of a (lazy) DataArray."""

    def __init__(self, source: Any):
        self.ds = self.da = None
        if isinstance(source, (str, Path)):
            self.ds = rasterio.open(source)
        else:
            self.da = _as_2d(source)

    def read(self, win: Window) -> np.ndarray:
        if self.ds is not None:
            return self.ds.read(1, window=win)
        r, c = win.toslices()
        return np.asarray(self.da[r, c].values)

    def close(self) -> None:
        if self.ds is not None:
            self.ds.close()


# ------------------------------------------------------------------ labelling

_SHAPES_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


def _shapes(vals: np.ndarray, transform: Affine) -> tuple[list, np.ndarray]:
    """GDAL polygonize, 4-connected: (GeoJSON-like polygons, value of each with a dummy 0 first)."""
    if vals.dtype.name not in _SHAPES_DTYPES:
        vals = vals.astype("int32")
    geoms, values = [], [0]
    for geom, value in rasterio.features.shapes(vals, connectivity=4, transform=transform):
        geoms.append(geom)
        values.append(value)
    return geoms, np.asarray(values).astype("int64")


def _label(vals: np.ndarray, transform: Affine) -> tuple[np.ndarray, list, np.ndarray]:
    """4-connected regions of equal value: (labels 1..n, GeoJSON-like polygons
    in ``transform``'s coordinates, value of each label (index 0 unused))."""
    geoms, values = _shapes(vals, transform)
    return _rasterize(geoms, range(len(geoms)), vals.shape, transform), geoms, values


def _rasterize(geoms: list, which, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Label image (polygon index + 1) of the polygons ``which``; pixel-aligned, so exact."""
    return rasterio.features.rasterize(((geoms[i], i + 1) for i in which), out_shape=shape, transform=transform, fill=0, dtype="int32")


def _to_shapely(geoms: list) -> np.ndarray:
    """GeoJSON-like polygons to a shapely array, in bulk (much faster than ``shape`` one by one)."""
    if not geoms:
        return np.empty(0, dtype=object)
    coords, ring_len, ring_poly = [], [], []
    for i, g in enumerate(geoms):
        for ring in g["coordinates"]:
            coords.extend(ring)
            ring_len.append(len(ring))
            ring_poly.append(i)
    rings = shapely.linearrings(np.asarray(coords, dtype="float64"), indices=np.repeat(np.arange(len(ring_len)), ring_len))
    return shapely.polygons(rings, indices=np.asarray(ring_poly))


def _edge_labels(polys: np.ndarray, r0: int, c0: int, h: int, w: int) -> dict[str, np.ndarray]:
    """Labels (polygon index + 1) of the block's outermost pixel rows and columns,
    from the polygons cut to each 1-pixel strip (no rasterizing of the block)."""
    strips = {  # the strip's rectangle, and whether it runs along y
        "left": ((c0, r0, c0 + 1, r0 + h), True), "right": ((c0 + w - 1, r0, c0 + w, r0 + h), True),
        "top": ((c0, r0, c0 + w, r0 + 1), False), "bottom": ((c0, r0 + h - 1, c0 + w, r0 + h), False),
    }
    b = shapely.bounds(polys)
    out = {}
    for key, ((x0, y0, x1, y1), vertical) in strips.items():
        cand = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
        # a polygon cut to a 1-pixel strip is one rectangle per run of pixels it covers there
        parts, idx = shapely.get_parts(shapely.clip_by_rect(polys[cand], x0, y0, x1, y1), return_index=True)
        keep = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 0)
        pb, idx = shapely.bounds(parts[keep]), idx[keep]
        start = np.rint(pb[:, 1] - r0 if vertical else pb[:, 0] - c0).astype("int64")
        stop = np.rint(pb[:, 3] - r0 if vertical else pb[:, 2] - c0).astype("int64")
        n = stop - start
        lab = np.zeros(h if vertical else w, dtype="int64")
        pos = np.repeat(start - np.cumsum(n) + n, n) + np.arange(n.sum())
        lab[pos] = np.repeat(cand[idx] + 1, n)
        out[key] = lab
    return out


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p.get(root, root) != root:
            root = p[root]
        while p.get(a, a) != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def _blocks(shape: tuple[int, int], size: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(row index, col index, row0, col0, height, width) of each block, row-major."""
    rows, cols = shape
    for bi, r0 in enumerate(range(0, rows, size)):
        for bj, c0 in enumerate(range(0, cols, size)):
            yield bi, bj, r0, c0, min(size, rows - r0), min(size, cols - c0)


def _edge_pairs(a_gid, a_val, b_gid, b_val, nodata, same: bool):
    """Unique (gid a, gid b) pairs across a border: equal values (same) or different valid values."""
    if same:
        m = a_val == b_val
    else:
        m = a_val != b_val
        if nodata is not None:
            m &= b_val != nodata
    if nodata is not None:
        m &= a_val != nodata
    if not m.any():
        return np.empty((0, 2), dtype="int64")
    return np.unique(np.stack([a_gid[m], b_gid[m]], axis=1), axis=0)


# ------------------------------------------------------------------ sieve (min area)

def _sieve_plan(reader: _Reader, meta: ClassRaster, block: int, min_pixels: int) -> tuple[np.ndarray, list[int]]:
    """First pass for ``min_area``: global regions and their sizes, then the
    sieve decision. Returns (new value per global label, label offset per block)."""
    nodata = meta.nodata
    uf = _UnionFind()
    offsets, sizes, values, pairs, firsts = [], [], [], [], []
    off = 0
    tops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    left = None
    for bi, bj, r0, c0, h, w in _blocks(meta.shape, block):
        vals = reader.read(Window(c0, r0, w, h))
        labels, _, lvals = _label(vals, Affine.translation(c0, r0))
        counts = np.bincount(labels.ravel(), minlength=len(lvals))
        # each region's first pixel in raster order: a tie-break that does not depend on the blocks
        first = np.full(len(lvals), np.iinfo("int64").max, dtype="int64")
        u, idx = np.unique(labels.ravel(), return_index=True)
        first[u] = (r0 + idx // w) * meta.shape[1] + c0 + idx % w
        firsts.append(first)
        offsets.append(off)
        gid = labels.astype("int64") + off
        sizes.append(counts)
        values.append(lvals)
        size_all = np.concatenate(sizes)  # local sizes so far, indexed by gid
        local_small = counts < min_pixels
        # adjacency inside the block (only pairs with a possibly-small side matter)
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            m = a != b
            if nodata is not None:
                m &= (lvals[a] != nodata) & (lvals[b] != nodata)
            m &= local_small[a] | local_small[b]
            if m.any():
                pairs.append(np.unique(np.stack([a[m], b[m]], axis=1), axis=0) + off)
        # across the left / top borders
        for prev, cur_g, cur_v in ((left if bj else None, gid[:, 0], vals[:, 0]), (tops.get(bj) if bi else None, gid[0, :], vals[0, :])):
            if prev is None:
                continue
            pg, pv = prev
            for g1, g2 in _edge_pairs(pg, pv, cur_g, cur_v, nodata, same=True):
                uf.union(int(g1), int(g2))
            diff = _edge_pairs(pg, pv, cur_g, cur_v, nodata, same=False)
            if len(diff):
                diff = diff[(size_all[diff[:, 0]] < min_pixels) | (size_all[diff[:, 1]] < min_pixels)]
                pairs.append(diff)
        left = (gid[:, -1].copy(), vals[:, -1].copy())
        tops[bj] = (gid[-1, :].copy(), vals[-1, :].copy())
        off += len(lvals)
    size = np.concatenate(sizes).astype("int64")
    value = np.concatenate(values)
    root = np.arange(off, dtype="int64")
    for g in list(uf.parent):
        root[g] = uf.find(g)
    # labels 0 of each block are unused: give them no size and nodata-like value
    for o in offsets:
        size[o] = 0
    root_size = np.bincount(root, weights=size, minlength=off).astype("int64")
    key = np.full(off, np.iinfo("int64").max, dtype="int64")
    np.minimum.at(key, root, np.concatenate(firsts))
    valid = np.ones(off, bool) if nodata is None else value != nodata
    valid[offsets] = False
    small_root = (root_size < min_pixels) & valid & (root == np.arange(off))
    new_value = value.copy()
    if not small_root.any():
        return new_value, offsets
    edges = np.concatenate(pairs) if pairs else np.empty((0, 2), dtype="int64")
    edges = root[edges]
    edges = edges[edges[:, 0] != edges[:, 1]]
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    adj: dict[int, set[int]] = {}
    for a, b in edges.tolist():
        if small_root[a]:
            adj.setdefault(a, set()).add(b)
        if small_root[b]:
            adj.setdefault(b, set()).add(a)
    cur: dict[int, int] = {}
    absorbed = _UnionFind()
    dropped: set[int] = set()
    heap = [(int(root_size[r]), int(key[r]), int(r)) for r in np.flatnonzero(small_root)]
    heapq.heapify(heap)
    while heap:
        s, _, r = heapq.heappop(heap)
        if absorbed.find(r) != r or r in dropped or s != cur.get(r, int(root_size[r])) or s >= min_pixels:
            continue
        nbrs = {absorbed.find(n) for n in adj.get(r, ())} - {r} - dropped
        if not nbrs:
            dropped.add(r)
            continue
        t = max(nbrs, key=lambda n: (cur.get(n, int(root_size[n])), -key[n]))
        absorbed.parent[r] = t
        cur[t] = cur.get(t, int(root_size[t])) + s
        if cur[t] < min_pixels:
            adj.setdefault(t, set()).update(adj.get(r, ()))
            heapq.heappush(heap, (cur[t], int(key[t]), t))
    final_value: dict[int, int] = {}
    for r in np.flatnonzero(small_root).tolist():
        f = absorbed.find(r)
        final_value[r] = nodata if (f in dropped and nodata is not None) else int(value[f])
    small_gids = np.flatnonzero(small_root[root] & valid)
    new_value[small_gids] = [final_value[int(r)] for r in root[small_gids]]
    return new_value, offsets


# ------------------------------------------------------------------ smoothing

def _chaikin_ring(xy: np.ndarray, fixed: np.ndarray, rounds: int) -> np.ndarray:
    """Chaikin corner cutting of a closed ring (``xy`` without the closing
    point); ``fixed`` vertices stay. Symmetric under reversal of the ring, so
    two polygons sharing an edge get the same result."""
    for _ in range(rounds):
        nxt, fnxt = np.roll(xy, -1, axis=0), np.roll(fixed, -1)
        q = 0.75 * xy + 0.25 * nxt
        r = 0.25 * xy + 0.75 * nxt
        pts = np.stack([xy, q, r], axis=1)
        keep = np.stack([fixed, ~fixed, ~fnxt], axis=1)
        newfixed = np.stack([fixed, np.zeros_like(fixed), np.zeros_like(fixed)], axis=1)[keep]
        xy, fixed = pts[keep], newfixed
    return xy


def _smooth_coverage(polys: np.ndarray, box: tuple[float, float, float, float], rounds: int = 2) -> np.ndarray:
    """Chaikin-smooth every edge of a coverage between its nodes (vertices of
    3+ polygons, and vertices on the block box)."""
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    poly_of_coord = ring_poly[ring_idx]
    key = np.unique(np.column_stack([coords, poly_of_coord]), axis=0)
    uniq, inv_key = np.unique(key[:, :2], axis=0, return_inverse=True)
    npolys = np.bincount(inv_key.ravel(), minlength=len(uniq))
    # node flags per coordinate: look up each coordinate's row in uniq
    pos = np.searchsorted(_lexkey(uniq), _lexkey(coords))
    x0, y0, x1, y1 = box
    fixed = (npolys[pos] >= 3) | (coords[:, 0] == x0) | (coords[:, 0] == x1) | (coords[:, 1] == y0) | (coords[:, 1] == y1)
    starts = np.searchsorted(ring_idx, np.arange(len(rings)))
    ends = np.append(starts[1:], len(coords))
    new_coords, new_idx = [], []
    for k in range(len(rings)):
        s, e = starts[k], ends[k] - 1  # drop the closing point
        sm = _chaikin_ring(coords[s:e], fixed[s:e], rounds)
        new_coords.append(np.vstack([sm, sm[:1]]))
        new_idx.append(np.full(len(sm) + 1, k))
    new_rings = shapely.linearrings(np.vstack(new_coords), indices=np.concatenate(new_idx))
    return shapely.polygons(new_rings, indices=ring_poly)


def _lexkey(xy: np.ndarray) -> np.ndarray:
    """Sortable complex key of (x, y) rows: np.unique(axis=0) order == lexicographic == complex order."""
    return xy[:, 0] + 1j * xy[:, 1]


# ------------------------------------------------------------------ main pass

@dataclass
class _Piece:
    geom: Any
    cls: int
    count: int
    csum: float
    cn: int
    row: int
    bottom: bool


@dataclass
class _Block:
    """One polygonized block (computed in a worker thread)."""

    values: np.ndarray
    """Class value per label (index 0 unused)."""
    valid: np.ndarray
    polys: np.ndarray
    """Polygon per label, pixel coordinates (index 0 None)."""
    counts: np.ndarray
    csum: np.ndarray
    cn: np.ndarray
    edges: dict
    """Labels of the outermost pixel rows/columns: left, right, top, bottom."""
    edge_values: dict
    """Class values of those pixels."""


def _polygonize_block(k: int, r0: int, c0: int, vals: np.ndarray, cvals: np.ndarray | None, nodata, sieve,
                      tol_px: float, smooth: bool) -> _Block:
    h, w = vals.shape
    tf = Affine.translation(c0, r0)
    if sieve is not None:
        new_value, offsets = sieve
        raw_labels, _, _ = _label(vals, tf)
        vals = new_value[raw_labels + offsets[k]].astype(vals.dtype)
    geoms, lvals = _shapes(vals, tf)
    n = len(lvals)
    valid = np.ones(n, bool) if nodata is None else lvals != nodata
    valid[0] = False
    polys = np.concatenate([[None], _to_shapely(geoms)])
    edges = _edge_labels(polys[1:], r0, c0, h, w)
    counts = np.zeros(n, dtype="int64")
    csum, cn = np.zeros(n), np.zeros(n, dtype="int64")
    if valid.any():
        counts[1:] = np.rint(shapely.area(polys[1:]))  # pixel coordinates: area == pixel count
        if cvals is not None:
            labels = _rasterize(geoms, range(len(geoms)), vals.shape, tf)
            c = cvals.astype("float64")
            fin = np.isfinite(c)
            csum = np.bincount(labels[fin], weights=c[fin], minlength=n)
            cn = np.bincount(labels[fin], minlength=n)
        if tol_px > 0 or smooth:
            # GDAL's polygons do not share vertices where edges meet side-on (T-junctions):
            # a vertex at every pixel corner makes shared edges match, as the coverage
            # functions need; simplifying with tolerance 0 then drops the collinear ones.
            polys[1:] = shapely.coverage_simplify(shapely.segmentize(polys[1:], 1.0), tol_px, simplify_boundary=False)
            if smooth:
                polys[1:] = _smooth_coverage(polys[1:], (c0, r0, c0 + w, r0 + h))
    edge_values = {"left": vals[:, 0].copy(), "right": vals[:, -1].copy(), "top": vals[0, :].copy(), "bottom": vals[-1, :].copy()}
    return _Block(lvals, valid, polys, counts, csum, cn, edges, edge_values)


@contextlib.contextmanager
def _warnings_kept():
    """Restore the process's warning filters and handlers after the worker threads.

    ``warnings.catch_warnings`` is not thread-safe, and shapely calls it inside
    functions the workers use (``is_valid``, ``total_bounds``): two workers
    entering and leaving it at once can leave a stale state behind, e.g. an
    "ignore everything" filter that would silence every later warning of the
    process (ours and the caller's). The state is put back once they are done.
    """
    filters, show, impl = warnings.filters[:], warnings.showwarning, getattr(warnings, "_showwarnmsg_impl", None)
    try:
        yield
    finally:
        warnings.filters[:] = filters
        warnings.showwarning = show
        if impl is not None:
            warnings._showwarnmsg_impl = impl
        warnings._filters_mutated()


def _computed_blocks(reader: _Reader, conf: _Reader | None, meta: ClassRaster, block: int, sieve, tol_px: float, smooth: bool,
                     workers: int = 2):
    """(block position, _Block) in row-major order; reads in this thread, polygonizes
    in ``workers`` threads (GDAL and GEOS release the GIL), at most workers + 1 blocks in flight."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    todo = iter(enumerate(_blocks(meta.shape, block)))
    queue: deque = deque()
    with _warnings_kept(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geoseg-vectorize") as ex:
        def submit() -> bool:
            nxt = next(todo, None)
            if nxt is None:
                return False
            k, (bi, bj, r0, c0, h, w) = nxt
            win = Window(c0, r0, w, h)
            vals = reader.read(win)
            cvals = conf.read(win) if conf is not None else None
            queue.append(((bi, bj, r0, c0, h, w), ex.submit(_polygonize_block, k, r0, c0, vals, cvals, meta.nodata, sieve, tol_px, smooth)))
            return True

        for _ in range(workers + 1):
            if not submit():
                break
        while queue:
            pos, fut = queue.popleft()
            result = fut.result()
            submit()
            yield pos, result


def _pieces(reader: _Reader, conf: _Reader | None, meta: ClassRaster, block: int, sieve, tol_px: float, smooth: bool,
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield chunks of regions: (geometries in pixel coords, class, pixel count, confidence sum, confidence count)."""
    nodata = meta.nodata
    rows, cols = meta.shape
    uf = _UnionFind()
    pending: dict[int, _Piece] = {}
    tops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    left = None
    off = 0
    cur_row = 0
    for (bi, bj, r0, c0, h, w), b in _computed_blocks(reader, conf, meta, block, sieve, tol_px, smooth):
        if bi != cur_row:
            yield _flush(pending, uf, cur_row, block)
            cur_row = bi
        joined = set()
        for prev, side in ((left if bj else None, "left"), (tops.get(bj) if bi else None, "top")):
            if prev is None:
                continue
            for g1, g2 in _edge_pairs(prev[0], prev[1], b.edges[side] + off, b.edge_values[side], nodata, same=True).tolist():
                uf.union(g1, g2)
                joined.add(g2 - off)
        right = set(np.unique(b.edges["right"]).tolist()) if c0 + w < cols else set()
        bottom = set(np.unique(b.edges["bottom"]).tolist()) if r0 + h < rows else set()
        keep = joined | right | bottom
        kept = np.zeros(len(b.values), bool)
        kept[list(keep)] = True
        for lab in np.flatnonzero(kept & b.valid).tolist():
            pending[lab + off] = _Piece(b.polys[lab], int(b.values[lab]), int(b.counts[lab]), float(b.csum[lab]), int(b.cn[lab]), bi, lab in bottom)
        final = np.flatnonzero(~kept & b.valid)
        yield b.polys[final], b.values[final], b.counts[final], b.csum[final], b.cn[final]
        left = (b.edges["right"] + off, b.edge_values["right"])
        tops[bj] = (b.edges["bottom"] + off, b.edge_values["bottom"])
        off += len(b.values)
    yield _flush(pending, uf, None, block)


def _merge(pieces: list, block: int):
    """Union of the pieces of one region, which meet only along block edges.

    A piece's holes lie inside it and never touch its block's edges, so only
    the outer rings take part: they get a vertex at every pixel corner of
    their edges lying on block lines (shared edges then match vertex for
    vertex) and GEOS's coverage union dissolves them (linear time); the
    pieces' holes are then added back. Checked by area; falls back to a
    general ``union_all`` if ever needed.
    """
    arr = np.asarray(pieces, dtype=object)
    shells = shapely.polygons(shapely.get_exterior_ring(arr))
    try:
        merged = shapely.coverage_union_all(_densify_block_edges(shells, block))
    except shapely.errors.GEOSException:  # e.g. pieces touching at a point off the block lines
        merged = None
    if merged is not None and merged.geom_type == "Polygon" and abs(merged.area - shapely.area(shells).sum()) <= 1e-9 * max(1.0, merged.area):
        holes = [r for p in arr for r in p.interiors]
        return shapely.Polygon(merged.exterior, list(merged.interiors) + holes) if holes else merged
    return shapely.union_all(arr)


def _densify_block_edges(polys: np.ndarray, block: int) -> np.ndarray:
    """Insert a vertex at every integer point of the ring segments lying on a block line (x or y a multiple of ``block``)."""
    rings, ring_poly = shapely.get_rings(polys, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    same = ring[:-1] == ring[1:]
    a, b = xy[:-1], xy[1:]
    on = same & (((a[:, 0] == b[:, 0]) & (a[:, 0] % block == 0)) | ((a[:, 1] == b[:, 1]) & (a[:, 1] % block == 0)))
    steps = np.where(on, np.rint(np.abs(b - a).sum(axis=1)), 1).astype("int64")
    counts = np.ones(len(xy), dtype="int64")
    counts[:-1] = np.where(same, np.maximum(steps, 1), 1)
    delta = np.zeros_like(xy)
    delta[:-1] = np.where(on[:, None], (b - a) / np.maximum(steps, 1)[:, None], 0.0)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    new = np.repeat(xy, counts, axis=0) + np.repeat(delta, counts, axis=0) * k[:, None]
    return shapely.polygons(shapely.linearrings(new, indices=np.repeat(ring, counts)), indices=ring_poly)


def _flush(pending: dict[int, _Piece], uf: _UnionFind, row: int | None, block: int):
    """The groups of pending pieces that can no longer grow (none of their
    pieces touches the bottom of block row ``row``; all if None), merged, as one chunk."""
    groups: dict[int, list[int]] = {}
    for g in pending:
        groups.setdefault(uf.find(g), []).append(g)
    out = []
    for members in groups.values():
        if row is not None and any(pending[g].bottom and pending[g].row == row for g in members):
            continue
        pieces = [pending.pop(g) for g in members]
        geom = pieces[0].geom if len(pieces) == 1 else _merge([p.geom for p in pieces], block)
        out.append((geom, pieces[0].cls, sum(p.count for p in pieces), sum(p.csum for p in pieces), sum(p.cn for p in pieces)))
    geoms = np.empty(len(out), dtype=object)
    geoms[:] = [o[0] for o in out]
    return (geoms, np.array([o[1] for o in out], dtype="int64"), np.array([o[2] for o in out], dtype="int64"),
            np.array([o[3] for o in out], dtype="float64"), np.array([o[4] for o in out], dtype="int64"))


# ------------------------------------------------------------------ public API

def _metres(meta: ClassRaster) -> tuple[float, float, bool]:
    """(metres per pixel along x, along y, planar?) of the grid."""
    t = meta.transform
    px, py = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    if meta.crs.is_projected:
        f = meta.crs.linear_units_factor[1]
        return px * f, py * f, True
    # geographic: metres at the grid's centre latitude (approximate, documented)
    lat = (t * (meta.shape[1] / 2, meta.shape[0] / 2))[1]
    return px * 111_320.0 * math.cos(math.radians(lat)), py * 110_574.0, False


def vectorize(
    classes: str | Path | Any,
    out: str | Path | None = None,
    *,
    confidence: str | Path | Any | None = None,
    card: ModelCard | None = None,
    layer: str | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    smooth: bool = False,
    crs: str | None = None,
    block_size: int = 1024,
    batch_size: int = 100_000,
    provenance: Mapping[str, str] | None = None,
    overwrite: bool = False,
    append: bool = False,
):
    """Vectorize a class raster: one polygon per connected region of a class.

    Parameters
    ----------
    classes : path of a class COG (``*_class.tif`` from ``geoseg predict``), or a (y, x) DataArray on an odc-geo grid.
    out : GeoPackage to write (layer ``layer``); None returns a GeoDataFrame instead.
    confidence : confidence raster on the same grid (path or DataArray); gives ``mean_confidence``.
    card : model card; class names and colours from it instead of the raster's metadata.
    layer : layer name (default: the raster's file stem, or ``classes``).
    min_area : m²; smaller regions are merged into their largest neighbour (holes filled), see the module docstring.
    simplify : m; coverage-preserving simplification tolerance.
    smooth : Chaikin smoothing of the (simplified) edges, coverage-preserving.
    crs : write geometries in this CRS (default: the raster's). Areas and perimeters are always measured on the raster's grid.
    block_size : pixels per block side; memory scales with its square.
    provenance : extra provenance (overrides the raster's tags): model, model_version, stac_items, datetimes.
    overwrite, append : see :func:`geoseg.gpkg.write_layer`.

    Returns the written GeoPackage path, or the GeoDataFrame when ``out`` is None.
    Warns (:class:`VectorizeWarning`) on class values not in the card (kept,
    named "unknown") and on a raster without any classified pixel (an empty layer).
    """
    import geopandas as gpd

    from geoseg.gpkg import LayerStyle, categories, write_layer

    if block_size < 16:
        raise InputError(f"block_size {block_size} is too small", fix="use at least 16 (default 1024)")
    if min_area < 0 or simplify < 0:
        raise InputError("min_area and simplify must be >= 0 metres", fix="give a positive value, or leave them out")
    meta = describe(classes, card)
    prov = {**meta.provenance, **(provenance or {})}
    layer = layer or (Path(classes).stem if isinstance(classes, (str, Path)) else "classes")
    out_crs = None
    if crs:
        try:
            out_crs = CRS.from_user_input(crs)
        except Exception as err:
            raise InputError(f"cannot understand CRS {crs!r}: {err}", fix="give e.g. EPSG:4326 or EPSG:32631") from None
    mx, my, planar = _metres(meta)
    pixel_m2 = mx * my
    reader = _Reader(classes)
    conf_reader = None
    try:
        if confidence is not None:
            cmeta = describe_grid(confidence)
            if cmeta[0] != meta.shape or not cmeta[1].almost_equals(meta.transform) or (cmeta[2] is not None and cmeta[2] != meta.crs):
                raise InputError("the confidence raster is not on the class raster's grid", fix="give the *_confidence.tif written with this *_class.tif")
            conf_reader = _Reader(confidence)
        sieve = None
        min_pixels = math.ceil(min_area / pixel_m2 - 1e-9) if min_area > 0 else 0
        if min_pixels > 1:
            sieve = _sieve_plan(reader, meta, block_size, min_pixels)
        tol_px = simplify / math.sqrt(pixel_m2) if simplify > 0 else 0.0
        names = {c.id: c.name for c in meta.classes}
        # GDAL's polygons and their unions are valid by construction; simplified or smoothed ones are checked
        check = tol_px > 0 or smooth
        unknown: set[int] = set()
        n_out = [0]

        def frames() -> Iterator[gpd.GeoDataFrame]:
            chunks: list = []
            size = 0
            for chunk in _pieces(reader, conf_reader, meta, block_size, sieve, tol_px, smooth):
                if len(chunk[0]):
                    chunks.append(chunk)
                    size += len(chunk[0])
                if size >= batch_size:
                    yield _frame(_cat(chunks), meta, names, unknown, prov, out_crs, planar, check)
                    n_out[0] += size
                    chunks, size = [], 0
            if chunks or n_out[0] == 0:
                n_out[0] += size
                yield _frame(_cat(chunks), meta, names, unknown, prov, out_crs, planar, check)

        def style() -> LayerStyle:
            return LayerStyle("class_id", categories(meta.classes, unknown))

        def warn_after(gen):
            yield from gen
            if unknown:
                warnings.warn(
                    f"class values {sorted(unknown)} are not classes of {'the model card' if card else 'the raster metadata'} "
                    f"({', '.join(f'{c.id}={c.name}' for c in meta.classes) or 'none known'}); their polygons are named {UNKNOWN!r}",
                    VectorizeWarning, stacklevel=4)
            if n_out[0] == 0:
                warnings.warn("the class raster has no classified pixel (all nodata): the layer is empty", VectorizeWarning, stacklevel=4)

        metadata = {**prov, "classes": json.dumps({str(c.id): {"name": c.name, "color": list(c.color)} for c in meta.classes}),
                    "min_area_m2": str(min_area), "simplify_m": str(simplify), "smooth": str(bool(smooth)),
                    "connectivity": "4", "source": str(classes) if isinstance(classes, (str, Path)) else "array",
                    "generator": "geoseg.vectorize"}
        if out is None:
            parts = list(warn_after(frames()))
            gdf = parts[0] if len(parts) == 1 else gpd.GeoDataFrame(_concat(parts), crs=parts[0].crs)
            gdf.attrs.update(metadata)
            return gdf
        return write_layer(warn_after(frames()), out, layer, metadata=metadata, style=style,
                           description=f"geoseg classes of {metadata['source']}", overwrite=overwrite, append=append)
    finally:
        reader.close()
        if conf_reader is not None:
            conf_reader.close()


def _cat(chunks: list) -> tuple:
    if not chunks:
        return (np.empty(0, dtype=object), np.empty(0, "int64"), np.empty(0, "int64"), np.empty(0), np.empty(0, "int64"))
    return tuple(np.concatenate([c[i] for c in chunks]) for i in range(5))


def _concat(parts):
    import pandas as pd

    return pd.concat(parts, ignore_index=True)


def describe_grid(source: Any) -> tuple[tuple[int, int], Affine, CRS | None]:
    """(shape, transform, crs) of a raster path or DataArray."""
    if isinstance(source, (str, Path)):
        try:
            with rasterio.open(source) as ds:
                return (ds.height, ds.width), ds.transform, ds.crs
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"cannot read raster {str(source)!r}: {err}", fix="check the path") from None
    import odc.geo.xr  # noqa: F401

    gbox = _as_2d(source).odc.geobox
    return tuple(gbox.shape), gbox.transform, CRS.from_wkt(gbox.crs.to_wkt()) if gbox.crs else None


def _frame(batch, meta: ClassRaster, names, unknown: set, prov, out_crs, planar: bool, check_valid: bool):
    import geopandas as gpd
    import pandas as pd

    t = meta.transform
    geoms, cls, counts, csum, cn = batch
    if len(geoms):
        geoms = shapely.transform(geoms, lambda xy: np.column_stack([t.a * xy[:, 0] + t.b * xy[:, 1] + t.c, t.d * xy[:, 0] + t.e * xy[:, 1] + t.f]))
        bad = ~shapely.is_valid(geoms) if check_valid else np.zeros(len(geoms), bool)
        if bad.any():
            geoms[bad] = [_polygonal(g) for g in shapely.make_valid(geoms[bad])]
    for v in set(cls.tolist()) - set(names):
        unknown.add(v)
    if planar:
        f = meta.crs.linear_units_factor[1]
        area, perim = shapely.area(geoms) * f * f, shapely.length(geoms) * f
    else:
        from pyproj import Geod

        geod = Geod(ellps="WGS84")
        ap = [geod.geometry_area_perimeter(g) for g in geoms]
        area = np.array([abs(a) for a, _ in ap]); perim = np.array([p for _, p in ap])
    cn = cn.astype("float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(cn > 0, csum / np.maximum(cn, 1), np.nan)
    df = pd.DataFrame({
        "class_id": pd.Series(cls, dtype="int32"),
        "class_name": pd.Series([names.get(c, UNKNOWN) for c in cls.tolist()], dtype=object),
        "area_m2": pd.Series(area, dtype="float64"),
        "perimeter_m": pd.Series(perim, dtype="float64"),
        "mean_confidence": pd.Series(mean_conf, dtype="float64"),
        "pixel_count": pd.Series(counts, dtype="int64"),
        **{k: pd.Series([prov.get(k, "")] * len(cls), dtype=object) for k in ("model", "model_version", "stac_items", "datetimes")},
    })
    gdf = gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms, crs=meta.crs.to_wkt()), crs=meta.crs.to_wkt())
    if out_crs is not None and out_crs != meta.crs:
        gdf = gdf.to_crs(out_crs.to_wkt())
    return gdf


def _polygonal(g):
    """The polygonal part of a repaired geometry."""
    if g.geom_type in ("Polygon", "MultiPolygon"):
        return g
    parts = [p for p in getattr(g, "geoms", []) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()
