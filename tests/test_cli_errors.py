"""The command line turns every geoseg error into one message and an exit code
(0 done, 1 failure, 2 bad input, 3 no data), with no traceback."""

from __future__ import annotations

import time

import pytest

import geoseg.catalog
from geoseg.cli import main


def _assert_clean_error(err: str):
    assert err.startswith("error:")
    assert "Traceback" not in err
    assert "fix:" in err


@pytest.fixture
def short_retries(monkeypatch):
    """Make the CLI give up on a dead server quickly.

    ``search``'s ``retries``/``backoff`` defaults are bound when the function is
    defined, so patching ``geoseg.catalog.DEFAULT_RETRIES`` would change nothing;
    patch the function's keyword defaults instead (restored after the test).
    """
    monkeypatch.setattr(geoseg.catalog, "DEFAULT_RETRIES", 1)
    monkeypatch.setattr(geoseg.catalog, "DEFAULT_BACKOFF", 0.01)
    kw = geoseg.catalog.search.__kwdefaults__
    monkeypatch.setitem(kw, "retries", 1)
    monkeypatch.setitem(kw, "backoff", 0.01)
    monkeypatch.setitem(kw, "timeout", 2.0)


def test_search_lists_items(static_catalog, capsys):
    assert main(["search", str(static_catalog), "--bbox", "2.30,48.84,2.40,48.88", "--max-cloud", "20"]) == 0
    out = capsys.readouterr().out
    assert "1 item(s)" in out and "paris-2017-06-15" in out
    assert "paris-2016-11-30" not in out


def test_search_json_output(static_catalog, capsys):
    import json

    assert main(["search", str(static_catalog), "--datetime", "2017", "--json"]) == 0
    fc = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in fc["features"]] == ["paris-2017-06-15", "nantes-2017-07-01"]


def test_search_no_data_exit_3(static_catalog, capsys):
    assert main(["search", str(static_catalog), "--datetime", "1990"]) == 3
    err = capsys.readouterr().err
    _assert_clean_error(err)
    assert "datetime=1990" in err


def test_search_server_down_exit_1(closed_port, no_proxy, short_retries, capsys):
    url = f"http://127.0.0.1:{closed_port}"
    t0 = time.monotonic()
    assert main(["search", url]) == 1
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    _assert_clean_error(err)
    assert url in err


def test_search_missing_catalog_exit_1(tmp_path, capsys):
    assert main(["search", str(tmp_path / "missing" / "catalog.json")]) == 1
    _assert_clean_error(capsys.readouterr().err)


def test_search_bad_bbox_exit_2(static_catalog, capsys):
    assert main(["search", str(static_catalog), "--bbox", "9,9,1,1"]) == 2
    err = capsys.readouterr().err
    _assert_clean_error(err)
    assert "'9,9,1,1'" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--datetime", "2018/2017"], "ends before it starts"),
        (["--datetime", "someday"], "'someday'"),
        (["--max-cloud", "150"], "150"),
    ],
)
def test_search_bad_input_exit_2(static_catalog, capsys, args, needle):
    assert main(["search", str(static_catalog), *args]) == 2
    err = capsys.readouterr().err
    _assert_clean_error(err)
    assert needle in err


def test_usage_error_exit_2(capsys):
    # typer >= 0.2x raises its vendored click's exceptions: they must still be usage errors
    assert main(["search", "x", "--max-cloud", "lots"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected" not in err
    assert "--max-cloud" in err
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err
    assert "unexpected" not in err and "no-such-command" in err
    assert main(["search"]) == 2  # missing SOURCE
    assert "unexpected" not in capsys.readouterr().err


def test_no_arguments_prints_help(capsys):
    assert main([]) in (0, 2)
    captured = capsys.readouterr()
    assert "search" in captured.out + captured.err
    assert "unexpected" not in captured.err


def test_help_exit_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "search" in out and "load" in out
    assert main(["search", "--help"]) == 0
    assert "--max-cloud" in capsys.readouterr().out
    assert main(["search", "-h"]) == 0


def test_version_exit_0(capsys):
    from geoseg import __version__

    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
