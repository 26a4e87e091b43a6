"""Shared fixtures for geoseg's unit tests."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path

import pystac
import pytest

TESTS = Path(__file__).resolve().parent
EARTH_SEARCH = TESTS / "data" / "earth-search"

# ------------------------------------------------------------ small static catalog

#: The items of the small static catalog: id -> (collection, bbox, datetime, eo:cloud_cover).
STATIC_ITEMS = {
    "paris-2016-11-30": ("s2-test", (2.20, 48.80, 2.50, 48.95), dt.datetime(2016, 11, 30, 10, 30, tzinfo=dt.timezone.utc), 80.0),
    "paris-2017-06-15": ("s2-test", (2.20, 48.80, 2.50, 48.95), dt.datetime(2017, 6, 15, 10, 50, tzinfo=dt.timezone.utc), 5.0),
    "nantes-2017-07-01": ("s2-test", (-1.70, 47.10, -1.40, 47.30), dt.datetime(2017, 7, 1, 11, 0, tzinfo=dt.timezone.utc), 12.5),
    "rio-2018-01-10": ("other-test", (-43.40, -23.00, -43.10, -22.80), dt.datetime(2018, 1, 10, 13, 0, tzinfo=dt.timezone.utc), 30.0),
}


def _bbox_polygon(bbox):
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def build_static_catalog(root: Path) -> Path:
    """Write a SELF_CONTAINED catalog (2 collections, 4 items) under ``root``; return ``root``."""
    catalog = pystac.Catalog(id="geoseg-test", description="geoseg unit-test catalog")
    collections: dict[str, pystac.Collection] = {}
    for item_id, (coll_id, bbox, when, cloud) in STATIC_ITEMS.items():
        if coll_id not in collections:
            collections[coll_id] = pystac.Collection(
                id=coll_id,
                description=f"{coll_id} test collection",
                extent=pystac.Extent(
                    pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                    pystac.TemporalExtent([[dt.datetime(2015, 1, 1, tzinfo=dt.timezone.utc), None]]),
                ),
            )
            catalog.add_child(collections[coll_id])
        item = pystac.Item(
            id=item_id,
            geometry=_bbox_polygon(bbox),
            bbox=list(bbox),
            datetime=when,
            properties={"eo:cloud_cover": cloud, "platform": "sentinel-2a", "constellation": "sentinel-2"},
        )
        collections[coll_id].add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root


@pytest.fixture(scope="session")
def static_catalog(tmp_path_factory) -> Path:
    """Directory of a small static STAC catalog (``catalog.json`` inside): 4 items,
    Paris x2 (2016-11-30 cloud 80, 2017-06-15 cloud 5), Nantes 2017-07-01 (cloud 12.5)
    in collection ``s2-test``, Rio 2018-01-10 (cloud 30) in ``other-test``."""
    return build_static_catalog(tmp_path_factory.mktemp("static-catalog"))


# ------------------------------------------------------------ network helpers

@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_proxy(monkeypatch):
    """Keep requests from routing loopback URLs through a proxy set in the environment."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
