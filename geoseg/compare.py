"""Change between two dates: scene pairing, class transitions, area tables.

* :func:`pair_scenes` picks the best scene(s) in a "before" and an "after"
  date window (least cloud over the region, mosaicking a day's scenes when the
  region spans several), refuses pairs that cannot work, and says which dates
  were used.
* :func:`transition_codes` turns two class rasters into one from→to raster
  (code ``i * K + j`` for the i-th and j-th classes of the card; ``255``:
  unknown, where either date is nodata). :func:`transition_colormap` and
  :func:`transition_names` describe it ("water → land").
* :func:`transition_table` counts areas streaming, block by block: hectares
  per (from, to), and the unknown area, which is never counted as change or
  no change.
* :func:`change_probability` is the model-based route: the probability of the
  card's change class from a bi-temporal model.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import dask
import dask.array as dsa
import numpy as np
import odc.geo.xr  # noqa: F401  (the .odc accessor)
import pystac
import xarray as xr
from odc.geo.geom import Geometry

from geoseg.catalog import make_query, parse_interval, search
from geoseg.errors import InputError, NoDataError
from geoseg.fetch import footprint
from geoseg.models import ModelCard
from geoseg.region import RegionLike, to_region

UNKNOWN = 255


class ChangeError(InputError):
    """A change request that cannot be served as given."""


class NoSceneError(NoDataError):
    """A date window with no usable scene over the region (exit code 3)."""


@dataclass(frozen=True)
class Pair:
    """The scenes chosen for each date window (several when mosaicked)."""

    before: tuple[pystac.Item, ...]
    after: tuple[pystac.Item, ...]

    @property
    def dates(self) -> tuple[str, str]:
        return (f"{self.before[0].datetime:%Y-%m-%d}", f"{self.after[0].datetime:%Y-%m-%d}")

    def describe(self) -> str:
        b, a = self.dates
        return (f"before {b} ({', '.join(it.id for it in self.before)}), "
                f"after {a} ({', '.join(it.id for it in self.after)})")


def _day(item: pystac.Item) -> dt.date:
    return item.datetime.date()


def best_day(items: Sequence[pystac.Item], region: Geometry) -> tuple[pystac.Item, ...]:
    """Scenes of the day that covers ``region`` best, then has the least cloud.

    Items of the same day are mosaicked (a region across two tiles); coverage
    is the share of the region inside the day's footprints; cloud is the
    area-weighted ``eo:cloud_cover`` of those scenes.
    """
    by_day: dict[dt.date, list[pystac.Item]] = defaultdict(list)
    for it in items:
        by_day[_day(it)].append(it)

    def score(day_items):
        scenes = footprint(day_items)
        coverage = scenes.intersection(region).area / region.area if region.area else 1.0
        weights = [max(Geometry(it.geometry, crs="EPSG:4326").intersection(region).area, 1e-12) for it in day_items]
        clouds = [it.properties.get("eo:cloud_cover", 100.0) for it in day_items]
        cloud = float(np.average(clouds, weights=weights))
        return (-round(coverage, 3), cloud, _day(day_items[0]))

    best = min(by_day.values(), key=score)
    return tuple(sorted(best, key=lambda it: it.id))


def _nearest_dates(source, region, collections, window: str, max_cloud) -> str:
    try:
        everything = search(source, make_query(collections=collections, region=region, max_cloud_cover=max_cloud))
    except NoDataError:
        return "the catalog has no scene over this region at all"
    start, end = parse_interval(window)
    mid = start or end
    days = sorted({_day(it) for it in everything}, key=lambda d: abs((dt.datetime.combine(d, dt.time(), dt.timezone.utc) - mid).days) if mid else 0)
    return "nearest available dates: " + ", ".join(str(d) for d in days[:4])


def pair_scenes(
    source: str,
    region: RegionLike,
    before: str,
    after: str,
    *,
    collections: str | Sequence[str] = (),
    max_cloud_cover: float | None = None,
) -> Pair:
    """Choose the scenes for a before/after comparison over ``region``.

    Raises :class:`ChangeError` for a window with no scene (naming the window
    and the nearest available dates), for windows that pick the same scene,
    and for scenes whose footprints do not overlap over the region.
    """
    region = to_region(region)
    chosen = []
    for name, window in (("before", before), ("after", after)):
        try:
            items = search(source, make_query(collections=collections, region=region, datetime=window, max_cloud_cover=max_cloud_cover))
        except NoDataError:
            raise NoSceneError(
                f"no scene in the {name} window {window!r} over the region"
                + (f" with at most {max_cloud_cover:g}% cloud" if max_cloud_cover is not None else "")
                + f"; {_nearest_dates(source, region, collections, window, max_cloud_cover)}",
                fix=f"widen the {name} window or the cloud limit",
            ) from None
        chosen.append(best_day(items, region))
    pair = Pair(before=chosen[0], after=chosen[1])
    same = {it.id for it in pair.before} & {it.id for it in pair.after}
    if same:
        raise ChangeError(
            f"the before and after windows both chose scene {', '.join(sorted(same))}",
            fix="give two windows that do not share a scene (e.g. consecutive years)",
        )
    if pair.before[0].datetime >= pair.after[0].datetime:
        raise ChangeError(f"the before scene ({pair.dates[0]}) is not earlier than the after scene ({pair.dates[1]})",
                          fix="swap the windows: before first")
    overlap = footprint(pair.before).intersection(footprint(pair.after)).intersection(region)
    if overlap.is_empty or overlap.area == 0:
        raise ChangeError(f"the before and after scenes do not overlap over the region ({pair.describe()})",
                          fix="choose a region both dates cover")
    return pair


# ------------------------------------------------------------ transitions

def transition_codes(before: xr.DataArray, after: xr.DataArray, card: ModelCard) -> xr.DataArray:
    """From→to codes (uint8): ``i * K + j`` for class indices i (before), j
    (after); :data:`UNKNOWN` where either date is the card's nodata class or
    an id the card does not know."""
    if before.odc.geobox != after.odc.geobox:
        raise ChangeError("the two class rasters are not on the same grid", fix="load both dates onto one geobox")
    K = len(card.classes)
    if K * K > UNKNOWN:
        raise ChangeError(f"{K} classes give {K * K} transitions, more than a uint8 raster holds", fix="merge classes first")
    lut = np.full(256, -1, dtype="int16")
    for i, c in enumerate(card.classes):
        lut[c.id] = i

    def _codes(b, a):
        bi, ai = lut[b], lut[a]
        out = (bi * K + ai).astype("uint8")
        out[(bi < 0) | (ai < 0)] = UNKNOWN
        return out

    b = before.data if isinstance(before.data, dsa.Array) else dsa.from_array(np.asarray(before.data), chunks=1024)
    a = after.data if isinstance(after.data, dsa.Array) else dsa.from_array(np.asarray(after.data), chunks=b.chunks)
    codes = dsa.map_blocks(_codes, b, a.rechunk(b.chunks), dtype="uint8")
    coords = {k: v for k, v in before.coords.items() if set(v.dims) <= {"y", "x"}}
    return xr.DataArray(codes, dims=("y", "x"), coords=coords, name="transition", attrs={"nodata": UNKNOWN})


def transition_names(card: ModelCard) -> dict[int, str]:
    K = len(card.classes)
    return {i * K + j: (f"{a.name} (no change)" if i == j else f"{a.name} → {b.name}")
            for i, a in enumerate(card.classes) for j, b in enumerate(card.classes)}


#: Strong, distinct colours for changes (a change *to* a pale class must not vanish into the pale no-change background).
CHANGE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207))


def transition_colormap(card: ModelCard) -> dict[int, tuple[int, int, int, int]]:
    """No change: the class colour faded to 35 % toward white; each change
    its own strong colour (:data:`CHANGE_COLORS`); unknown: transparent."""
    K = len(card.classes)
    cmap = {}
    n = 0
    for i, a in enumerate(card.classes):
        for j in range(K):
            if i == j:
                cmap[i * K + j] = tuple(int(255 - 0.35 * (255 - c)) for c in a.color) + (255,)
            else:
                cmap[i * K + j] = (*CHANGE_COLORS[n % len(CHANGE_COLORS)], 255)
                n += 1
    cmap[UNKNOWN] = (0, 0, 0, 0)
    return cmap


def transition_card(card: ModelCard, *, changes_only: bool = False) -> ModelCard:
    """A card whose classes are ``card``'s from→to transitions (ids as
    :func:`transition_codes` writes them, names from :func:`transition_names`,
    colours from :func:`transition_colormap`; nodata = unknown): legends,
    :func:`geoseg.vectorize.vectorize` and QGIS styles take it like any card."""
    from geoseg.models import ClassInfo

    names, cmap = transition_names(card), transition_colormap(card)
    K = len(card.classes)
    codes = [c for c in sorted(names) if not changes_only or c // K != c % K]
    classes = tuple(ClassInfo(id=c, name=names[c], color=cmap[c][:3]) for c in codes)
    return card.model_copy(update={"classes": classes, "nodata_class": UNKNOWN})


@dataclass(frozen=True)
class TransitionTable:
    """Areas of every from→to pair, in hectares, and of unknown pixels."""

    classes: tuple[str, ...]
    hectares: np.ndarray
    """(K, K): row = before class, column = after class."""
    unknown_ha: float
    pixel_area_m2: float

    @property
    def valid_ha(self) -> float:
        return float(self.hectares.sum())

    @property
    def changed_ha(self) -> float:
        return float(self.hectares.sum() - np.trace(self.hectares))

    def rows(self) -> list[dict]:
        """One row per from→to pair (including no-change pairs), for CSV and GeoPackage tables."""
        out = []
        for i, a in enumerate(self.classes):
            for j, b in enumerate(self.classes):
                out.append({"from_class": a, "to_class": b, "changed": int(i != j), "area_ha": round(float(self.hectares[i, j]), 4)})
        return out

    def to_csv(self, path) -> None:
        import csv

        from geoseg.io import atomic_path

        with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["from \\ to (ha)", *self.classes, "total"])
            for i, a in enumerate(self.classes):
                w.writerow([a, *(f"{v:.4f}" for v in self.hectares[i]), f"{self.hectares[i].sum():.4f}"])
            w.writerow(["total", *(f"{v:.4f}" for v in self.hectares.sum(axis=0)), f"{self.valid_ha:.4f}"])
            w.writerow(["unknown (nodata or cloud in either date)", *[""] * len(self.classes), f"{self.unknown_ha:.4f}"])

    def to_markdown(self) -> str:
        head = "| from \\ to (ha) | " + " | ".join(self.classes) + " |"
        sep = "|---" * (len(self.classes) + 1) + "|"
        body = [f"| {a} | " + " | ".join(f"{v:.2f}" for v in self.hectares[i]) + " |" for i, a in enumerate(self.classes)]
        return "\n".join([head, sep, *body, "", f"changed: {self.changed_ha:.2f} ha of {self.valid_ha:.2f} ha seen; "
                          f"unknown (not seen on both dates): {self.unknown_ha:.2f} ha"])


def transition_table(codes: xr.DataArray, card: ModelCard) -> TransitionTable:
    """Count every code block by block (one dask pass, bounded memory)."""
    K = len(card.classes)
    data = codes.data if isinstance(codes.data, dsa.Array) else dsa.from_array(np.asarray(codes.data), chunks=1024)
    count = dask.delayed(lambda block: np.bincount(block.ravel(), minlength=256), pure=True)
    total = np.sum(dask.compute(*[count(b) for b in data.to_delayed().ravel()]), axis=0)
    gbox = codes.odc.geobox
    px = abs(gbox.resolution.x * gbox.resolution.y)
    ha = total[: K * K].reshape(K, K) * px / 1e4
    return TransitionTable(classes=tuple(c.name for c in card.classes), hectares=ha,
                           unknown_ha=float(total[UNKNOWN] * px / 1e4), pixel_area_m2=float(px))


def change_probability(probs: xr.DataArray, card: ModelCard, change_class: int | str | None = None) -> xr.DataArray:
    """The probability of the change class from a bi-temporal model's output
    (default: the class whose name contains "change" and not "no")."""
    if card.time_steps != 2:
        raise ChangeError(f"model {card.name!r} is single-date; model-based change needs a bi-temporal card",
                          fix="use post-classification change with this model, or a bi-temporal model such as oscd-urban-change")
    if change_class is None:
        named = [c for c in card.classes if "change" in c.name.lower() and not c.name.lower().startswith("no")]
        if len(named) != 1:
            raise ChangeError(f"cannot tell which class of {card.name!r} means change", fix="pass change_class=ID")
        change_class = named[0].id
    elif isinstance(change_class, str):
        change_class = next(c.id for c in card.classes if c.name == change_class)
    return probs.sel({"class": change_class}).rename("change_probability")


# ------------------------------------------------------------ the API

@dataclass(frozen=True)
class ChangeResult:
    """What :func:`change` found: lazy rasters on one grid, computed on demand."""

    pair: Pair
    card: ModelCard | None
    """Single-date model of the post-classification comparison."""
    before: xr.DataArray | None
    """Class ids of the before date (uint8, the card's nodata class where unknown)."""
    after: xr.DataArray | None
    transitions: xr.DataArray | None
    """From→to codes (see :func:`transition_codes`)."""
    change_card: ModelCard | None
    """Bi-temporal model of the model-based comparison."""
    probability: xr.DataArray | None
    """Change probability from the bi-temporal model (NaN where unknown)."""

    def table(self) -> TransitionTable:
        """Transition areas in hectares (computes the post-classification rasters)."""
        if self.transitions is None:
            raise ChangeError("no post-classification comparison was made", fix="pass model= (a single-date model card)")
        return transition_table(self.transitions, self.card)


def _check_kind(card: ModelCard, steps: int, arg: str) -> None:
    if card.time_steps != steps:
        need = "single-date" if steps == 1 else "bi-temporal"
        got = "bi-temporal" if card.time_steps == 2 else "single-date"
        raise ChangeError(f"{arg}: model {card.name!r} is {got}, but {arg} takes a {need} model",
                          fix="model= takes a single-date card (post-classification); change_model= a bi-temporal one (e.g. oscd-urban-change)")


def change(
    source: str,
    region: RegionLike,
    before: str,
    after: str,
    *,
    model=None,
    change_model=None,
    collections: str | Sequence[str] = (),
    max_cloud_cover: float | None = None,
    device: str | None = None,
    resolution: float | None = None,
) -> ChangeResult:
    """Compare two dates over ``region``: post-classification with ``model``
    (a single-date card path) and/or model-based with ``change_model`` (a
    bi-temporal card path). Lazy: nothing is predicted until a raster or
    :meth:`ChangeResult.table` is computed. ``geoseg change`` (and workflow
    runs) write the same products to disk.
    """
    from geoseg.fetch import load
    from geoseg.models import read_card
    from geoseg.inference import classify, predict

    if model is None and change_model is None:
        raise ChangeError("nothing to compare with", fix="pass model= (single-date card) and/or change_model= (bi-temporal card)")
    card = read_card(model) if model is not None else None
    ccard = read_card(change_model) if change_model is not None else None
    if card is not None:
        _check_kind(card, 1, "model")
    if ccard is not None:
        _check_kind(ccard, 2, "change_model")
    pair = pair_scenes(source, region, before, after, collections=collections, max_cloud_cover=max_cloud_cover)
    b = a = codes = prob = None
    if card is not None:
        res = resolution or card.resolution
        grids = [load(list(items), list(card.bands), region=region, resolution=res).isel(time=0) for items in (pair.before, pair.after)]
        b, _ = classify(predict(grids[0], model, device=device), card)
        a, _ = classify(predict(grids[1], model, device=device), card)
        codes = transition_codes(b, a, card)
    if ccard is not None:
        stack = load(list(pair.before) + list(pair.after), list(ccard.bands), region=region, resolution=resolution or ccard.resolution)
        prob = change_probability(predict(stack, change_model, device=device), ccard)
    return ChangeResult(pair=pair, card=card, before=b, after=a, transitions=codes, change_card=ccard, probability=prob)
