"""Catalog search without the network: datetime parsing, query validation,
static catalogs built in tmp_path, and tiny local HTTP servers for failures."""

from __future__ import annotations

import datetime as dt
import http.server
import threading
import time

import pystac
import pytest

from geoseg.catalog import Query, item_matches, make_query, parse_interval, search
from geoseg.errors import CatalogUnavailableError, InputError, NoDataError, RegionError

UTC = dt.timezone.utc
PARIS = "2.30,48.84,2.40,48.88"
NANTES = "-1.60,47.18,-1.50,47.24"


def t(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# ------------------------------------------------------------ parse_interval

@pytest.mark.parametrize(
    "text, start, end",
    [
        ("2017", t(2017, 1, 1), t(2017, 12, 31, 23, 59, 59, 999999)),
        ("2017-02", t(2017, 2, 1), t(2017, 2, 28, 23, 59, 59, 999999)),
        ("2016-02", t(2016, 2, 1), t(2016, 2, 29, 23, 59, 59, 999999)),
        ("2017-12", t(2017, 12, 1), t(2017, 12, 31, 23, 59, 59, 999999)),
        ("2017-06-15", t(2017, 6, 15), t(2017, 6, 15, 23, 59, 59, 999999)),
        ("2016-01-01/2017-12-31", t(2016, 1, 1), t(2017, 12, 31, 23, 59, 59, 999999)),
        ("2016/2017-06", t(2016, 1, 1), t(2017, 6, 30, 23, 59, 59, 999999)),
        ("2017-06-15T10:30:00Z/2017-06-15T11:00:00Z", t(2017, 6, 15, 10, 30), t(2017, 6, 15, 11, 0)),
        ("2017-06-15T10:30:00+02:00/..", dt.datetime(2017, 6, 15, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), None),
        ("2017-06-15T10:30:00", t(2017, 6, 15, 10, 30), t(2017, 6, 15, 10, 30)),
        ("../2017-06", None, t(2017, 6, 30, 23, 59, 59, 999999)),
        ("2017-06/..", t(2017, 6, 1), None),
        ("/2017", None, t(2017, 12, 31, 23, 59, 59, 999999)),
        ("../..", None, None),
    ],
)
def test_parse_interval(text, start, end):
    assert parse_interval(text) == (start, end)


def test_parse_interval_results_are_utc_aware():
    start, end = parse_interval("2017-06-15")
    assert start.tzinfo is not None and end.tzinfo is not None
    assert end - start == dt.timedelta(days=1) - dt.timedelta(microseconds=1)


def test_inverted_interval_refused():
    with pytest.raises(InputError) as ei:
        parse_interval("2018-01-01/2017-01-01")
    assert "'2018-01-01/2017-01-01'" in str(ei.value)
    assert "ends before it starts" in str(ei.value)
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("text", ["yesterday", "2017-13", "2017-02-30", "20170615x", "2017-06-15/soon", "17"])
def test_garbage_datetime_refused(text):
    with pytest.raises(InputError) as ei:
        parse_interval(text)
    assert "is not an ISO date" in str(ei.value)
    assert "fix:" in str(ei.value)


# ------------------------------------------------------------ make_query

@pytest.mark.parametrize("cc", [150, -1, 100.5])
def test_make_query_cloud_cover_out_of_range(cc):
    with pytest.raises(InputError, match="outside 0..100"):
        make_query(max_cloud_cover=cc)


def test_make_query_accepts_cloud_cover_bounds():
    assert make_query(max_cloud_cover=0).max_cloud_cover == 0
    assert make_query(max_cloud_cover=100).max_cloud_cover == 100


def test_make_query_splits_strings():
    q = make_query(collections="sentinel-2-l2a,sentinel-2-l1c,", ids="a,b")
    assert q.collections == ("sentinel-2-l2a", "sentinel-2-l1c")
    assert q.ids == ("a", "b")
    assert make_query(collections=["x", "y"]).collections == ("x", "y")


def test_make_query_validates_datetime_and_region():
    with pytest.raises(InputError):
        make_query(datetime="2017-99")
    with pytest.raises(RegionError):
        make_query(region="9,9,1,1")
    q = make_query(region=PARIS, datetime="2017")
    assert q.region is not None and str(q.region.crs) == "EPSG:4326"
    assert q.datetime == "2017"


def test_empty_query_describes_itself():
    assert Query().describe() == "(no constraints)"
    assert make_query(datetime="").datetime is None


# ------------------------------------------------------------ static catalogs

def _ids(items):
    return [it.id for it in items]


def test_search_everything_sorted_by_datetime(static_catalog):
    items = search(static_catalog)
    assert _ids(items) == ["paris-2016-11-30", "paris-2017-06-15", "nantes-2017-07-01", "rio-2018-01-10"]
    assert all(isinstance(it, pystac.Item) for it in items)


def test_search_accepts_catalog_json_path(static_catalog):
    assert _ids(search(static_catalog / "catalog.json")) == _ids(search(str(static_catalog)))


def test_search_a_collection_json(static_catalog):
    coll = static_catalog / "other-test" / "collection.json"
    assert _ids(search(coll)) == ["rio-2018-01-10"]
    assert _ids(search(coll.parent)) == ["rio-2018-01-10"]


def test_search_by_region(static_catalog):
    assert _ids(search(static_catalog, region=PARIS)) == ["paris-2016-11-30", "paris-2017-06-15"]
    assert _ids(search(static_catalog, region=NANTES)) == ["nantes-2017-07-01"]
    # a region spanning both Paris and Nantes
    assert len(search(static_catalog, region="-2,47,3,49")) == 3


def test_search_by_datetime(static_catalog):
    assert _ids(search(static_catalog, datetime="2017")) == ["paris-2017-06-15", "nantes-2017-07-01"]
    assert _ids(search(static_catalog, datetime="2017-06")) == ["paris-2017-06-15"]
    assert _ids(search(static_catalog, datetime="2017-06-15")) == ["paris-2017-06-15"]  # whole day
    assert _ids(search(static_catalog, datetime="../2016-12")) == ["paris-2016-11-30"]
    assert _ids(search(static_catalog, datetime="2017-07-01/..")) == ["nantes-2017-07-01", "rio-2018-01-10"]


def test_search_by_cloud_cover(static_catalog):
    assert _ids(search(static_catalog, max_cloud_cover=10)) == ["paris-2017-06-15"]
    assert _ids(search(static_catalog, max_cloud_cover=12.5)) == ["paris-2017-06-15", "nantes-2017-07-01"]  # inclusive
    assert len(search(static_catalog, max_cloud_cover=100)) == 4


def test_search_by_collection_and_ids(static_catalog):
    assert _ids(search(static_catalog, collections="other-test")) == ["rio-2018-01-10"]
    assert len(search(static_catalog, collections="s2-test,other-test")) == 4
    assert _ids(search(static_catalog, ids="rio-2018-01-10,paris-2016-11-30")) == ["paris-2016-11-30", "rio-2018-01-10"]


def test_search_combined_filters_and_limit(static_catalog):
    items = search(static_catalog, region=PARIS, datetime="2016/2017", max_cloud_cover=20, collections="s2-test")
    assert _ids(items) == ["paris-2017-06-15"]
    assert _ids(search(static_catalog, limit=2)) == ["paris-2016-11-30", "paris-2017-06-15"]
    q = make_query(region=PARIS)
    assert len(search(static_catalog, q)) == 2
    with pytest.raises(TypeError):
        search(static_catalog, q, datetime="2017")


def test_search_nothing_matches_echoes_query(static_catalog):
    with pytest.raises(NoDataError) as ei:
        search(static_catalog, region=PARIS, datetime="1990-01-01/1991-12-31", max_cloud_cover=20)
    msg = str(ei.value)
    assert "1990-01-01/1991-12-31" in msg
    assert "max_cloud_cover=20" in msg
    assert "bbox=2.3000,48.8400,2.4000,48.8800" in msg
    assert str(static_catalog) in msg
    assert ei.value.exit_code == 3


def test_search_missing_static_catalog(tmp_path):
    missing = tmp_path / "nope" / "catalog.json"
    with pytest.raises(CatalogUnavailableError) as ei:
        search(missing)
    assert str(missing) in str(ei.value)
    assert ei.value.exit_code == 1


def test_search_directory_without_catalog(tmp_path):
    # was a raw IsADirectoryError from pystac (fixed in geoseg.catalog._iter_static_items)
    with pytest.raises(CatalogUnavailableError) as ei:
        search(tmp_path)
    assert "holds no catalog.json" in str(ei.value)


@pytest.mark.parametrize("text", ["{not json", "{}", '{"type": "Catalog", "id": "x"}'])
def test_search_corrupt_static_catalog(tmp_path, text):
    # valid JSON that is not STAC raised pystac.STACTypeError (not a STACError) before the fix
    bad = tmp_path / "catalog.json"
    bad.write_text(text)
    with pytest.raises(CatalogUnavailableError, match="cannot read static catalog"):
        search(bad)


# ------------------------------------------------------------ item_matches

def _bare_item(**props) -> pystac.Item:
    return pystac.Item(
        id="bare",
        geometry={"type": "Polygon", "coordinates": [[[2.2, 48.8], [2.5, 48.8], [2.5, 48.95], [2.2, 48.95], [2.2, 48.8]]]},
        bbox=[2.2, 48.8, 2.5, 48.95],
        datetime=t(2017, 6, 15, 10, 50),
        properties=props,
    )


def test_item_without_cloud_cover():
    item = _bare_item()
    assert item_matches(item, make_query()) is True
    assert item_matches(item, make_query(max_cloud_cover=50)) is False
    assert item_matches(item, make_query(max_cloud_cover=50), check_cloud=False) is True


def test_item_matches_region_and_time():
    item = _bare_item(**{"eo:cloud_cover": 3.0})
    assert item_matches(item, make_query(region=PARIS, datetime="2017-06-15", max_cloud_cover=3))
    assert not item_matches(item, make_query(region=NANTES))
    assert not item_matches(item, make_query(datetime="2017-06-16/.."))


def test_item_matches_naive_and_interval_datetimes():
    item = pystac.Item(
        id="interval", geometry=None, bbox=None, datetime=None,
        properties={"start_datetime": "2017-06-01T00:00:00Z", "end_datetime": "2017-06-30T00:00:00Z"},
    )
    assert item_matches(item, make_query(datetime="2017-06-15"))
    assert not item_matches(item, make_query(datetime="2017-07"))
    assert not item_matches(item, make_query(region=PARIS))  # no geometry


# ------------------------------------------------------------ failing servers

class _Failing(http.server.BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def _fail(self):
        with _Failing.lock:
            type(self).count += 1
        body = b'{"code": "InternalServerError"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _fail

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def failing_server(no_proxy):
    class Handler(_Failing):
        count = 0

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/", Handler
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_api_answering_500_retries_then_fails(failing_server):
    url, handler = failing_server
    t0 = time.monotonic()
    with pytest.raises(CatalogUnavailableError) as ei:
        search(url, retries=2, backoff=0.01, timeout=5, datetime="2017")
    elapsed = time.monotonic() - t0
    msg = str(ei.value)
    assert url in msg
    assert "HTTP 500" in msg
    assert "3 tries" in msg
    assert 3 <= handler.count <= 6  # 1 try + 2 retries, no retry storm
    assert elapsed < 5
    assert ei.value.exit_code == 1


def test_static_catalog_url_answering_500(failing_server):
    url, handler = failing_server
    with pytest.raises(CatalogUnavailableError, match="HTTP 500"):
        search(url + "catalog.json", retries=1, backoff=0.01, timeout=5)
    assert 2 <= handler.count <= 4


class _NotStac(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"hello": "world"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_url_answering_json_that_is_not_stac(no_proxy):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotStac)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/catalog.json"
    try:
        with pytest.raises(CatalogUnavailableError) as ei:
            search(url, retries=0, backoff=0.01, timeout=5)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    assert url in str(ei.value)
    assert "not a STAC catalog" in str(ei.value)


def test_api_port_closed(closed_port, no_proxy):
    url = f"http://127.0.0.1:{closed_port}"
    t0 = time.monotonic()
    with pytest.raises(CatalogUnavailableError) as ei:
        search(url, retries=1, backoff=0.01, timeout=2)
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert url in msg
    assert "did not answer" in msg
    assert "fix:" in msg
