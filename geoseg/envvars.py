"""Numbers and switches geoseg reads from environment variables, checked where they are read.

A bad value is refused with the variable, the value and the fix
(:class:`~geoseg.errors.InputError`, exit code 2 from the CLI), never a bare
``ValueError`` from ``int()`` nor a typo silently read as on or off. An
unset or empty variable gives the default.
"""

from __future__ import annotations

import math
import os

from geoseg.errors import InputError


def number(name: str, default: int | float, *, minimum: int | float | None = None) -> int | float:
    """``name``'s value as the type of ``default`` (int or float), at least ``minimum``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    kind = type(default)
    what = "a whole number" if kind is int else "a number"
    fix = f"set {name} to {what}{'' if minimum is None else f' of at least {minimum}'}, e.g. {name}={default}, or unset it (default {default})"
    try:
        value = kind(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not {what}", fix=fix) from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise InputError(f"environment variable {name}={raw!r} is out of range", fix=fix)
    return value


ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def switch(name: str, default: bool) -> bool:
    """``name``'s value as on or off: 1/0, true/false, yes/no, on/off (any case)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if (word := raw.lower()) in ON or word in OFF:
        return word in ON
    raise InputError(f"environment variable {name}={raw!r} is neither on nor off",
                     fix=f"set {name}=1 to turn it on or {name}=0 to turn it off (or true/false, yes/no, on/off), "
                         f"or unset it (default {'on' if default else 'off'})")
