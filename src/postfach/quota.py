"""Quota sizes: parsing ``50M``-style figures and formatting them (pure core)."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"50M"`` -> 52428800. ``"0"`` and ``"unlimited"`` mean no limit (0).

    Raises ValueError with a message fit for a one-line CLI error.
    """
    if text.strip().lower() in {"unlimited", "none", "0"}:
        return 0
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 500K, 50M, 2G or unlimited)")
    number, unit = m.groups()
    return int(float(number) * _UNITS[unit.upper()])


def format_size(n: int) -> str:
    if n == 0:
        return "unlimited"
    for unit in ("T", "G", "M", "K"):
        f = _UNITS[unit]
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    for unit in ("T", "G", "M", "K"):
        f = _UNITS[unit]
        if n >= f:
            return f"{n / f:.1f}{unit}"
    return f"{n}B"
