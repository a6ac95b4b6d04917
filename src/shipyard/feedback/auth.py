"""Who may send feedback and outcomes.

One function, :func:`authorize_feedback`, decides for POST /api/feedback and /api/outcomes.
It accepts, in order:

1. a virtual key the access middleware already verified (``request.state.principal``, set
   when ``auth`` is on and the request carries a valid key; see shipyard/access);
2. ``Authorization: Bearer <key>`` with one of ``feedback.api_keys``;
3. no key at all when ``feedback.allow_anonymous: true``.

It returns who is calling (stored with each event as ``principal``: ``vkey:<key id>`` or
``key:<hash prefix>``, never the key) or raises a GatewayError (401) in OpenAI's error
shape. When virtual keys replace ``feedback.api_keys`` altogether, only this function changes.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..errors import GatewayError


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"


def key_id(key: str) -> str:
    """A name for a key that does not reveal it: ``key:`` + 8 hex digits of its SHA-256."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:8]


def authorize_feedback(request: Any) -> str | None:
    """The principal sending feedback (a key id, or None when anonymous feedback is allowed);
    raises Unauthorized (401) otherwise."""
    verified = getattr(request.state, "principal", None)  # a virtual key (access middleware)
    if verified is not None and getattr(verified, "key_id", None):
        return f"vkey:{verified.key_id}"
    cfg = request.app.state.engine.config.feedback
    header = request.headers.get("authorization") or ""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        for key in cfg.api_keys:
            if hmac.compare_digest(token.encode(), key.encode()):
                return key_id(key)
        raise Unauthorized("Invalid feedback API key.", code="invalid_api_key",
                           headers={"www-authenticate": 'Bearer realm="shipyard-feedback"'})
    if cfg.allow_anonymous:
        return None
    hint = ("set feedback.api_keys in the gateway's config and send one as 'Authorization: Bearer <key>'"
            if not cfg.api_keys else "send 'Authorization: Bearer <key>' with one of feedback.api_keys")
    raise Unauthorized(f"Feedback needs an API key: {hint}.", code="missing_api_key",
                       headers={"www-authenticate": 'Bearer realm="shipyard-feedback"'})
