"""Times and days as the feedback commands and APIs accept them (UTC throughout)."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Any

from ..errors import InvalidRequest

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_duration(value: str) -> float | None:
    """'90s', '30m', '24h', '7d', '2w' -> seconds; None if not a duration."""
    m = _DURATION.match(value.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_when(value: Any, param: str = "since", now: float | None = None) -> float:
    """Unix seconds, a duration meaning 'that long ago' (24h), or an ISO date/time (UTC
    unless it says otherwise)."""
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
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"Invalid value for '{param}': expected unix seconds, a duration like 24h or 7d, "
                             f"or an ISO time; got {text!r}", param=param, code="invalid_parameter") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def today(now: float | None = None) -> str:
    return dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).strftime("%Y-%m-%d")


def parse_day(value: Any, param: str = "day") -> str:
    """A UTC day as YYYY-MM-DD ('today' and 'yesterday' too)."""
    text = str(value or "").strip().lower()
    if text in ("", "today"):
        return today()
    if text == "yesterday":
        return today(time.time() - 86400)
    if _DAY.match(text):
        try:
            dt.date.fromisoformat(text)
            return text
        except ValueError:
            pass
    raise InvalidRequest(f"Invalid value for '{param}': expected a day as YYYY-MM-DD; got {value!r}",
                         param=param, code="invalid_parameter")


def day_bounds(day: str) -> tuple[float, float]:
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp()
    return start, start + 86400


def shift_day(day: str, days: int) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=days)).isoformat()
