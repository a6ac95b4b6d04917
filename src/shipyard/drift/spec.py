"""What to compare: a reference and a current window, written as short strings.

- ``7d``, ``24h``, ``window:7d``          the last 7 days (up to now)
- ``window:30d..7d``, ``30d..7d``         from 30 days ago to 7 days ago
- ``window:2025-01-01..2025-01-08``      ISO dates or times (UTC when no zone is given)
- ``dataset:NAME``, ``dataset:NAME@3``, ``dataset:NAME:test``, ``dataset:NAME@3:test``
                                          an eval dataset (latest version unless ``@N``;
                                          every split unless ``:SPLIT``)
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..timeparse import parse_duration, parse_iso


@dataclass(frozen=True, slots=True)
class Spec:
    kind: str  # "window" | "dataset"
    text: str  # as written
    start: float | None = None  # window
    end: float | None = None
    name: str | None = None  # dataset
    version: int | None = None
    split: str | None = None

    def describe(self) -> str:
        if self.kind == "dataset":
            out = f"dataset {self.name}"
            out += f" v{self.version}" if self.version is not None else " (latest version)"
            return out + (f", split {self.split}" if self.split else "")
        return f"window {_fmt(self.start)} .. {_fmt(self.end)} UTC"

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"spec": self.text, "kind": self.kind, "description": self.describe()}
        if self.kind == "dataset":
            d.update(name=self.name, version=self.version, split=self.split)
        else:
            d.update(start=self.start, end=self.end)
        return d


def _fmt(ts: float | None) -> str:
    if ts is None:
        return "?"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _point(text: str, now: float, param: str) -> float:
    """'7d' (that long before now), 'now', or an ISO date/time."""
    text = text.strip()
    if text in ("", "now"):
        return now
    ago = parse_duration(text)
    if ago is not None:
        return now - ago
    when = parse_iso(text)
    if when is None:
        raise InvalidRequest(f"Invalid value for '{param}': {text!r} is neither a duration like 7d or 24h "
                             "nor an ISO date/time", param=param)
    return when


def parse_spec(text: str, *, param: str = "reference", now: float | None = None) -> Spec:
    """Parse a reference or current spec (see the module docstring); InvalidRequest names
    ``param`` when it is malformed."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"Missing value for '{param}': use e.g. dataset:NAME, 7d or window:30d..7d",
                             param=param)
    raw = text.strip()
    now = time.time() if now is None else now
    if raw.startswith("dataset:"):
        rest = raw[len("dataset:"):]
        split = None
        if ":" in rest:
            rest, split = rest.rsplit(":", 1)
            split = split or None
        version = None
        if "@" in rest:
            rest, v = rest.rsplit("@", 1)
            if not v.isdigit():
                raise InvalidRequest(f"Invalid value for '{param}': the dataset version after '@' must be a "
                                     f"number, got {v!r}", param=param)
            version = int(v)
        if not rest:
            raise InvalidRequest(f"Invalid value for '{param}': dataset:NAME needs a name", param=param)
        return Spec("dataset", raw, name=rest, version=version, split=split)
    body = raw[len("window:"):] if raw.startswith("window:") else raw
    if ".." in body:
        a, b = body.split("..", 1)
        start, end = _point(a, now, param), _point(b, now, param)
    else:
        start, end = _point(body, now, param), now
    if end <= start:
        raise InvalidRequest(f"Invalid value for '{param}': the window {raw!r} is empty (its end is not after "
                             "its start; write the older point first, e.g. window:30d..7d)", param=param)
    return Spec("window", raw, start=start, end=end)
