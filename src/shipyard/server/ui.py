"""The web UI at /ui: trace list, trace detail and dashboard pages.

Pages are rendered on the server with Jinja2 (autoescaping everything: recorded inputs and
outputs are untrusted) and enhanced by a little vanilla JS from ./static. The data comes
from the same functions as the JSON API in api.py, so both apply the same bounds and
validation. A strict Content-Security-Policy (no inline scripts, nothing from other
origins) backs up the escaping.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .. import __version__
from ..errors import GatewayError
from . import api

HERE = Path(__file__).resolve().parent
PRESETS = ("1h", "24h", "7d", "30d")
DEFAULT_PRESET = "7d"
BUCKETS = (("auto", "auto"), ("60", "1 min"), ("300", "5 min"), ("900", "15 min"),
           ("3600", "1 hour"), ("21600", "6 hours"), ("86400", "1 day"))
FILTER_FIELDS = ("alias", "model", "user", "session", "status", "min_cost", "max_cost",
                 "min_latency_ms", "max_latency_ms", "q")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
TRIPPED = frozenset({"block", "blocked", "fail", "failed", "deny", "denied", "reject", "rejected", "redact",
                     "redacted", "mask", "reask", "re-ask", "fallback", "flag", "flagged"})
_SAFE_IMAGE = re.compile(r"^data:image/(png|jpeg|jpg|gif|webp);base64,[A-Za-z0-9+/=\s]+$")


# ---- formatting ----------------------------------------------------------------------
def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds")


def fmt_input_time(ts: float | None) -> str:
    """For <input type=datetime-local> (UTC)."""
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def fmt_cost(usd: float | None) -> str:
    if usd is None:
        return "—"
    if usd == 0:
        return "$0"
    return f"${usd:.6f}".rstrip("0") if usd < 0.01 else f"${usd:.4f}"


def fmt_tokens(i: int | None, o: int | None) -> str:
    if i is None and o is None:
        return "—"
    return f"{i or 0} → {o or 0}"


def pretty_json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=api.jsonable).decode()
    except TypeError:
        return repr(value)


def script_json(value: Any) -> Markup:
    """JSON safe to put inside <script type="application/json">: no '<', '>', '&' or quote can
    end the element or start markup."""
    text = api.dumps(value).decode()
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return Markup(text)


# ---- chat messages -------------------------------------------------------------------
def _arguments(raw: Any) -> str:
    if isinstance(raw, str):
        try:
            return pretty_json(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return raw
    return pretty_json(raw)


def _part_view(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return {"type": "json", "json": pretty_json(part)}
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "refusal", "text": str(part.get("refusal", ""))}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        detail = image.get("detail") if isinstance(image, dict) else None
        url = url if isinstance(url, str) else ""
        if _SAFE_IMAGE.match(url):
            return {"type": "image", "src": url, "label": f"{len(url)} bytes inline", "detail": detail}
        href = url if url.startswith(("https://", "http://")) else None
        label = url if len(url) <= 200 else url[:200] + "…"
        return {"type": "image", "href": href, "label": label, "detail": detail}
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        data = audio.get("data") if isinstance(audio, dict) else None
        fmt = audio.get("format") if isinstance(audio, dict) else None
        return {"type": "media", "label": f"audio ({fmt or 'unknown format'}, {len(data or '')} bytes base64)"}
    if kind == "file":
        f = part.get("file") or {}
        name = f.get("filename") or f.get("file_id") or "file" if isinstance(f, dict) else "file"
        return {"type": "media", "label": f"file: {name}"}
    return {"type": "json", "json": pretty_json(part)}


def message_view(msg: Any) -> dict[str, Any]:
    """A chat message in a shape the template can show: role, text/multimodal parts, tool calls."""
    if not isinstance(msg, dict):
        return {"role": "?", "parts": [{"type": "json", "json": pretty_json(msg)}], "tool_calls": []}
    content = msg.get("content")
    if content is None:
        parts = []
    elif isinstance(content, list):
        parts = [_part_view(p) for p in content]
    else:
        parts = [_part_view(content if isinstance(content, str) else str(content))]
    if msg.get("refusal"):
        parts.append({"type": "refusal", "text": str(msg["refusal"])})
    calls = []
    for c in msg.get("tool_calls") or []:
        if not isinstance(c, dict):
            continue
        fn = c.get("function") or {}
        calls.append({"id": c.get("id"), "name": fn.get("name") if isinstance(fn, dict) else None,
                      "arguments": _arguments(fn.get("arguments") if isinstance(fn, dict) else fn)})
    if isinstance(msg.get("function_call"), dict):  # legacy functions API
        fc = msg["function_call"]
        calls.append({"id": None, "name": fc.get("name"), "arguments": _arguments(fc.get("arguments"))})
    return {"role": str(msg.get("role", "?")), "name": msg.get("name"),
            "tool_call_id": msg.get("tool_call_id"), "parts": parts, "tool_calls": calls}


def input_messages(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        return [message_view(m) for m in value["messages"]]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return [message_view(m) for m in value]
    return None


def output_messages(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, dict) and isinstance(value.get("choices"), list):
        out = []
        for c in value["choices"]:
            if isinstance(c, dict):
                view = message_view(c.get("message") or c.get("delta") or {})
                view["finish_reason"] = c.get("finish_reason")
                view["index"] = c.get("index")
                out.append(view)
        return out
    if isinstance(value, dict) and "role" in value:
        return [message_view(value)]
    return input_messages(value)


def truncated_text(value: Any) -> str | None:
    if isinstance(value, dict) and value.get("_truncated") is True:
        return str(value.get("text", ""))
    return None


# ---- spans ---------------------------------------------------------------------------
def _guard_decisions(span: dict[str, Any]) -> list[dict[str, Any]]:
    attrs = span.get("attributes") or {}
    decisions = attrs.get("guard_decisions")
    if isinstance(decisions, dict):
        decisions = [decisions]
    out = [d if isinstance(d, dict) else {"decision": d} for d in decisions or []]
    if span.get("kind") == "guard" and not out:
        keys = ("guard", "name", "stage", "action", "decision", "outcome", "passed", "reason", "score")
        d = {k: attrs[k] for k in keys if k in attrs}
        if d:
            out.append(d)
    return out


def _decision_view(d: dict[str, Any]) -> dict[str, Any]:
    """One guard decision. With a ``passed`` flag, ``action`` is what the guard does on a
    failure, so a passing check shows "pass"; without one, the action is the outcome."""
    name = d.get("guard") or d.get("name") or d.get("type") or "guard"
    action = d.get("action") or d.get("decision") or d.get("outcome")
    passed = d.get("passed")
    if passed is True:
        label, tripped = "pass", False
    elif passed is False:
        label, tripped = str(action or "fail"), True
    else:
        label = None if action is None else str(action)
        tripped = str(action).lower() in TRIPPED
    reason = d.get("reason") or d.get("message") or d.get("detail")
    shown = {"guard", "name", "type", "stage", "action", "decision", "outcome", "passed", "reason", "message", "detail"}
    rest = {k: v for k, v in d.items() if k not in shown and v not in (None, "", {}, [])}
    if passed is True and action:
        rest["action on failure"] = action
    return {"name": str(name), "action": label, "reason": None if reason is None else str(reason),
            "stage": d.get("stage"), "extra": pretty_json(rest) if rest else None, "tripped": tripped}


def lineage(span: dict[str, Any]) -> list[tuple[str, Any]]:
    attrs = span.get("attributes") or {}
    rows: list[tuple[str, Any]] = []

    def add(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            rows.append((label, value))

    add("alias", span.get("alias"))
    add("provider", span.get("provider"))
    add("model", span.get("model"))
    add("response model", span.get("response_model"))
    prompt = attrs.get("prompt")
    if isinstance(prompt, dict):
        label = str(prompt.get("name") or prompt.get("id") or "?")
        if prompt.get("version") is not None:
            label += f" v{prompt['version']}"
        if prompt.get("label"):
            label += f" ({prompt['label']})"
        add("prompt", label)
    elif prompt:
        add("prompt", str(prompt))
    add("config hash", attrs.get("config_hash"))
    docs = attrs.get("retrieved_document_ids")
    if isinstance(docs, list):
        add("retrieved documents", ", ".join(str(d) for d in docs))
    add("completion id", span.get("completion_id"))
    add("user", span.get("user_id"))
    add("session", span.get("session_id"))
    if span.get("input_tokens") is not None or span.get("output_tokens") is not None:
        tokens = fmt_tokens(span.get("input_tokens"), span.get("output_tokens"))
        if span.get("cached_tokens"):
            tokens += f" ({span['cached_tokens']} cached)"
        add("tokens (in → out)", tokens)
    if span.get("cost_usd") is not None:
        add("cost", fmt_cost(span["cost_usd"]))
    elif span.get("input_tokens") is not None or span.get("output_tokens") is not None:
        add("cost", "unknown (no price for this model)")
    if span.get("ttft_ms") is not None:
        add("time to first token", fmt_ms(span["ttft_ms"]))
    if attrs.get("stream"):
        add("streamed", "yes")
    if attrs.get("fallbacks"):
        add("fallbacks", attrs["fallbacks"])
    if attrs.get("http_status") is not None:
        add("HTTP status", attrs["http_status"])
    return rows


def span_view(span: dict[str, Any], t0: float, total_ms: float) -> dict[str, Any]:
    attrs = span.get("attributes") or {}
    start = span.get("start_time") or t0
    dur = span.get("duration_ms")
    offset_ms = max(0.0, (start - t0) * 1000.0)
    left = min(100.0, offset_ms / total_ms * 100.0) if total_ms > 0 else 0.0
    width = (dur or 0.0) / total_ms * 100.0 if total_ms > 0 else 100.0
    width = max(0.6, min(width, 100.0 - left))
    attempts = [a for a in attrs.get("attempts") or [] if isinstance(a, dict)]
    decisions = [_decision_view(d) for d in _guard_decisions(span)]
    return {
        "span": span,
        "id": span["span_id"],
        "offset": fmt_ms(offset_ms),
        "duration": fmt_ms(dur),
        "bar_left": round(left, 3),
        "bar_width": round(width, 3),
        "lineage": lineage(span),
        "attempts": attempts,
        "decisions": decisions,
        "guard": span.get("kind") == "guard" or bool(decisions),
        "tripped": any(d["tripped"] for d in decisions),
        "in_messages": input_messages(span.get("input")),
        "out_messages": output_messages(span.get("output")),
        "in_truncated": truncated_text(span.get("input")),
        "out_truncated": truncated_text(span.get("output")),
        "input_json": None if span.get("input") is None else pretty_json(span["input"]),
        "output_json": None if span.get("output") is None else pretty_json(span["output"]),
        "attributes_json": pretty_json(attrs) if attrs else None,
        "tools": (span.get("input") or {}).get("tools") if isinstance(span.get("input"), dict) else None,
    }


def span_tree(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spans in depth-first order (children by start time), each with its depth and view."""
    if not spans:
        return []
    t0 = min(s["start_time"] for s in spans)
    t1 = max((s.get("end_time") or s["start_time"]) for s in spans)
    total_ms = (t1 - t0) * 1000.0
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s.get("parent_id") if s.get("parent_id") in ids else None
        children.setdefault(parent, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: (s["start_time"], s["span_id"]))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            if s["span_id"] in seen:  # defensive: a cycle in bad data
                continue
            seen.add(s["span_id"])
            view = span_view(s, t0, total_ms)
            view["depth"] = depth
            view["has_children"] = bool(children.get(s["span_id"]))
            out.append(view)
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return out


# ---- dashboard -----------------------------------------------------------------------
def model_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        t = totals.setdefault(r.get("model") or "(unknown)", {
            "model": r.get("model") or "(unknown)", "requests": 0, "errors": 0, "cost_usd": None,
            "input_tokens": 0, "output_tokens": 0, "p95_ms": None})
        t["requests"] += r.get("requests") or 0
        t["errors"] += r.get("errors") or 0
        t["input_tokens"] += r.get("input_tokens") or 0
        t["output_tokens"] += r.get("output_tokens") or 0
        if r.get("cost_usd") is not None:
            t["cost_usd"] = (t["cost_usd"] or 0.0) + r["cost_usd"]
        if r.get("p95_ms") is not None:
            t["p95_ms"] = max(t["p95_ms"] or 0.0, r["p95_ms"])
    for t in totals.values():
        t["error_rate"] = f"{100.0 * t['errors'] / t['requests']:.1f}%" if t["requests"] else "—"
    return sorted(totals.values(), key=lambda t: -t["requests"])


# ---- routes --------------------------------------------------------------------------
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=True,  # every template, whatever its extension
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, iso=fmt_iso, ms=fmt_ms, cost=fmt_cost, pretty=pretty_json, script_json=script_json)
    env.globals.update(version=__version__, fmt_tokens=fmt_tokens)
    return env


def _window_params(q: Mapping[str, str], default: str = DEFAULT_PRESET) -> tuple[dict[str, str], str]:
    """The UI's time selector -> API parameters: a preset (since=24h) or since=custom + start/end."""
    since = (q.get("since") or "").strip()
    start, end = (q.get("start") or "").strip(), (q.get("end") or "").strip()
    if since == "custom" or (not since and (start or end)):
        return {k: v for k, v in (("start", start), ("end", end)) if v}, "custom"
    since = since or default
    return {"since": since}, since


def routes(engine: Any) -> list[Any]:
    """The /ui pages and their static files (a server feature: see features.py)."""
    templates = Jinja2Templates(env=_env())
    aliases = sorted(getattr(engine, "routers", {}) or {})
    models = sorted({t.model for r in (getattr(engine, "routers", {}) or {}).values()
                     for t in getattr(r.cfg, "targets", [])})

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        context = {"aliases": aliases, "models": models, **context}
        return templates.TemplateResponse(request, name, context, status_code=status, headers=SECURITY_HEADERS)

    async def index(request: Request) -> Response:
        q = request.query_params
        window, preset = _window_params(q)
        params = {**window, **{k: q[k] for k in FILTER_FIELDS if q.get(k, "").strip()}}
        for k in ("limit", "cursor"):  # from links, not the form
            if q.get(k, "").strip():
                params[k] = q[k]
        form = {k: q.get(k, "") for k in FILTER_FIELDS}
        form.update(since=preset, start=q.get("start", ""), end=q.get("end", ""))
        ctx: dict[str, Any] = {"form": form, "presets": PRESETS, "rows": [], "error": None,
                               "next_url": None, "api_url": None, "cursor": None, "window": None}
        try:
            f = api.parse_trace_filter(params)
            rows, cursor = await api.list_traces(engine, f)
        except GatewayError as exc:
            ctx["error"] = exc
            return page(request, "traces.html", ctx, exc.status)
        # pin the window so "load more" pages through the same range
        pinned = {k: v for k, v in params.items() if k not in ("since", "start", "end", "cursor")}
        pinned.update(start=repr(f.start), end=repr(f.end))
        ctx.update(rows=rows, cursor=cursor, window=(f.start, f.end),
                   api_url="/api/traces?" + urllib.parse.urlencode(pinned))
        if cursor:
            more = {k: v for k, v in q.items() if k != "cursor" and v}
            more.update(start=repr(f.start), end=repr(f.end), since="custom", cursor=cursor)
            ctx["next_url"] = "/ui?" + urllib.parse.urlencode(more)
        return page(request, "traces.html", ctx)

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        try:
            t = await api.get_trace(engine, trace_id)
        except GatewayError as exc:
            return page(request, "error.html", {"error": exc, "title": "Trace not found"
                                                 if exc.status == 404 else "Error"}, exc.status)
        tree = span_tree(t.get("spans") or [])
        return page(request, "trace.html", {"trace": t, "tree": tree,
                                            "errors": sum(1 for v in tree if v["span"].get("status") == "error")})

    async def dashboard(request: Request) -> Response:
        q = request.query_params
        window, preset = _window_params(q)
        bucket = (q.get("bucket") or "auto").strip()
        params = {**window, "bucket": bucket}
        ctx: dict[str, Any] = {"form": {"since": preset, "start": q.get("start", ""), "end": q.get("end", ""),
                                        "bucket": bucket},
                               "presets": PRESETS, "buckets": BUCKETS, "error": None, "data": None, "totals": []}
        try:
            data = await api.dashboard(engine, params)
        except GatewayError as exc:
            ctx["error"] = exc
            return page(request, "dashboard.html", ctx, exc.status)
        ctx.update(data=data, totals=model_totals(data["data"]))
        return page(request, "dashboard.html", ctx)

    async def slash(request: Request) -> Response:
        return RedirectResponse("/ui" + (f"?{request.url.query}" if request.url.query else ""), status_code=308)

    return [
        Route("/ui", index, methods=["GET"]),
        Route("/ui/", slash, methods=["GET"]),
        Route("/ui/traces/{trace_id}", trace, methods=["GET"]),
        Route("/ui/dashboard", dashboard, methods=["GET"]),
        Mount("/ui/static", app=StaticFiles(directory=str(HERE / "static")), name="ui-static"),
    ]
