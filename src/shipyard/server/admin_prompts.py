"""Release management over HTTP: the prompt registry's admin API (JSON) and its web UI pages.

JSON (errors are OpenAI-style error JSON; reads are open like /api/traces, writes need the
``releases.admin_token`` bearer token — or, when none is configured, a loopback client):

  GET    /api/prompts                                  prompts with latest version and labels
  POST   /api/prompts                                  {name, model, messages, ...}: a new version (201)
  GET    /api/prompts/{name}                           one prompt, its labels and versions
  POST   /api/prompts/{name}/versions                  a new version (201)
  GET    /api/prompts/{name}/versions/{version|label}  one version in full
  GET    /api/prompts/{name}/diff?from=A&to=B          unified diff between two versions
  POST   /api/prompts/{name}/render                    {variables, version|label}: the rendered request
  PUT    /api/prompts/{name}/labels/{label}            {version, force?}: move a label
  DELETE /api/prompts/{name}/labels/{label}            remove a label
  POST   /api/prompts/{name}/promote                   {to, version|from, gate, fail_under?}: gated move
  GET    /api/releases/audit                           who changed which label when (cursor-paginated)
  GET    /api/releases/stats                           cache, shadow pools, experiments, pinning
  GET    /api/shadow/report   /api/shadow/results      shadow comparisons
  GET    /api/experiments     /api/experiments/{name}  experiment weights and per-variant results

HTML: /ui/prompts (list), /ui/prompts/{name} (versions, labels, audit), /ui/prompts/{name}/diff.
Every store call runs in a worker thread.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Any

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from .. import __version__
from ..errors import GatewayError, InvalidRequest, NotFound
from . import api, ui
from .app import error_response, read_json

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE.parent / "releases" / "templates"
WINDOW_PARAMS = frozenset({"since", "start", "end"})


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"


def _registry(engine: Any) -> Any:
    reg = engine.releases.registry
    if reg is None:
        from ..releases.store import RegistryUnavailable

        raise RegistryUnavailable(f"The prompt registry is unavailable ({engine.releases.prompts.unavailable}).",
                                  code="registry_unavailable")
    return reg


def _int(param: str, value: Any, minimum: int = 0) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"Invalid value for '{param}': expected a whole number; got {value!r}",
                             param=param) from None
    if n < minimum:
        raise InvalidRequest(f"Invalid value for '{param}': must be at least {minimum}", param=param)
    return n


def _selector(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def routes(engine: Any) -> list[Any]:
    cfg = engine.config
    limit = cfg.server.max_body_bytes
    token = cfg.releases.admin_token

    def authorize(request: Request) -> None:
        access = getattr(request.app.state, "access", None)
        if access is not None and access.auth_on:  # one key system when auth is on: the admin role
            from ..access.runtime import require_role

            require_role(request, "admin")
            return
        if token is not None:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                raise Forbidden("Changing prompts needs the admin token (Authorization: Bearer <releases.admin_token>).",
                                code="admin_token_required")
        elif not _is_loopback(request.client.host if request.client else None):
            raise Forbidden("Changing prompts from another host needs releases.admin_token to be configured.",
                            code="admin_token_required")

    def actor(request: Request, body: dict[str, Any] | None = None) -> str:
        by = (body or {}).get("by") or request.headers.get("x-shipyard-user") or "api"
        return str(by)[:200]

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            data = await read_json(request, limit)
        except ClientDisconnect:
            raise InvalidRequest("The client went away.") from None
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
        return data

    def handler(fn: Any, write: bool = False) -> Any:
        async def wrapped(request: Request) -> Response:
            try:
                if write:
                    authorize(request)
                return await fn(request)
            except GatewayError as exc:
                return error_response(exc)
        return wrapped

    # ---- JSON -------------------------------------------------------------------------
    async def list_prompts(request: Request) -> Response:
        p = api._values(request.query_params, frozenset({"limit", "after"}))
        rows = await run_in_threadpool(_registry(engine).rs.list_prompts, _int("limit", p.get("limit", 100), 1),
                                       p.get("after"))
        nxt = rows[-1]["name"] if len(rows) >= _int("limit", p.get("limit", 100), 1) else None
        return api.json_response({"data": rows, "next_after": nxt})

    async def create(request: Request, name: str | None = None) -> Response:
        body = await body_of(request)
        name = name or body.get("name")
        if name is None:
            raise InvalidRequest("Invalid value for 'name': required", param="name")
        force = bool(body.get("force"))
        fields = {k: v for k, v in body.items() if k not in ("force", "name", "by")}
        v = await run_in_threadpool(_registry(engine).create_version, name, fields, actor(request, body), force=force)
        return api.json_response(v.to_dict(), 201)

    async def create_root(request: Request) -> Response:
        return await create(request)

    async def create_version(request: Request) -> Response:
        return await create(request, request.path_params["name"])

    async def get_prompt(request: Request) -> Response:
        name = request.path_params["name"]
        p = api._values(request.query_params, frozenset({"limit", "before"}))
        reg = _registry(engine)
        info = await run_in_threadpool(reg.get, name)
        before = _int("before", p["before"], 1) if "before" in p else None
        versions = await run_in_threadpool(reg.rs.list_versions, name, _int("limit", p.get("limit", 50), 1), before)
        return api.json_response({**info, "version_list": versions})

    async def get_version(request: Request) -> Response:
        name, sel = request.path_params["name"], request.path_params["version"]
        v = await run_in_threadpool(_registry(engine).version, name, _selector(sel))
        return api.json_response(v.to_dict())

    async def diff(request: Request) -> Response:
        p = api._values(request.query_params, frozenset({"from", "to", "context"}))
        if "from" not in p or "to" not in p:
            raise InvalidRequest("Give the two versions to compare: ?from=A&to=B (numbers or labels)", param="from")
        out = await run_in_threadpool(_registry(engine).diff, request.path_params["name"], _selector(p["from"]),
                                      _selector(p["to"]), _int("context", p.get("context", 3)))
        return api.json_response(out)

    async def render(request: Request) -> Response:
        body = await body_of(request)
        name = request.path_params["name"]
        sel = body.get("version", body.get("label"))
        ref = f"{name}@{sel}" if sel is not None else name
        variables = body.get("variables") or {}
        out = await run_in_threadpool(_registry(engine).render, ref, variables)
        return api.json_response(out)

    async def put_label(request: Request) -> Response:
        body = await body_of(request)
        if "version" not in body:
            raise InvalidRequest("Invalid value for 'version': required", param="version")
        row = await run_in_threadpool(
            lambda: _registry(engine).set_label(request.path_params["name"], request.path_params["label"],
                                                _int("version", body["version"], 1), actor(request, body),
                                                force=bool(body.get("force"))))
        return api.json_response(row)

    async def delete_label(request: Request) -> Response:
        force = request.query_params.get("force", "") in ("1", "true", "yes")
        row = await run_in_threadpool(
            lambda: _registry(engine).remove_label(request.path_params["name"], request.path_params["label"],
                                                   actor(request), force=force))
        return api.json_response(row)

    async def promote_route(request: Request) -> Response:
        from ..releases.promote import promote

        body = await body_of(request)
        to = body.get("to")
        if not isinstance(to, str):
            raise InvalidRequest("Invalid value for 'to': the label to move", param="to")
        version = _int("version", body["version"], 1) if body.get("version") is not None else None
        fail_under = body.get("fail_under")
        if fail_under is not None and not isinstance(fail_under, (int, float)):
            raise InvalidRequest("Invalid value for 'fail_under': a number", param="fail_under")
        out = await run_in_threadpool(
            lambda: promote(_registry(engine), request.path_params["name"], to, actor=actor(request, body),
                            version=version, from_label=body.get("from"), gate=body.get("gate"),
                            fail_under=fail_under, force=bool(body.get("force")), cfg=cfg.releases))
        return api.json_response(out)

    async def audit(request: Request) -> Response:
        p = api._values(request.query_params, frozenset({"prompt", "limit", "cursor"}) | WINDOW_PARAMS)
        start, end = api.parse_window(p)
        prompt = request.path_params.get("name") or p.get("prompt")
        rows, nxt = await run_in_threadpool(lambda: _registry(engine).rs.list_audit(
            prompt=prompt, start=start, end=end, limit=_int("limit", p.get("limit", 50), 1), cursor=p.get("cursor")))
        return api.json_response({"data": rows, "next_cursor": nxt})

    async def stats(request: Request) -> Response:
        return api.json_response(engine.releases.stats())

    async def shadow_report(request: Request) -> Response:
        p = api._values(request.query_params, frozenset({"alias"}) | WINDOW_PARAMS)
        start, end = api.parse_window(p)
        rows = await run_in_threadpool(lambda: _registry(engine).rs.shadow_report(alias=p.get("alias"), start=start,
                                                                                   end=end))
        live = {a: pool.stats() for a, pool in engine.releases.shadow.items()}
        return api.json_response({"data": rows, "pools": live, "window": {"start": start, "end": end}})

    async def shadow_results(request: Request) -> Response:
        p = api._values(request.query_params, frozenset({"alias", "trace_id", "limit", "cursor"}) | WINDOW_PARAMS)
        start, end = api.parse_window(p)
        rows, nxt = await run_in_threadpool(lambda: _registry(engine).rs.list_shadow_results(
            alias=p.get("alias"), trace_id=p.get("trace_id"), start=start, end=end,
            limit=_int("limit", p.get("limit", 50), 1), cursor=p.get("cursor")))
        return api.json_response({"data": rows, "next_cursor": nxt})

    async def experiments(request: Request) -> Response:
        data = [{"name": a.cfg.name, "alias": a.alias, "mode": a.cfg.mode, "unit": a.cfg.unit,
                 "metric": a.cfg.metric, "control": a.cfg.control_name, "configured_weights": a.cfg.fractions(),
                 "weights": a.current_weights()} for a in engine.releases.assigners.values()]
        return api.json_response({"data": data})

    async def experiment(request: Request) -> Response:
        from ..releases.experiments import report

        name = request.path_params["name"]
        a = engine.releases.by_experiment.get(name)
        if a is None:
            raise NotFound(f"Experiment '{name}' does not exist (configured: "
                           f"{', '.join(sorted(engine.releases.by_experiment)) or 'none'}).", code="experiment_not_found")
        p = api._values(request.query_params, WINDOW_PARAMS)
        start, end = api.parse_window(p)
        out = await run_in_threadpool(report, a.cfg, a.alias, _registry(engine).rs, start, end, a.current_weights())
        return api.json_response(out)

    # ---- HTML -------------------------------------------------------------------------
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(TEMPLATES)),
                                    jinja2.FileSystemLoader(str(HERE / "templates"))]),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(time=ui.fmt_time, ms=ui.fmt_ms, cost=ui.fmt_cost, pretty=ui.pretty_json)
    env.globals.update(version=__version__)
    templates = Jinja2Templates(env=env)

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, {"nav": "prompts", "error": None, **context},
                                          status_code=status, headers=ui.SECURITY_HEADERS)

    def error_page(request: Request, exc: GatewayError) -> Response:
        return page(request, "error.html", {"error": exc, "title": "Not found" if exc.status == 404 else "Error"},
                    exc.status)

    async def ui_list(request: Request) -> Response:
        try:
            rows = await run_in_threadpool(_registry(engine).rs.list_prompts, 500)
        except GatewayError as exc:
            return page(request, "prompts.html", {"rows": [], "error": exc}, exc.status)
        return page(request, "prompts.html", {"rows": rows, "protected": cfg.prompts.protected_labels})

    async def ui_prompt(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            reg = _registry(engine)
            info = await run_in_threadpool(reg.get, name)
            versions = await run_in_threadpool(reg.rs.list_versions, name, 200)
            sel = request.query_params.get("version")
            shown = await run_in_threadpool(reg.version, name, _selector(sel) if sel else None) if versions else None
            audit_rows, _ = await run_in_threadpool(lambda: reg.rs.list_audit(prompt=name, start=0, limit=50))
        except GatewayError as exc:
            return error_page(request, exc)
        by_version: dict[int, list[str]] = {}
        for label, v in info["labels"].items():
            by_version.setdefault(v["version"], []).append(label)
        return page(request, "prompt.html", {
            "info": info, "versions": versions, "shown": shown, "labels_by_version": by_version,
            "protected": cfg.prompts.protected_labels, "audit": audit_rows,
            "default_from": versions[1]["version"] if len(versions) > 1 else None,
            "default_to": versions[0]["version"] if versions else None,
        })

    async def ui_diff(request: Request) -> Response:
        name = request.path_params["name"]
        q = request.query_params
        try:
            reg = _registry(engine)
            info = await run_in_threadpool(reg.get, name)
            a, b = q.get("from") or "", q.get("to") or ""
            if not a or not b:
                latest = info["latest"] or 1
                a, b = a or str(max(1, latest - 1)), b or str(latest)
            out = await run_in_threadpool(reg.diff, name, _selector(a), _selector(b), 3)
            versions = await run_in_threadpool(reg.rs.list_versions, name, 200)
        except GatewayError as exc:
            return error_page(request, exc)
        lines = []
        for line in out["diff"].splitlines():
            kind = ("meta" if line.startswith(("---", "+++")) else "hunk" if line.startswith("@@")
                    else "add" if line.startswith("+") else "del" if line.startswith("-") else "ctx")
            lines.append({"kind": kind, "text": line})
        return page(request, "prompt_diff.html", {"info": info, "diff": out, "lines": lines, "versions": versions,
                                                  "form": {"from": a, "to": b}})

    return [
        Route("/api/prompts", handler(list_prompts), methods=["GET"]),
        Route("/api/prompts", handler(create_root, write=True), methods=["POST"]),
        Route("/api/prompts/{name}", handler(get_prompt), methods=["GET"]),
        Route("/api/prompts/{name}/versions", handler(create_version, write=True), methods=["POST"]),
        Route("/api/prompts/{name}/versions/{version}", handler(get_version), methods=["GET"]),
        Route("/api/prompts/{name}/diff", handler(diff), methods=["GET"]),
        Route("/api/prompts/{name}/render", handler(render), methods=["POST"]),
        Route("/api/prompts/{name}/labels/{label}", handler(put_label, write=True), methods=["PUT"]),
        Route("/api/prompts/{name}/labels/{label}", handler(delete_label, write=True), methods=["DELETE"]),
        Route("/api/prompts/{name}/promote", handler(promote_route, write=True), methods=["POST"]),
        Route("/api/prompts/{name}/audit", handler(audit), methods=["GET"]),
        Route("/api/releases/audit", handler(audit), methods=["GET"]),
        Route("/api/releases/stats", handler(stats), methods=["GET"]),
        Route("/api/shadow/report", handler(shadow_report), methods=["GET"]),
        Route("/api/shadow/results", handler(shadow_results), methods=["GET"]),
        Route("/api/experiments", handler(experiments), methods=["GET"]),
        Route("/api/experiments/{name}", handler(experiment), methods=["GET"]),
        Route("/ui/prompts", ui_list, methods=["GET"]),
        Route("/ui/prompts/{name}", ui_prompt, methods=["GET"]),
        Route("/ui/prompts/{name}/diff", ui_diff, methods=["GET"]),
    ]
