"""The key admin API (JSON, OpenAI-style errors). Every route needs the admin key or a key
with the ``admin`` role (the access middleware checks it; ``require_role`` again here).

  POST   /api/keys                 {name, user, team, roles, aliases, rpm, tpm, usd_per_day,
                                    usd_per_month, metadata, expires_at | expires_in_s}: a new
                                    key (201); the response's "key" is shown this once only
  GET    /api/keys                 ?include_revoked=true&team=&user=&limit=&cursor=: keys by
                                    prefix, newest first (never a secret or hash)
  GET    /api/keys/{id}            one key (id or display prefix) with its current budget usage
  PATCH  /api/keys/{id}            change settings (same fields as POST)
  POST   /api/keys/{id}/rotate     {grace_s}: a new secret, same id, limits and budgets (201);
                                   the old secret stops now or after grace_s
  POST   /api/keys/{id}/revoke     revoke (also DELETE /api/keys/{id})

Store calls run in a worker thread. A change is applied to this replica's key cache at once
and announced to the other replicas over Redis (when configured).
"""

from __future__ import annotations

import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..access.runtime import require_role
from ..errors import GatewayError, InvalidRequest
from .app import error_response, json_response, read_json

FIELD_NAMES = {"user": "user_id"}
MAX_BODY = 64 * 1024


def _fields(body: Any, *, creating: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    out = {}
    for k, v in body.items():
        if k == "expires_in_s":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise InvalidRequest("Invalid value for 'expires_in_s': a number of seconds > 0", param=k)
            out["expires_at"] = time.time() + float(v)
            continue
        out[FIELD_NAMES.get(k, k)] = v
    return out


def routes(engine: Any, access: Any) -> list[Route]:
    def keystore() -> Any:
        if access is None or access.keystore is None:
            raise GatewayError("Virtual keys are off on this gateway: configure an auth block "
                               "(docs/configuration.md#auth).", status=404, type="invalid_request_error",
                               code="auth_not_configured")
        return access.keystore

    def handler(fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                who = require_role(request, "admin")
                return await fn(request, keystore(), who)
            except GatewayError as exc:
                return error_response(exc)
            except ClientDisconnect:
                return Response(status_code=499)

        return wrapped

    def view(rec: Any) -> dict[str, Any]:
        return rec.to_dict()

    async def create(request: Request, ks: Any, who: Any) -> Response:
        fields = _fields(await read_json(request, MAX_BODY), creating=True)
        by = getattr(who, "name", None) if who is not None else None
        secret, rec = await run_in_threadpool(ks.create, fields, by)
        return json_response({"key": secret, **view(rec),
                              "note": "Store this key now: it is not shown again."}, 201)

    async def list_keys(request: Request, ks: Any, who: Any) -> Response:
        qp = request.query_params
        known = {"include_revoked", "team", "user", "limit", "cursor"}
        for k in qp:
            if k not in known:
                raise InvalidRequest(f"Unknown query parameter '{k}'; expected one of: {', '.join(sorted(known))}",
                                     param=k, code="unknown_parameter")
        try:
            limit = int(qp.get("limit", "100"))
        except ValueError:
            raise InvalidRequest("Invalid value for 'limit': a whole number", param="limit") from None
        rows, cursor = await run_in_threadpool(
            ks.list, include_revoked=qp.get("include_revoked", "false").lower() in ("1", "true", "yes"),
            team=qp.get("team"), user_id=qp.get("user"), limit=limit, cursor=qp.get("cursor"))
        return json_response({"object": "list", "data": [view(r) for r in rows], "next_cursor": cursor})

    async def get_key(request: Request, ks: Any, who: Any) -> Response:
        rec = await run_in_threadpool(ks.get, request.path_params["key_id"])
        out = view(rec)
        if access.limiter is not None:
            usage: dict[str, Any] = {}
            for scope in access.limiter.scopes(rec):
                got = await access.limiter.usage(scope)
                if got:
                    usage[scope.id] = got
            out["usage"] = usage
        return json_response(out)

    async def patch(request: Request, ks: Any, who: Any) -> Response:
        fields = _fields(await read_json(request, MAX_BODY), creating=False)
        rec = await run_in_threadpool(ks.update, request.path_params["key_id"], fields)
        await access.key_changed(rec.key_id)
        return json_response(view(rec))

    async def rotate(request: Request, ks: Any, who: Any) -> Response:
        grace = 0.0
        if int(request.headers.get("content-length") or 0) > 0:
            body = await read_json(request, MAX_BODY)
            if not isinstance(body, dict):
                raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
            g = body.get("grace_s", 0)
            if isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0:
                raise InvalidRequest("Invalid value for 'grace_s': seconds >= 0", param="grace_s")
            grace = float(g)
        secret, rec = await run_in_threadpool(ks.rotate, request.path_params["key_id"], grace)
        await access.key_changed(rec.key_id)
        return json_response({"key": secret, **view(rec), "grace_s": grace,
                              "note": "Store this key now: it is not shown again."}, 201)

    async def revoke(request: Request, ks: Any, who: Any) -> Response:
        rec = await run_in_threadpool(ks.revoke, request.path_params["key_id"])
        await access.key_changed(rec.key_id)
        return json_response(view(rec))

    return [
        Route("/api/keys", handler(create), methods=["POST"]),
        Route("/api/keys", handler(list_keys), methods=["GET"]),
        Route("/api/keys/{key_id}", handler(get_key), methods=["GET"]),
        Route("/api/keys/{key_id}", handler(patch), methods=["PATCH"]),
        Route("/api/keys/{key_id}", handler(revoke), methods=["DELETE"]),
        Route("/api/keys/{key_id}/rotate", handler(rotate), methods=["POST"]),
        Route("/api/keys/{key_id}/revoke", handler(revoke), methods=["POST"]),
    ]
