"""The access check in front of every route when ``auth`` is on (a pure ASGI middleware).

| paths | who may call |
|---|---|
| /health, /ready, /metrics | anyone (probes and scrapers; restrict /metrics at the proxy) |
| /api/feedback*, /api/outcomes* | checked by their own module; a valid key is attached if given |
| /api/keys* | the admin key or a key with the ``admin`` role |
| /api/review*, /ui/review* | GET/HEAD: ``viewer``; other methods: ``reviewer`` (Basic accepted: same-site only) |
| /api/*, /ui* | GET/HEAD: a ``viewer`` or ``admin`` key; other methods: ``admin`` |
| everything else (the OpenAI API, /v1/traces) | any valid key |

Keys come as ``Authorization: Bearer <key>`` (or ``x-api-key``). Browsers on /ui (and the
page's own GET /api calls) may use HTTP Basic with the key as the password: a 401 on /ui
asks the browser for it. Basic is never accepted for writes, so another site cannot make a
logged-in browser change anything (no CSRF) — except the review queue's writes, whose
routes refuse any change a browser makes on behalf of another site (``Origin`` /
``Sec-Fetch-Site``, JSON-only API bodies), so a reviewer can label from the browser.
Roles: ``admin`` implies every role, ``reviewer`` implies ``viewer``. The authenticated KeyRecord is put in
``request.state.principal``.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers

from ..errors import GatewayError
from .auth import Forbidden, token_from_headers
from .runtime import has_role

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
OWN_AUTH_PREFIXES = ("/api/feedback", "/api/outcomes")
REVIEW_AREAS = ("/api/review", "/ui/review")
READ_METHODS = frozenset({"GET", "HEAD"})


def _is_under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


class AccessMiddleware:
    def __init__(self, app: Any, access: Any) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = Headers(scope=scope)
        auth = self.access.auth
        if path.startswith(OWN_AUTH_PREFIXES):
            token = token_from_headers(headers, allow_basic=False)
            if token:
                try:
                    scope.setdefault("state", {})["principal"] = await auth.authenticate(token)
                except GatewayError:
                    pass
            await self.app(scope, receive, send)
            return
        ui = _is_under(path, "/ui")
        admin_area = ui or _is_under(path, "/api")
        read = method in READ_METHODS
        review = any(_is_under(path, p) for p in REVIEW_AREAS)
        try:
            key = await auth.authenticate(token_from_headers(headers, allow_basic=admin_area and (read or review)))
            if admin_area:
                if read:
                    role = "admin" if _is_under(path, "/api/keys") else "viewer"
                else:
                    role = "reviewer" if review else "admin"
                    if review and _is_basic(headers) and not _same_site(headers, scope.get("scheme", "http")):
                        self.access.metrics.decision("forbidden")
                        raise Forbidden("A review change sent with browser (Basic) credentials must come from "
                                        "this server's own pages (Origin or Sec-Fetch-Site).", code="cross_site")
                if not has_role(key, role):
                    self.access.metrics.decision("forbidden")
                    raise Forbidden(f"The {key.label} lacks the '{role}' role needed for {method} {path} "
                                    f"(it has: {', '.join(sorted(key.roles)) or 'no roles'}).",
                                    code="permission_denied")
        except GatewayError as exc:
            extra = {"www-authenticate": 'Basic realm="shipyard", charset="UTF-8"'} if ui and exc.status == 401 else None
            await _send_error(send, exc, extra)
            return
        scope.setdefault("state", {})["principal"] = key
        await self.app(scope, receive, send)


def _is_basic(headers: Headers) -> bool:
    return headers.get("authorization", "")[:6].lower() == "basic "


def _same_site(headers: Headers, scheme: str) -> bool:
    """The browser says this request comes from this server's own pages: by
    ``Sec-Fetch-Site`` when it sends one (decisive), else by an ``Origin`` equal to this
    server's scheme and host."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site.lower() in ("same-origin", "none")
    origin = headers.get("origin")
    if origin and origin != "null":
        from urllib.parse import urlsplit

        u = urlsplit(origin)
        return u.scheme == scheme and u.netloc == headers.get("host", "")
    return False


async def _send_error(send: Any, exc: GatewayError, extra: dict[str, str] | None) -> None:
    import orjson

    body = orjson.dumps(exc.to_dict())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for k, v in {**exc.headers, **(extra or {})}.items():
        headers.append((k.lower().encode(), str(v).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
