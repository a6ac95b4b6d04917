"""What a cache entry is keyed by, and what a request asks of the cache.

The key is a SHA-256 of canonical JSON: the request's fields that shape the answer
(messages, sampling parameters, tools, response_format, n, stop, seed, ... — every field
except those known not to: ``model``, ``user``, ``metadata``, ``stream``,
``stream_options`` and a few more), normalised so equal requests spell the same
(``null`` = absent, ``n: 1`` = absent, ``1.0`` = ``1``, one text part = a string), plus the
per-request guards (``metadata.guards``, they change the answer) and a fingerprint of
the resolved alias: its name, its targets (provider, provider type and base URL, model,
params) and its guard configuration. Changing any of those in the config changes every
key of the alias, so stale answers are never served after a config change.

The semantic *context* key is the same with the last user message left out: the
semantic cache only compares that message, everything else must match exactly.
"""

from __future__ import annotations

import contextvars
import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequest

VERSION = 1
# request fields that do not change the answer (or are replaced by the alias fingerprint)
IGNORED_FIELDS = frozenset({
    "model", "user", "metadata", "stream", "stream_options", "store", "service_tier",
    "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
})

# The request's Cache-Control header, set by the server for the request it handles
# (server/app.py); the library has no headers and uses metadata.cache instead.
REQUEST_CACHE_CONTROL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "shipyard_request_cache_control", default=None)


def _num(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _message(m: Any) -> Any:
    if not isinstance(m, dict):
        return m
    out = {k: _num(v) for k, v in m.items() if v is not None}
    content = out.get("content")
    if (isinstance(content, list) and len(content) == 1 and isinstance(content[0], dict)
            and content[0].get("type") == "text" and isinstance(content[0].get("text"), str)
            and set(content[0]) <= {"type", "text"}):
        out["content"] = content[0]["text"]
    return out


def normalise(body: dict[str, Any]) -> dict[str, Any]:
    """The request fields that shape the answer, spelled one way."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in IGNORED_FIELDS or v is None:
            continue
        if k == "messages" and isinstance(v, list):
            v = [_message(m) for m in v]
        out[k] = _num(v)
    if out.get("n") == 1:
        del out["n"]
    return out


def deterministic(body: dict[str, Any]) -> bool:
    """Temperature 0 or a fixed seed: the same request should get the same answer."""
    t = body.get("temperature")
    return (t is not None and t == 0) or body.get("seed") is not None


def digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


_fingerprints: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def alias_fingerprint(router: Any, config: Any) -> str:
    """The resolved alias as the cache sees it: name, targets (with their providers' type and
    base URL, never secrets), the alias's guards and the named guard specs they may use."""
    try:
        return _fingerprints[router]
    except (KeyError, TypeError):
        pass
    targets = []
    for t in router.targets:
        block = config.providers.get(t.provider.name) or {}
        targets.append({"provider": t.provider.name, "type": block.get("type"), "base_url": block.get("base_url"),
                        "model": t.model, "params": t.params})
    guards = getattr(router.cfg, "guards", None)
    fp = digest({
        "alias": router.alias,
        "targets": targets,
        "guards": guards.model_dump(mode="json") if guards is not None else None,
        "named_guards": config.guards,
    })[:32]
    try:
        _fingerprints[router] = fp
    except TypeError:  # pragma: no cover - a router type without weak references
        pass
    return fp


def last_user_text(messages: list[Any]) -> str | None:
    """The text of the last message when it is a user message made of text only."""
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        return None
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None


@dataclass(slots=True)
class Keys:
    exact: str
    context: str | None  # semantic context (None: the request cannot be matched semantically)
    text: str | None  # the last user message, compared semantically


def request_keys(body: dict[str, Any], fingerprint: str, metadata: dict[str, Any]) -> Keys | None:
    """The exact key and semantic context of a request; None when it cannot be keyed."""
    norm = normalise(body)
    extra = {"guards": metadata.get("guards")} if metadata.get("guards") is not None else {}
    try:
        exact = digest({"v": VERSION, "alias": fingerprint, "request": norm, **extra})
    except (TypeError, orjson.JSONEncodeError):  # a library caller passed something not JSON
        return None
    messages = norm.get("messages") or []
    text = last_user_text(messages)
    context = None
    if text is not None:
        ctx = {**norm, "messages": [*messages[:-1], {**messages[-1], "content": None}]}
        context = digest({"v": VERSION, "alias": fingerprint, "context": ctx, **extra})
    return Keys(exact, context, text)


# ---- what the request asks ------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class Directive:
    read: bool = True  # may be answered from the cache
    write: bool = True  # its answer may be stored
    force: bool = False  # cache even when not deterministic
    max_age_s: float | None = None  # only entries younger than this
    reason: str | None = None  # why the cache is bypassed (recorded)


_META_NO = {"no", "off", "no-store", "false", False}
_META_REFRESH = {"refresh", "no-cache"}
_META_YES = {"yes", "on", "force", "true", True}


def directive(metadata: dict[str, Any], cache_control: str | None) -> Directive:
    """From ``metadata.cache`` (``no`` | ``refresh`` | ``yes``) and the ``Cache-Control``
    request header (``no-store`` | ``no-cache`` | ``max-age=N``); the stricter wins."""
    read = write = True
    force = False
    reason = None
    max_age: float | None = None
    v = metadata.get("cache") if metadata else None
    if v is not None:
        key = v.lower() if isinstance(v, str) else v if isinstance(v, bool) else object()
        if key in _META_NO:
            read = write = False
            reason = "metadata.cache"
        elif key in _META_REFRESH:
            read = False
            reason = "metadata.cache"
        elif key in _META_YES:
            force = True
        else:
            raise InvalidRequest("Invalid value for 'metadata.cache': must be 'no' (bypass the cache), "
                                 "'refresh' (skip the lookup, store the answer) or 'yes' (cache even a "
                                 "non-deterministic request)", param="metadata.cache")
    if cache_control:
        for part in cache_control.lower().split(","):
            name, _, arg = part.strip().partition("=")
            if name == "no-store":
                read = write = False
                reason = "cache-control"
            elif name == "no-cache":
                read = False
                reason = reason or "cache-control"
            elif name == "max-age":
                try:
                    age = float(arg.strip().strip('"'))
                except ValueError:
                    continue
                if age <= 0:
                    read = False
                    reason = reason or "cache-control"
                else:
                    max_age = age if max_age is None else min(max_age, age)
    return Directive(read, write, force, max_age, reason)
