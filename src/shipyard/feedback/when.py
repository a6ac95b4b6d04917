"""Days as the review queue and its commands and APIs accept them (UTC throughout); durations
and points in time are in :mod:`shipyard.timeparse`."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

from ..errors import InvalidRequest

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


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
