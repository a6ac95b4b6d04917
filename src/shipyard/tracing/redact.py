"""Redaction and size caps applied to recorded payloads, in the recorder's thread."""

from __future__ import annotations

import re
from typing import Any

import orjson

REDACTED = "[REDACTED]"
TRUNCATED_MARK = "…[truncated by shipyard: {n} bytes omitted]"


class Redactor:
    def __init__(self, keys: list[str], patterns: list[str], max_bytes: int) -> None:
        self.keys = {k.lower() for k in keys}
        self.patterns = [re.compile(p) for p in patterns]
        self.max_bytes = max_bytes

    def _walk(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (REDACTED if isinstance(k, str) and k.lower() in self.keys else self._walk(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, str) and self.patterns:
            for p in self.patterns:
                value = p.sub(REDACTED, value)
        return value

    def redact(self, value: Any) -> Any:
        """The value with configured keys and patterns redacted (no size cap)."""
        return self._walk(value) if (self.keys or self.patterns) else value

    def dump(self, value: Any) -> str | None:
        """JSON text of a payload: redacted, and cut to the cap with an explicit marker."""
        if value is None:
            return None
        if self.keys or self.patterns:
            value = self._walk(value)
        raw = orjson.dumps(value, default=str)
        if len(raw) <= self.max_bytes:
            return raw.decode()
        cut = raw[: self.max_bytes].decode("utf-8", "ignore")
        return orjson.dumps(
            {"_truncated": True, "_original_bytes": len(raw), "text": cut + TRUNCATED_MARK.format(n=len(raw) - len(cut.encode()))}
        ).decode()
