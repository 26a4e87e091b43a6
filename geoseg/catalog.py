"""Search STAC catalogs: any STAC API, or a static catalog searched in-process.

A :class:`Query` is a small frozen record; :func:`search` runs it against a
source (an API root URL, or a path/URL to a static ``catalog.json`` /
``collection.json``) and returns every matching item, paging through all
results.

Cloud cover goes to the server as a CQL2-JSON ``filter`` when the API declares
the Filter conformance class, else as a ``query`` when it declares Query, else
it is applied here on ``eo:cloud_cover``: some servers (rustac's in-memory
backend, for one) answer an unsupported filter with an empty page instead of
an error, so conformance is checked, never assumed.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlparse

import pystac
import requests
from odc.geo.geom import Geometry
from urllib3.util.retry import Retry

from geoseg.errors import CatalogUnavailableError, InputError, NoDataError
from geoseg.region import RegionLike, to_region

FILTER_CONFORMANCE = ("https://api.stacspec.org/v1.0.0-rc.2/item-search#filter", "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json")
QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0-rc.1/item-search#query"

#: Retries for a STAC API: 5 tries with exponential backoff (0.5, 1, 2, 4 s).
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Query:
    """What to search for. All fields optional; empty means "everything"."""

    collections: tuple[str, ...] = ()
    """Collection ids."""
    region: Geometry | None = None
    """Area of interest (EPSG:4326); items must intersect it."""
    datetime: str | None = None
    """Interval ``start/end`` (ISO dates or datetimes, ``..`` open) or one date/year/month."""
    max_cloud_cover: float | None = None
    """Upper bound on ``eo:cloud_cover`` (percent)."""
    ids: tuple[str, ...] = ()
    """Item ids."""
    limit: int | None = None
    """Most items to return (``None``: all)."""

    def describe(self) -> str:
        """The query in words, for messages."""
        parts = []
        if self.collections:
            parts.append(f"collections={','.join(self.collections)}")
        if self.region is not None:
            b = self.region.boundingbox
            parts.append(f"bbox={b.left:.4f},{b.bottom:.4f},{b.right:.4f},{b.top:.4f}")
        if self.datetime:
            parts.append(f"datetime={self.datetime}")
        if self.max_cloud_cover is not None:
            parts.append(f"max_cloud_cover={self.max_cloud_cover:g}")
        if self.ids:
            parts.append(f"ids={','.join(self.ids)}")
        return " ".join(parts) or "(no constraints)"


def make_query(
    *,
    collections: str | Sequence[str] = (),
    region: RegionLike | None = None,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    ids: str | Sequence[str] = (),
    limit: int | None = None,
) -> Query:
    """Build a validated :class:`Query` from loose user input."""
    if isinstance(collections, str):
        collections = [c for c in collections.split(",") if c]
    if isinstance(ids, str):
        ids = [i for i in ids.split(",") if i]
    if max_cloud_cover is not None and not 0 <= max_cloud_cover <= 100:
        raise InputError(f"max cloud cover {max_cloud_cover!r} is outside 0..100", fix="give a percentage, e.g. 20")
    if datetime:
        parse_interval(datetime)  # validate early
    return Query(
        collections=tuple(collections),
        region=None if region is None else to_region(region),
        datetime=datetime or None,
        max_cloud_cover=max_cloud_cover,
        ids=tuple(ids),
        limit=limit,
    )


# ---------------------------------------------------------------- datetimes

def _parse_instant(text: str, *, end: bool) -> dt.datetime | None:
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        if len(text) == 4:  # year
            year = int(text)
            return dt.datetime(year + 1, 1, 1, tzinfo=dt.timezone.utc) - dt.timedelta(microseconds=1) if end else dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)
        if len(text) == 7:  # year-month
            y, m = (int(p) for p in text.split("-"))
            start = dt.datetime(y, m, 1, tzinfo=dt.timezone.utc)
            if not end:
                return start
            nxt = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=dt.timezone.utc)
            return nxt - dt.timedelta(microseconds=1)
        if len(text) == 10:  # date
            d = dt.date.fromisoformat(text)
            t = dt.time.max if end else dt.time.min
            return dt.datetime.combine(d, t, tzinfo=dt.timezone.utc)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise InputError(
            f"datetime {text!r} is not an ISO date",
            fix="use YYYY, YYYY-MM, YYYY-MM-DD or a full ISO datetime; an interval as START/END with '..' for open ends",
        ) from None


def parse_interval(text: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``"2016-01-01/2017-12-31"``, ``"2016"``, ``"../2017-06"`` → (start, end), UTC, inclusive."""
    if "/" in text:
        a, b = text.split("/", 1)
        start, end = _parse_instant(a, end=False), _parse_instant(b, end=True)
    else:
        start, end = _parse_instant(text, end=False), _parse_instant(text, end=True)
    if start and end and start > end:
        raise InputError(f"datetime interval {text!r} ends before it starts", fix="put the earlier date first: START/END")
    return start, end


def _api_datetime(text: str) -> str:
    """The interval as an RFC 3339 string every STAC API accepts."""
    start, end = parse_interval(text)
    fmt = lambda t: ".." if t is None else t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    return f"{fmt(start)}/{fmt(end)}"


# ---------------------------------------------------------------- matching

def item_matches(item: pystac.Item, query: Query, *, check_cloud: bool = True) -> bool:
    """Whether ``item`` satisfies ``query`` (used for static catalogs and
    client-side cloud filtering)."""
    if query.collections and item.collection_id not in query.collections:
        return False
    if query.ids and item.id not in query.ids:
        return False
    if query.region is not None:
        if item.geometry is None:
            return False
        if not Geometry(item.geometry, crs="EPSG:4326").intersects(query.region):
            return False
    if query.datetime:
        start, end = parse_interval(query.datetime)
        t0 = item.datetime or item.common_metadata.start_datetime
        t1 = item.datetime or item.common_metadata.end_datetime
        if t0 is None:
            return False
        t0 = t0 if t0.tzinfo else t0.replace(tzinfo=dt.timezone.utc)
        t1 = t1 if t1.tzinfo else t1.replace(tzinfo=dt.timezone.utc)
        if (end is not None and t0 > end) or (start is not None and t1 < start):
            return False
    if check_cloud and query.max_cloud_cover is not None:
        cc = item.properties.get("eo:cloud_cover")
        if cc is None or cc > query.max_cloud_cover:
            return False
    return True


# ---------------------------------------------------------------- sources

def _is_url(source: str) -> bool:
    return urlparse(str(source)).scheme in ("http", "https")


def _session(retries: int, backoff: float) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=retries, connect=retries, read=retries, status=retries,
        backoff_factor=backoff, status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None, raise_on_status=False,
    )
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _fetch_json(url: str, *, retries: int, backoff: float, timeout: float) -> dict:
    try:
        r = _session(retries, backoff).get(url, timeout=timeout)
    except requests.RequestException as err:
        raise CatalogUnavailableError(
            f"STAC source {url} did not answer after {retries + 1} tries ({type(err).__name__})",
            fix="check that the server is running and the URL is right; retry later if it is overloaded",
        ) from None
    if r.status_code >= 400:
        raise CatalogUnavailableError(
            f"STAC source {url} answered HTTP {r.status_code} after {retries + 1} tries",
            fix="check the URL (a STAC API root or a catalog.json); retry later if the server is failing",
        )
    try:
        return r.json()
    except ValueError:
        raise CatalogUnavailableError(f"STAC source {url} did not answer JSON", fix="give a STAC API root URL or a catalog.json") from None


def is_api(source: str, *, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """True when ``source`` is a STAC API root that supports item search."""
    if not _is_url(source):
        return False
    root = _fetch_json(source, retries=retries, backoff=backoff, timeout=timeout)
    conforms = root.get("conformsTo") or []
    return any("item-search" in c for c in conforms)


def search(
    source: str | Path,
    query: Query | None = None,
    *,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float = DEFAULT_TIMEOUT,
    **query_fields,
) -> list[pystac.Item]:
    """All items of ``source`` matching ``query``, sorted by datetime then id.

    ``source`` is a STAC API root URL, or a path or URL to a static catalog or
    collection JSON. Query fields may also be given as keywords (see
    :func:`make_query`). Raises :class:`NoDataError` (echoing the query) when
    nothing matches, :class:`CatalogUnavailableError` naming the URL when the
    server stays down after ``retries`` retries with exponential backoff.
    """
    if query is None:
        query = make_query(**query_fields)
    elif query_fields:
        raise TypeError("give either a Query or query keywords, not both")
    source = str(source)
    if is_api(source, retries=retries, backoff=backoff, timeout=timeout):
        items = _search_api(source, query, retries=retries, backoff=backoff, timeout=timeout)
    else:
        items = _search_static(source, query, retries=retries, backoff=backoff, timeout=timeout)
    items.sort(key=lambda it: (it.datetime or dt.datetime.min.replace(tzinfo=dt.timezone.utc), it.id))
    if query.limit is not None:
        items = items[: query.limit]
    if not items:
        raise NoDataError(
            f"no item in {source} matches {query.describe()}",
            fix="widen the date range, the region or the cloud-cover limit; `geoseg search SOURCE` lists everything",
        )
    return items


def _search_api(url: str, query: Query, *, retries: int, backoff: float, timeout: float) -> list[pystac.Item]:
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    retry = Retry(
        total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, raise_on_status=False,
    )
    try:
        client = Client.open(url, stac_io=StacApiIO(max_retries=retry, timeout=timeout))
        kwargs: dict = {"limit": 100}
        if query.collections:
            kwargs["collections"] = list(query.collections)
        if query.ids:
            kwargs["ids"] = list(query.ids)
        if query.region is not None:
            kwargs["intersects"] = query.region.json
        if query.datetime:
            kwargs["datetime"] = _api_datetime(query.datetime)
        client_side_cloud = False
        if query.max_cloud_cover is not None:
            if client.conforms_to("FILTER"):
                kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, query.max_cloud_cover]}
                kwargs["filter_lang"] = "cql2-json"
            elif client.conforms_to("QUERY"):
                kwargs["query"] = {"eo:cloud_cover": {"lte": query.max_cloud_cover}}
            else:
                client_side_cloud = True
        items = list(client.search(**kwargs).items())
    except (APIError, requests.RequestException) as err:
        raise CatalogUnavailableError(
            f"STAC API {url} failed after {retries + 1} tries: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}",
            fix="check that the server is running; retry later if it is overloaded",
        ) from None
    if client_side_cloud:
        items = [it for it in items if item_matches(it, replace(query, region=None, datetime=None, collections=(), ids=()))]
    return items


def _iter_static_items(source: str, *, retries: int, backoff: float, timeout: float) -> Iterable[pystac.Item]:
    if _is_url(source):
        data = _fetch_json(source, retries=retries, backoff=backoff, timeout=timeout)
        try:
            obj = pystac.read_dict(data, href=source)
        except (pystac.STACError, pystac.STACTypeError) as err:  # STACTypeError is no STACError
            raise CatalogUnavailableError(f"STAC source {source} is not a STAC catalog: {err}", fix="give a STAC API root URL or a catalog.json") from None
    else:
        path = Path(source)
        if path.is_dir():
            for name in ("catalog.json", "collection.json"):
                if (path / name).exists():
                    path = path / name
                    break
        if not path.is_file():  # a directory without catalog.json / collection.json, too
            raise CatalogUnavailableError(
                f"static catalog {str(path)!r} does not exist" if not path.exists()
                else f"static catalog directory {str(path)!r} holds no catalog.json or collection.json",
                fix="give a STAC API URL, or the path of a catalog.json / collection.json",
            )
        try:
            obj = pystac.read_file(str(path))
        except (json.JSONDecodeError, OSError, pystac.STACError, pystac.STACTypeError) as err:
            raise CatalogUnavailableError(f"cannot read static catalog {str(path)!r}: {err}", fix="give a valid STAC catalog JSON") from None
    if isinstance(obj, pystac.Item):
        yield obj
    elif isinstance(obj, pystac.ItemCollection):
        yield from obj
    else:
        yield from obj.get_items(recursive=True)


def _search_static(source: str, query: Query, *, retries: int, backoff: float, timeout: float) -> list[pystac.Item]:
    items = _iter_static_items(source, retries=retries, backoff=backoff, timeout=timeout)
    return [it for it in items if item_matches(it, query)]
