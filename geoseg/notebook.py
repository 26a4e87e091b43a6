"""Small helpers for the analyst notebooks in ``notebooks/``: presentation only.

* :func:`demo_servers` starts the demo catalog's STAC API and COG server on
  loopback (a started :class:`~geoseg.serve.LoopbackServers`, stopped with
  ``.stop()``, at the end of a ``with`` block, or when the kernel exits).
* :func:`shipped_model` is the path of a model card in ``models/``.
* :func:`show_rgb`, :func:`show_classes`, :func:`show_values`,
  :func:`class_legend` and :func:`class_colormap` draw stacks, class rasters
  (in the card's colours, with a legend) and continuous rasters with
  matplotlib, on the grid's coordinates; :func:`transitions_card` names and
  colours the from→to codes of a change map for legends and polygons.
* :func:`strip_outputs` (``python -m geoseg.notebook strip FILE...``) clears
  outputs before a notebook is committed; the tests refuse notebooks with outputs.

Nothing here searches, loads, predicts or vectorizes: the notebooks call
geoseg's public API for that. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import atexit
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import odc.geo.xr  # noqa: F401  (the .odc accessor: grids of the rasters drawn)
import xarray as xr

from geoseg.errors import InputError
from geoseg.models import ModelCard
from geoseg.serve import LoopbackServers

#: The repository checkout this module lives in (notebooks use its demo catalog and models).
REPO = Path(__file__).resolve().parents[1]
DEMO_CATALOG = REPO / "catalogs" / "demo"
MODELS = REPO / "models"

# huggingface_hub (imported with the models) loads tqdm.auto, which warns in a
# notebook without ipywidgets; geoseg shows no progress bars in notebooks.
warnings.filterwarnings("ignore", message="IProgress not found")


def _bypass_proxy_for_loopback() -> None:
    """Keep requests and GDAL (curl) from sending loopback URLs to a proxy set in the environment."""
    for var in ("NO_PROXY", "no_proxy"):
        have = [h for h in os.environ.get(var, "").split(",") if h]
        os.environ[var] = ",".join(have + [h for h in ("127.0.0.1", "localhost") if h not in have])


def _stop_with_this_process(srv: LoopbackServers) -> None:
    """Stop the servers when the kernel (or script) exits; if it dies without
    running ``atexit`` handlers, the kernel itself stops the STAC API process
    (it is started with a parent-death signal, see :mod:`geoseg.serve`)."""
    atexit.register(srv.stop)  # stop() is idempotent


def demo_servers(catalog: str | Path | None = None) -> LoopbackServers:
    """Start a STAC API and a Range-capable file server for ``catalog``
    (default: the demo catalog) on free loopback ports; return them, started.

    ``srv.stac_url`` is the API root to search; ``srv.stop()`` stops both.
    They also stop when the kernel (or script) exits, even after an error.
    Usable as a context manager as well.
    """
    _bypass_proxy_for_loopback()
    catalog = DEMO_CATALOG if catalog is None else Path(catalog)
    srv = LoopbackServers(catalog).start()
    _stop_with_this_process(srv)
    return srv


def shipped_model(name: str) -> Path:
    """Path of the card of a model shipped in ``models/`` (e.g. ``"s2-water"``)."""
    card = MODELS / f"{name}.json"
    if not card.exists() or not card.with_suffix(".safetensors").exists():
        have = sorted(p.stem for p in MODELS.glob("*.json") if p.with_suffix(".safetensors").exists())
        raise InputError(f"no shipped model {name!r} (card and weights) in {MODELS}", fix="choose one of: " + (", ".join(have) or "(none)"))
    return card


# ------------------------------------------------------------------ drawing

def extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of the pixel edges, for ``imshow(extent=...)``."""
    x, y = da["x"].values, da["y"].values
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[1] - y[0]) if y.size > 1 else -1.0
    return (float(x[0] - dx / 2), float(x[-1] + dx / 2), float(y[-1] + dy / 2), float(y[0] - dy / 2))


def rgb_image(stack: xr.DataArray, bands: Sequence[str] = ("red", "green", "blue"), *, percentiles=(2.0, 98.0)) -> np.ndarray:
    """(y, x, 3) float image in 0..1 of three bands of a (band, y, x) stack,
    each stretched between its percentiles (geoseg's quick-look stretch);
    nodata is white."""
    from geoseg.quicklook import stretch_limits

    missing = [b for b in bands if b not in stack["band"].values]
    if missing:
        raise InputError(f"band(s) {', '.join(missing)} not in the stack", fix="load them, or choose from: " + ", ".join(map(str, stack["band"].values)))
    sel = stack.sel(band=list(bands)).compute()
    lims = stretch_limits(sel, percentiles=percentiles)
    img = (sel.values - lims[:, :1, None]) / (lims[:, 1:, None] - lims[:, :1, None])
    img = np.clip(np.moveaxis(img, 0, -1), 0, 1)
    img[~np.isfinite(img).all(axis=-1)] = 1.0
    return img


def show_rgb(stack: xr.DataArray, bands: Sequence[str] = ("red", "green", "blue"), ax=None, *, title: str | None = None):
    """Draw a stretched three-band composite on the grid's coordinates; return the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    ax.imshow(rgb_image(stack, bands), extent=extent(stack), interpolation="nearest")
    ax.set_title(title if title is not None else " / ".join(bands))
    _metres_axes(ax, stack)
    return ax


def show_values(da: xr.DataArray, ax=None, *, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                title: str | None = None, label: str | None = None):
    """Draw a (y, x) continuous raster (confidence, probability, an index) with a
    colour bar, on the grid's coordinates; NaN is transparent. Return the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    im = ax.imshow(np.asarray(da.values), cmap=cmap, vmin=vmin, vmax=vmax, extent=extent(da), interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, shrink=0.6, label=label if label is not None else (da.name or ""))
    ax.set_title(title if title is not None else str(da.name or ""))
    _metres_axes(ax, da)
    return ax


#: Strong, distinct colours for changes on maps (matplotlib's tab10, minus its grey).
def transitions_card(card: ModelCard) -> ModelCard:
    """The from→to transitions of ``card`` as a card (:func:`geoseg.compare.transition_card`):
    names and colours for legends, polygons and QGIS styles."""
    from geoseg.compare import transition_card

    return transition_card(card)


def class_colormap(card: ModelCard):
    """(ListedColormap, BoundaryNorm) mapping each class id to the card's colour;
    other values (the nodata class) are drawn transparent."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    ids = [c.id for c in card.classes]
    colors = [tuple(v / 255 for v in c.color) for c in card.classes]
    cmap = ListedColormap(colors, name=f"{card.name}-classes")
    cmap.set_bad((0, 0, 0, 0))
    bounds = [i - 0.5 for i in ids] + [ids[-1] + 0.5]
    if any(b >= a for a, b in zip(bounds[1:], bounds[:-1])):
        raise InputError(f"class ids of {card.name!r} are not increasing", fix="list the card's classes in id order")
    return cmap, BoundaryNorm(bounds, len(ids))


def class_legend(card: ModelCard, *, counts: dict[int, float] | None = None, unit: str = "ha"):
    """Legend handles: one colour patch per class, named as on the card
    (with an area when ``counts`` maps class id to it)."""
    from matplotlib.patches import Patch

    return [Patch(facecolor=tuple(v / 255 for v in c.color), edgecolor="0.3",
                  label=c.name if counts is None else f"{c.name} ({counts.get(c.id, 0):.1f} {unit})")
            for c in card.classes]


def show_classes(classes: xr.DataArray, card: ModelCard, ax=None, *, title: str | None = None, legend: bool = True, areas: bool = True):
    """Draw a (y, x) class raster in the card's colours with a legend (areas
    in hectares per class); nodata pixels are transparent. Return the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    values = np.asarray(classes.values)
    known = np.isin(values, card.class_ids)
    cmap, norm = class_colormap(card)
    ax.imshow(np.ma.masked_array(values, ~known), cmap=cmap, norm=norm, extent=extent(classes), interpolation="nearest")
    ax.set_title(title if title is not None else f"{card.name} classes")
    _metres_axes(ax, classes)
    if legend:
        counts = None
        if areas:
            res = classes.odc.geobox.resolution
            px_ha = abs(res.x * res.y) / 1e4
            counts = {c.id: float((values == c.id).sum() * px_ha) for c in card.classes}
        ax.legend(handles=class_legend(card, counts=counts), loc="lower left", fontsize="small", framealpha=0.9)
    return ax


def _metres_axes(ax, da: xr.DataArray) -> None:
    try:
        crs = da.odc.geobox.crs
        ax.set_xlabel(f"x (m, {crs.epsg and f'EPSG:{crs.epsg}' or crs})")
        ax.set_ylabel("y (m)")
    except Exception:  # no grid attached: plain pixel axes
        pass
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize="x-small")


# ------------------------------------------------------------------ hygiene

def strip_outputs(path: str | Path) -> bool:
    """Remove outputs and execution counts from a notebook file, in place
    (notebooks are committed clean). Returns True when it changed anything."""
    import json

    path = Path(path)
    nb = json.loads(path.read_text())
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            cell["outputs"], cell["execution_count"] = [], None
            changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


def _main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "strip":
        print("usage: python -m geoseg.notebook strip NOTEBOOK.ipynb ...", file=sys.stderr)
        return 2
    for name in args[1:]:
        print(f"{name}: {'stripped' if strip_outputs(name) else 'already clean'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
