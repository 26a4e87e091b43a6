"""geoseg's error hierarchy.

Every error says what was wrong and how to fix it. The CLI prints ``str(err)``
(no traceback) and exits with ``err.exit_code``:

====  ==========================================================
code  meaning
====  ==========================================================
0     done
1     failure (a server that stays down, an unreadable asset, a bug)
2     bad input or configuration (fix the command or the config)
3     no data for the request (nothing matched the search)
====  ==========================================================
"""

from __future__ import annotations


class GeosegError(Exception):
    """Base class: a message, and an optional hint saying how to fix it."""

    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if fix is None else f"{message}\n  fix: {fix}")


class InputError(GeosegError, ValueError):
    """The caller asked for something impossible; exit code 2."""

    exit_code = 2


class BandNotFoundError(InputError, KeyError):
    """A requested band is not in an item (by asset key, band name or common name)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class RegionError(InputError):
    """A region that cannot be parsed, or that intersects no scene."""


class GridError(InputError):
    """A target grid (CRS, resolution, bounds) that cannot be built."""


class NoDataError(GeosegError):
    """Nothing matched: a search with no result; exit code 3."""

    exit_code = 3


class CatalogUnavailableError(GeosegError):
    """The STAC API or static catalog could not be reached after retries."""


class AssetReadError(GeosegError):
    """An asset href that cannot be read (404, refused connection, corrupt file)."""
