"""Durations and points in time as the commands and the APIs accept them (UTC throughout).

A duration is a number and a unit: ``90s``, ``30m``, ``24h``, ``7d``, ``2w`` (``1.5h`` too).
A point in time is a duration meaning that long ago, unix seconds, or an ISO 8601 date or
time (UTC when it names no zone). Callers pick the forms they take and word their own errors.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Any

from .errors import InvalidRequest

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> float | None:
    """'90s', '30m', '24h', '7d', '2w' -> seconds; None if not a duration."""
    m = _DURATION.match(value.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_iso(value: str) -> float | None:
    """An ISO 8601 date or time -> unix seconds (UTC unless it says otherwise); None if not one."""
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def parse_when(value: Any, param: str = "since", now: float | None = None) -> float:
    """Unix seconds, a duration meaning 'that long ago' (24h), or an ISO date/time (UTC
    unless it says otherwise); InvalidRequest naming ``param`` otherwise."""
    now = time.time() if now is None else now
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    ago = parse_duration(text)
    if ago is not None:
        return now - ago
    try:
        ts = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(ts) and ts >= 0:
            return ts
    when = parse_iso(text)
    if when is None:
        raise InvalidRequest(f"Invalid value for '{param}': expected unix seconds, a duration like 24h or 7d, "
                             f"or an ISO time; got {text!r}", param=param, code="invalid_parameter")
    return when
