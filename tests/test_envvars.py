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
