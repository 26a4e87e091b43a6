"""geoseg.envvars: numbers from the environment, refused by name when they are not numbers."""

from __future__ import annotations

import pytest

from geoseg import envvars, fetch
from geoseg.errors import InputError

NAME = "GEOSEG_TEST_NUMBER"


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_unset_or_empty_gives_the_default(monkeypatch, raw):
    if raw is None:
        monkeypatch.delenv(NAME, raising=False)
    else:
        monkeypatch.setenv(NAME, raw)
    assert envvars.number(NAME, 64, minimum=1) == 64


@pytest.mark.parametrize("default, raw, expected", [(64, "128", 128), (64, " 7 ", 7), (0.5, "2", 2.0), (0.5, "0.25", 0.25), (3, "0", 0)])
def test_the_value_comes_as_the_defaults_type(monkeypatch, default, raw, expected):
    monkeypatch.setenv(NAME, raw)
    value = envvars.number(NAME, default, minimum=0)
    assert value == expected and type(value) is type(default)


@pytest.mark.parametrize("default, raw, says", [(64, "64MB", "is not a whole number"), (64, "1.5", "is not a whole number"),
                                                (0.5, "fast", "is not a number"), (0.5, "nan", "out of range"),
                                                (0.5, "inf", "out of range"), (64, "0", "out of range"), (0.5, "-1", "out of range")])
def test_a_bad_value_is_refused_by_name_with_the_fix(monkeypatch, default, raw, says):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(InputError) as err:
        envvars.number(NAME, default, minimum=1 if isinstance(default, int) else 0)
    text = str(err.value)
    assert f"{NAME}={raw!r}" in text and says in text
    assert f"e.g. {NAME}={default}" in text and "or unset it" in text
    assert err.value.exit_code == 2


def test_gdal_http_settings_are_checked(monkeypatch):
    monkeypatch.setattr(fetch, "_RIO_CONFIGURED", False)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "three")
    with pytest.raises(InputError, match="GDAL_HTTP_MAX_RETRY='three' is not a whole number"):
        fetch.configure_gdal()
    assert fetch._RIO_CONFIGURED is False  # nothing half-configured: the next call checks again


SWITCH = "GEOSEG_TEST_SWITCH"


@pytest.mark.parametrize("raw, expected", [("1", True), ("TRUE", True), (" yes ", True), ("On", True),
                                           ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_a_switch_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv(SWITCH, raw)
    assert envvars.switch(SWITCH, not expected) is expected


@pytest.mark.parametrize("default", [True, False])
def test_an_unset_switch_gives_the_default(monkeypatch, default):
    monkeypatch.delenv(SWITCH, raising=False)
    assert envvars.switch(SWITCH, default) is default
    monkeypatch.setenv(SWITCH, " ")
    assert envvars.switch(SWITCH, default) is default


@pytest.mark.parametrize("raw", ["2", "enabled", "ture", "-1"])
def test_a_switch_that_is_neither_on_nor_off_is_refused(monkeypatch, raw):
    monkeypatch.setenv(SWITCH, raw)
    with pytest.raises(InputError) as err:
        envvars.switch(SWITCH, False)
    text = str(err.value)
    assert f"{SWITCH}={raw!r} is neither on nor off" in text and f"{SWITCH}=1" in text and "default off" in text
    assert err.value.exit_code == 2


@pytest.mark.parametrize("raw, code", [("false", None), ("maybe", 2)])
def test_geoseg_debug_is_a_switch(monkeypatch, capsys, raw, code):
    """GEOSEG_DEBUG=false used to turn tracebacks on (anything but 0 did); a typo is now refused by name."""
    from geoseg.cli import main

    monkeypatch.setenv("GEOSEG_DEBUG", raw)
    out = main(["search", "/no/such/catalog.json"])
    err = capsys.readouterr().err
    if code is None:  # off: the usual message, no traceback, whatever the failure's exit code
        assert out != 0 and "error:" in err and "Traceback" not in err
    else:
        assert out == code and "GEOSEG_DEBUG='maybe' is neither on nor off" in err


def test_heap_tuning_is_a_switch(monkeypatch):
    from geoseg import heap

    monkeypatch.setenv("GEOSEG_HEAP_TUNING", "off")
    assert heap._left_to_environment() is True
    monkeypatch.setenv("GEOSEG_HEAP_TUNING", "nope")
    with pytest.raises(InputError, match="GEOSEG_HEAP_TUNING='nope' is neither on nor off"):
        heap._left_to_environment()
