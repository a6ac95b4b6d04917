"""What a feedback event or an outcome is, validated once (errors name the field).

Explicit kinds: ``thumbs`` (value up/down), ``score`` (a number on a scale, 0..1 by
default), ``label`` (a categorical value), ``comment`` (text), ``correction`` (the output
it should have been, as text). Implicit kinds: ``accepted``, ``edited`` (text: the final
text the user kept), ``ignored``, ``regenerated``, ``copied``.

Each event gets a *sentiment* (+1 positive, -1 negative, 0 neither) that the analytics
count and the review queue samples on:

| kind | sentiment |
|---|---|
| thumbs up / down | +1 / -1 |
| score | -1 below the middle of its scale (a "low score"), else +1 |
| accepted, copied | +1 |
| correction, ignored, regenerated | -1 |
| edited, comment, label | 0 |
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest

EXPLICIT = ("thumbs", "score", "label", "comment", "correction")
IMPLICIT = ("accepted", "edited", "ignored", "regenerated", "copied")
KINDS = EXPLICIT + IMPLICIT
SOURCES = ("end_user", "annotator", "judge")
# shorthands accepted for ``kind`` -> (kind, value)
KIND_ALIASES: dict[str, tuple[str, Any]] = {
    "thumbs_up": ("thumbs", "up"), "thumbs_down": ("thumbs", "down"), "rating": ("score", None),
    "corrected": ("correction", None), "corrected_output": ("correction", None),
    "copy": ("copied", None), "accept": ("accepted", None), "regenerate": ("regenerated", None),
    "edit": ("edited", None), "ignore": ("ignored", None),
}
TEXT_KINDS = ("comment", "correction", "edited")
SENTIMENT = {"accepted": 1, "copied": 1, "correction": -1, "ignored": -1, "regenerated": -1,
             "edited": 0, "comment": 0, "label": 0}
UP = {"up", "+1", "1", "true", "yes", "good", "👍", "positive"}
DOWN = {"down", "-1", "0", "false", "no", "bad", "👎", "negative"}
LOW_SCORE = 0.5  # a normalised score below this is a low score (negative)
MAX_ID = 256
MAX_TEXT = 256 * 1024
MAX_METADATA = 16 * 1024

FEEDBACK_FIELDS = frozenset({
    "trace_id", "completion_id", "span_id", "kind", "value", "scale", "label", "text", "source",
    "user_id", "session_id", "metadata", "idempotency_key",
})
OUTCOME_FIELDS = frozenset({"session_id", "trace_id", "name", "value", "metadata", "idempotency_key"})


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_feedback")


def _opt_str(body: dict[str, Any], key: str, limit: int = MAX_ID) -> str | None:
    v = body.get(key)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise _bad(key, f"expected a string, got {type(v).__name__}")
    v = v.strip()
    if not v:
        return None
    if len(v) > limit:
        raise _bad(key, f"longer than {limit} characters")
    return v


def _check_fields(body: Any, allowed: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"The {what} must be a JSON object.", code="invalid_body")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {', '.join(repr(u) for u in unknown)} in the {what}. "
                             f"Known fields: {', '.join(sorted(allowed))}.", param=unknown[0], code="unknown_field")
    return body


def _metadata(body: dict[str, Any]) -> dict[str, Any] | None:
    meta = body.get("metadata")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise _bad("metadata", "expected a JSON object")
    if len(orjson.dumps(meta, default=str)) > MAX_METADATA:
        raise _bad("metadata", f"larger than {MAX_METADATA} bytes")
    return meta


def _number(param: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise _bad(param, f"expected a number, got {v!r}") from None
        else:
            raise _bad(param, f"expected a number, got {type(v).__name__}")
    if not math.isfinite(v):
        raise _bad(param, "expected a finite number")
    return float(v)


@dataclass(slots=True)
class FeedbackIn:
    """A validated feedback event (before it is resolved to a trace)."""

    kind: str
    trace_id: str | None = None
    completion_id: str | None = None
    span_id: str | None = None
    value: float | None = None
    label: str | None = None
    text: str | None = None
    score_norm: float | None = None
    sentiment: int = 0
    source: str = "end_user"
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    scale: tuple[float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def request_hash(self) -> str:
        """What the event says (not its key): a retry with the same key must say the same."""
        data = [self.trace_id, self.completion_id, self.span_id, self.kind, self.value, self.label, self.text,
                self.source, self.user_id, self.session_id, self.metadata, self.scale]
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


def parse_feedback(body: Any, idempotency_key: str | None = None) -> FeedbackIn:
    """A FeedbackIn from a request body; InvalidRequest (400) naming the bad field."""
    body = _check_fields(body, FEEDBACK_FIELDS, "feedback")
    raw_kind = body.get("kind")
    if not isinstance(raw_kind, str) or not raw_kind.strip():
        raise _bad("kind", f"required; one of {', '.join(KINDS)}")
    kind = raw_kind.strip().lower()
    value: Any = body.get("value")
    if kind in KIND_ALIASES:
        kind, implied = KIND_ALIASES[kind]
        if implied is not None:
            if value is not None and str(value).strip().lower() not in (UP if implied == "up" else DOWN):
                raise _bad("value", f"contradicts kind {raw_kind!r}")
            value = implied
    if kind not in KINDS:
        raise _bad("kind", f"expected one of {', '.join(KINDS)} (or {', '.join(KIND_ALIASES)}); got {raw_kind!r}")
    fb = FeedbackIn(kind=kind)
    fb.trace_id = _opt_str(body, "trace_id")
    fb.completion_id = _opt_str(body, "completion_id")
    fb.span_id = _opt_str(body, "span_id")
    if fb.trace_id is None and fb.completion_id is None:
        raise InvalidRequest("Feedback needs a 'trace_id' (the x-shipyard-trace-id response header, or "
                             "`.trace_id` in the library) or a 'completion_id' (the response's `id`).",
                             param="trace_id", code="missing_target")
    source = _opt_str(body, "source") or "end_user"
    if source not in SOURCES:
        raise _bad("source", f"expected one of {', '.join(SOURCES)}; got {source!r}")
    fb.source = source
    fb.user_id = _opt_str(body, "user_id")
    fb.session_id = _opt_str(body, "session_id")
    fb.metadata = _metadata(body)
    key = _opt_str(body, "idempotency_key")
    header = (idempotency_key or "").strip() or None
    if key and header and key != header:
        raise _bad("idempotency_key", "differs from the Idempotency-Key header")
    fb.idempotency_key = key or header
    if fb.idempotency_key and len(fb.idempotency_key) > MAX_ID:
        raise _bad("idempotency_key", f"longer than {MAX_ID} characters")

    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise _bad("text", f"expected a string, got {type(text).__name__}")
    if text is not None and len(text) > MAX_TEXT:
        raise _bad("text", f"longer than {MAX_TEXT} characters")
    if kind in TEXT_KINDS:
        if not text or not text.strip():
            what = {"comment": "the comment", "correction": "the corrected output",
                    "edited": "the final text the user kept"}[kind]
            raise _bad("text", f"required for kind {kind!r}: {what}")
    fb.text = text if text else None
    if body.get("scale") is not None and kind != "score":
        raise _bad("scale", "only for kind 'score'")
    if body.get("label") is not None and kind != "label":
        raise _bad("label", "only for kind 'label' (use 'text' for comments)")

    if kind == "thumbs":
        v = str(value).strip().lower() if isinstance(value, (str, int, bool)) else None
        if isinstance(value, bool):
            v = "up" if value else "down"
        if v in UP:
            fb.value, fb.sentiment = 1.0, 1
        elif v in DOWN:
            fb.value, fb.sentiment = -1.0, -1
        else:
            raise _bad("value", f"thumbs feedback is 'up' or 'down'; got {value!r}")
    elif kind == "score":
        if value is None:
            raise _bad("value", "required for kind 'score' (a number)")
        fb.value = _number("value", value)
        lo, hi = 0.0, 1.0
        scale = body.get("scale")
        if scale is not None:
            if not isinstance(scale, list) or len(scale) != 2:
                raise _bad("scale", "expected [min, max]")
            lo, hi = _number("scale", scale[0]), _number("scale", scale[1])
            if not lo < hi:
                raise _bad("scale", "min must be less than max")
            fb.scale = (lo, hi)
        if not lo <= fb.value <= hi:
            raise _bad("value", f"{fb.value:g} is outside the scale [{lo:g}, {hi:g}]"
                       + ("" if scale is not None else "; give 'scale': [min, max] for other ranges"))
        fb.score_norm = (fb.value - lo) / (hi - lo)
        fb.sentiment = -1 if fb.score_norm < LOW_SCORE else 1
    elif kind == "label":
        label = body.get("label", value)
        if not isinstance(label, str) or not label.strip():
            raise _bad("label", "required for kind 'label' (a category name)")
        if len(label) > MAX_ID:
            raise _bad("label", f"longer than {MAX_ID} characters")
        fb.label = label.strip()
    else:
        if value is not None:
            raise _bad("value", f"not used by kind {kind!r}")
        fb.sentiment = SENTIMENT[kind]
    return fb


@dataclass(slots=True)
class OutcomeIn:
    name: str
    value: float
    session_id: str | None = None
    trace_id: str | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None

    def request_hash(self) -> str:
        data = [self.name, self.value, self.session_id, self.trace_id, self.metadata]
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


def parse_outcome(body: Any, idempotency_key: str | None = None) -> OutcomeIn:
    body = _check_fields(body, OUTCOME_FIELDS, "outcome")
    name = _opt_str(body, "name")
    if name is None:
        raise _bad("name", "required: the metric's name, e.g. 'purchase' or 'revenue_usd'")
    if "value" not in body:
        raise _bad("value", "required: a number")
    out = OutcomeIn(name=name, value=_number("value", body["value"]))
    out.session_id = _opt_str(body, "session_id")
    out.trace_id = _opt_str(body, "trace_id")
    if out.session_id is None and out.trace_id is None:
        raise InvalidRequest("An outcome needs a 'session_id' (the request's metadata.session_id) or a 'trace_id'.",
                             param="session_id", code="missing_target")
    out.metadata = _metadata(body)
    key = _opt_str(body, "idempotency_key")
    header = (idempotency_key or "").strip() or None
    if key and header and key != header:
        raise _bad("idempotency_key", "differs from the Idempotency-Key header")
    out.idempotency_key = key or header
    return out
