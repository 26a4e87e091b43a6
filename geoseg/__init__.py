"""geoseg: deep-learning segmentation of multispectral satellite imagery over
whole regions, from STAC catalogs to COGs and GeoPackages.

Public API (lazy imports keep ``import geoseg`` and the CLI fast):

* :func:`geoseg.search` -- items of a STAC API or static catalog
* :func:`geoseg.load` -- band-aware lazy stack on one target grid
* :func:`geoseg.predict` / :func:`geoseg.classify` -- tiled, stitched inference
* :func:`geoseg.change` -- compare two dates (post-classification and model-based)
* :class:`geoseg.LoopbackServers` -- serve a static catalog for real on loopback
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from geoseg import hugepages

hugepages.enable()  # before the first tensor: torch reads it once

__version__ = "0.1.0"

_EXPORTS = {
    "search": "geoseg.catalog",
    "make_query": "geoseg.catalog",
    "Query": "geoseg.catalog",
    "load": "geoseg.fetch",
    "predict": "geoseg.inference",
    "classify": "geoseg.inference",
    "change": "geoseg.compare",
    "pair_scenes": "geoseg.compare",
    "write_prediction": "geoseg.outputs",
    "resolve_bands": "geoseg.bands",
    "LoopbackServers": "geoseg.serve",
    "target_geobox": "geoseg.grid",
    "to_region": "geoseg.region",
    "write_cog": "geoseg.io",
    "write_quicklook": "geoseg.quicklook",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from geoseg.bands import resolve_bands
    from geoseg.catalog import Query, make_query, search
    from geoseg.compare import change, pair_scenes
    from geoseg.outputs import write_prediction
    from geoseg.inference import classify, predict
    from geoseg.grid import target_geobox
    from geoseg.io import write_cog
    from geoseg.fetch import load
    from geoseg.quicklook import write_quicklook
    from geoseg.region import to_region
    from geoseg.serve import LoopbackServers
