"""The review queue in the web UI, and its JSON API (a server feature: see features.py).

GET  /ui/review[?day=YYYY-MM-DD&i=N]   the day's queue (today's is built on first visit), item N
POST /ui/review/label                  label an item (form fallback without JavaScript) -> next item
POST /ui/review/dataset                add an item to an eval dataset (form fallback)
POST /ui/review/build                  build a past day's queue (form)
GET  /api/review/queue?day=            the queue (today's built on first use)
POST /api/review/queue                 {"day", "size", "window", "force"}: build (or rebuild) a day
GET  /api/review/labels                ?trace_id= | ?criterion=&since=&limit=: human labels
POST /api/review/labels                {"trace_id", "verdict", "tags", "note", "reviewer", "day", "correction"}
DELETE /api/review/labels?trace_id=    forget a trace's review
POST /api/review/datasets              {"trace_id", "dataset", "description"}: add to an eval set
GET  /api/review/criteria              tags in use, with pass / fail counts

With ``auth`` on, reading needs a ``viewer`` key and changing a ``reviewer`` (or ``admin``)
key; a browser may send it as HTTP Basic, but only from this server's own pages (the access
middleware checks ``Origin`` / ``Sec-Fetch-Site``). Without ``auth`` they are open (keep the
server on a private network). Changes are refused when the browser says they come from another site (the
``Origin`` / ``Sec-Fetch-Site`` headers), and the JSON routes only take JSON bodies, which a
cross-site form cannot send.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ..errors import GatewayError, InvalidRequest, NotFound
from ..feedback import labels as L
from ..feedback.queue import build_queue, get_queue
from ..feedback.service import service_for
from ..feedback.targets import main_span, prompt_version, route_of
from ..feedback.when import parse_day, shift_day, today
from ..timeparse import parse_duration
from . import api, ui
from .app import error_response, read_json

SHORTCUTS = (
    ("j  or  →", "next trace"),
    ("k  or  ←", "previous trace"),
    ("p", "pass — save and go to the next trace"),
    ("f", "fail — save and go to the next trace"),
    ("t", "edit tags (failure modes, comma-separated)"),
    ("n", "edit the note"),
    ("c", "write a corrected output"),
    ("d", "add to an eval set (type a dataset name, Enter)"),
    ("o", "open the full trace"),
    ("?", "show / hide these shortcuts"),
    ("Esc", "leave a text field (then the keys above work again)"),
)
LABEL_FIELDS = frozenset({"trace_id", "verdict", "tags", "note", "reviewer", "day", "correction", "span_id"})
DATASET_FIELDS = frozenset({"trace_id", "dataset", "description", "day"})
QUEUE_FIELDS = frozenset({"day", "size", "window", "force"})


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"


def same_origin(request: Request) -> None:
    """Refuse a change a browser made on behalf of another site."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise Forbidden("Cross-site requests may not change reviews.", code="cross_site")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        parts = urllib.parse.urlsplit(origin)
        if parts.netloc != host:
            raise Forbidden(f"Requests from {origin} may not change reviews.", code="cross_site")


def _fields(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {', '.join(unknown)}. Known: {', '.join(sorted(allowed))}.",
                             param=unknown[0], code="unknown_field")
    return body


def _str(body: dict[str, Any], key: str, required: bool = False) -> str | None:
    v = body.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise InvalidRequest(f"'{key}' is required.", param=key, code="missing_field")
        return None
    if not isinstance(v, str):
        raise InvalidRequest(f"Invalid value for '{key}': expected a string.", param=key)
    return v.strip()


def _json(data: Any, status: int = 200) -> Response:
    return Response(api.dumps(data), status_code=status, media_type="application/json",
                    headers={"cache-control": "no-store"})


# ---- actions (blocking: run in a worker thread) ------------------------------------------

def save_label(engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    store = api.store_of(engine)
    trace_id = _str(body, "trace_id", True)
    verdict = _str(body, "verdict", True)
    correction = body.get("correction")
    if correction is not None and not isinstance(correction, str):
        raise InvalidRequest("Invalid value for 'correction': expected a string.", param="correction")
    day = body.get("day")
    day = parse_day(day) if day else None
    out = L.set_review(store, trace_id, verdict, body.get("tags"), body.get("note"), body.get("reviewer"),
                       day=day, span_id=_str(body, "span_id"))
    if correction and correction.strip():
        from ..feedback.model import parse_feedback

        key = "review-correction:" + hashlib.sha256(f"{trace_id}\0{correction}".encode()).hexdigest()[:32]
        fb = parse_feedback({"trace_id": trace_id, "span_id": out["span_id"], "kind": "correction",
                             "text": correction, "source": "annotator", "idempotency_key": key,
                             **({"user_id": out["reviewer"]} if out["reviewer"] else {})})
        out["correction"], _ = service_for(engine).record(fb, "review")
    return out


def add_to_dataset(engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    """A reviewed trace as an eval item: its main call's messages as the input; as the
    expected output the latest correction, else the answer when the reviewer passed it,
    else none (a known failure); the review (verdict, tags, note) in the metadata."""
    from ..evals.datasets import Datasets

    store = api.store_of(engine)
    trace_id = _str(body, "trace_id", True)
    name = _str(body, "dataset", True)
    trace = store.get_trace(trace_id)
    if trace is None:
        raise NotFound(f"No trace with id '{trace_id}'.", param="trace_id", code="trace_not_found")
    span = main_span(trace)
    body = (span or {}).get("input")
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("This trace has no recorded request to turn into an eval item "
                             "(recording.capture_bodies off, or no llm call).", param="trace_id", code="no_input")
    labels = {lab["criterion"]: lab for lab in L.get_labels(store, trace_id)}
    overall = labels.get(L.OVERALL)
    events = service_for(engine).list_feedback(trace_id=trace_id, limit=500)
    correction = next((e["text"] for e in events if e["kind"] in ("correction", "edited") and e.get("text")), None)
    expected = correction
    if expected is None and overall is not None and overall["label"] == "pass":
        choices = ((span.get("output") or {}).get("choices") or [{}]) if isinstance(span.get("output"), dict) else [{}]
        expected = ((choices[0] or {}).get("message") or {}).get("content")
    attrs = span.get("attributes") or {}
    metadata: dict[str, Any] = {"source": "review", "alias": span.get("alias"),
                                "model": span.get("response_model") or span.get("model"),
                                "route": route_of(span), "prompt_version": prompt_version(attrs)}
    if overall is not None:
        metadata["human_label"] = overall["label"]
        metadata["failure_modes"] = overall["tags"]
        if overall.get("note"):
            metadata["note"] = overall["note"]
    if correction is not None:
        metadata["expected_from"] = "correction"
    metadata = {k: v for k, v in metadata.items() if v not in (None, [], "")}
    item = {"id": trace_id, "input": {"messages": messages}, "expected": expected, "metadata": metadata,
            "trace_id": trace_id}
    ds = Datasets(store)
    try:
        current = ds.get(name)
    except NotFound:
        version = ds.create(name, [item], description=_str(body, "description"), source="review")
        return {"dataset": name, "version": version, "item_id": trace_id, "created_dataset": True,
                "item_count": 1, "expected": expected}
    if ds.get_items(name, None, [trace_id]):
        raise GatewayError(f"Trace {trace_id} is already in dataset {name!r} (version {current['version']}).",
                           status=409, type="invalid_request_error", code="already_in_dataset",
                           param="trace_id")
    version = ds.add_items(name, [item])
    return {"dataset": name, "version": version, "item_id": trace_id, "created_dataset": False,
            "item_count": current["item_count"] + 1, "expected": expected}


def queue_for(engine: Any, day: str, build: bool) -> dict[str, Any] | None:
    store = api.store_of(engine)
    q = get_queue(store, day)
    if q is None and build:
        q = build_queue(store, day, engine.config.feedback.review_sample_size, created_by="ui")
    return q


def item_context(engine: Any, item: dict[str, Any]) -> dict[str, Any]:
    """What the reviewer sees of one queue item: the trace, its main call, context, labels."""
    store = api.store_of(engine)
    trace = store.get_trace(item["trace_id"])
    ctx: dict[str, Any] = {"trace": trace, "main": None, "others": [], "labels": [], "overall": None,
                           "feedback": [], "correction": None}
    if trace is None:
        return ctx
    tree = ui.span_tree(trace.get("spans") or [])
    main = main_span(trace)
    for v in tree:
        if main is not None and v["id"] == main["span_id"]:
            ctx["main"] = v
        else:
            ctx["others"].append(v)
    if ctx["main"] is not None and ctx["main"]["decisions"]:  # the main call lists its guards' decisions
        ctx["others"] = [v for v in ctx["others"] if v["span"].get("kind") != "guard"
                         or v["span"].get("parent_id") != ctx["main"]["id"]]
    if main is not None:
        attrs = main.get("attributes") or {}
        ctx["facts"] = [(k, v) for k, v in (
            ("alias", main.get("alias")), ("model", main.get("response_model") or main.get("model")),
            ("prompt version", prompt_version(attrs)), ("route", route_of(main)), ("user", main.get("user_id")),
            ("session", main.get("session_id")), ("status", main.get("status")),
            ("latency", ui.fmt_ms(main.get("duration_ms"))), ("cost", ui.fmt_cost(main.get("cost_usd"))),
        ) if v not in (None, "", "—")]
    ctx["labels"] = L.get_labels(store, item["trace_id"])
    ctx["overall"] = next((lab for lab in ctx["labels"] if lab["criterion"] == L.OVERALL), None)
    ctx["feedback"] = list(reversed(service_for(engine).list_feedback(trace_id=item["trace_id"], limit=100)))
    ctx["correction"] = next((e["text"] for e in reversed(ctx["feedback"])
                              if e["kind"] == "correction" and e["source"] == "annotator"), None)
    return ctx


def page_context(engine: Any, day: str, index: int) -> dict[str, Any]:
    from ..evals.datasets import Datasets

    store = api.store_of(engine)
    q = queue_for(engine, day, build=day == today())
    ctx: dict[str, Any] = {"day": day, "queue": q, "item": None, "index": 0, "view": None,
                           "prev_day": shift_day(day, -1), "next_day": shift_day(day, 1) if day < today() else None,
                           "today": today(), "shortcuts": SHORTCUTS, "datasets": [], "criteria": []}
    ctx["datasets"] = [d["name"] for d in Datasets(store).list()]
    ctx["criteria"] = [c["criterion"] for c in L.criteria(store) if c["criterion"] != L.OVERALL]
    if not q or not q["items"]:
        return ctx
    items = q["items"]
    index = max(0, min(index, len(items) - 1))
    ctx.update(index=index, item=items[index], view=item_context(engine, items[index]))
    ctx["next_index"] = index + 1 if index + 1 < len(items) else None
    ctx["prev_index"] = index - 1 if index > 0 else None
    return ctx


def _url(day: str, i: int | None = None) -> str:
    params = {"day": day}
    if i is not None:
        params["i"] = str(i)
    return "/ui/review?" + urllib.parse.urlencode(params)


def routes(engine: Any) -> list[Any]:
    templates = Jinja2Templates(env=ui._env())
    limit = engine.config.server.max_body_bytes

    def page(request: Request, context: dict[str, Any], status: int = 200) -> Response:
        context = {"nav": "review", "error": None, **context}
        return templates.TemplateResponse(request, "review.html", context, status_code=status,
                                          headers=ui.SECURITY_HEADERS)

    async def review_page(request: Request) -> Response:
        q = request.query_params
        try:
            day = parse_day(q.get("day"))
            raw = (q.get("i") or "0").strip()
            if not raw.isdigit():
                raise InvalidRequest("Invalid value for 'i': expected a position in the queue", param="i")
            ctx = await run_in_threadpool(page_context, engine, day, int(raw))
        except GatewayError as exc:
            return page(request, {"day": today(), "queue": None, "item": None, "shortcuts": SHORTCUTS,
                                  "datasets": [], "criteria": [], "error": exc}, exc.status)
        ctx["flash"] = q.get("saved")
        return page(request, ctx)

    async def form_body(request: Request) -> dict[str, Any]:
        """A urlencoded form (what the page's forms send), bounded like every body."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise GatewayError("Expected a form (application/x-www-form-urlencoded).", status=415,
                               type="invalid_request_error", code="unsupported_media_type")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidRequest(f"The form exceeds {limit} bytes.", code="request_too_large")
            chunks.append(chunk)
        pairs = urllib.parse.parse_qsl(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True)
        return dict(pairs)

    async def label_form(request: Request) -> Response:
        try:
            same_origin(request)
            body = await form_body(request)
            day = parse_day(body.pop("day", None))
            raw_i = str(body.pop("i", "0"))
            i = int(raw_i) if raw_i.isdigit() else 0
            body["day"] = day
            await run_in_threadpool(save_label, engine, {k: v for k, v in body.items() if k in LABEL_FIELDS})
        except GatewayError as exc:
            return page(request, {"day": today(), "queue": None, "item": None, "shortcuts": SHORTCUTS,
                                  "datasets": [], "criteria": [], "error": exc}, exc.status)
        return RedirectResponse(_url(day, i + 1) + "&saved=label", status_code=303)

    async def dataset_form(request: Request) -> Response:
        try:
            same_origin(request)
            body = await form_body(request)
            day = parse_day(body.pop("day", None))
            i = body.pop("i", "0")
            await run_in_threadpool(add_to_dataset, engine, {k: v for k, v in body.items() if k in DATASET_FIELDS})
        except GatewayError as exc:
            return page(request, {"day": today(), "queue": None, "item": None, "shortcuts": SHORTCUTS,
                                  "datasets": [], "criteria": [], "error": exc}, exc.status)
        return RedirectResponse(_url(day, int(i) if str(i).isdigit() else 0) + "&saved=dataset", status_code=303)

    async def build_form(request: Request) -> Response:
        try:
            same_origin(request)
            body = await form_body(request)
            day = parse_day(body.get("day"))
            await run_in_threadpool(build_queue, api.store_of(engine), day,
                                    engine.config.feedback.review_sample_size, created_by="ui")
        except GatewayError as exc:
            return page(request, {"day": today(), "queue": None, "item": None, "shortcuts": SHORTCUTS,
                                  "datasets": [], "criteria": [], "error": exc}, exc.status)
        return RedirectResponse(_url(day), status_code=303)

    # ---- JSON API ---------------------------------------------------------------------
    async def get_queue_api(request: Request) -> Response:
        try:
            day = parse_day(request.query_params.get("day"))
            q = await run_in_threadpool(queue_for, engine, day, day == today())
            if q is None:
                raise NotFound(f"No review queue for {day} (build it with POST /api/review/queue or "
                               f"`shipyard review sample --date {day}`).", param="day", code="queue_not_found")
        except GatewayError as exc:
            return error_response(exc)
        return _json(q)

    async def post_queue_api(request: Request) -> Response:
        try:
            same_origin(request)
            body = _fields(await read_json(request, limit), QUEUE_FIELDS)
            day = parse_day(body.get("day"))
            size = body.get("size", engine.config.feedback.review_sample_size)
            if isinstance(size, bool) or not isinstance(size, int):
                raise InvalidRequest("Invalid value for 'size': an integer", param="size")
            window = body.get("window", "24h")
            window_s = parse_duration(window) if isinstance(window, str) else None
            if window_s is None:
                raise InvalidRequest("Invalid value for 'window': a duration like 24h or 7d", param="window")
            q = await run_in_threadpool(lambda: build_queue(api.store_of(engine), day, size, window_s=window_s,
                                                            force=bool(body.get("force")), created_by="api"))
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        return _json(q, 201 if q.get("created") else 200)

    async def get_labels_api(request: Request) -> Response:
        p = request.query_params
        try:
            store = api.store_of(engine)
            if p.get("trace_id"):
                rows = await run_in_threadpool(L.get_labels, store, p["trace_id"])
            else:
                n = (p.get("limit") or "500").strip()
                if not n.isdigit() or not 1 <= int(n) <= 5000:
                    raise InvalidRequest("Invalid value for 'limit': an integer from 1 to 5000", param="limit")
                implied = (p.get("implied") or "true").lower() not in ("0", "false", "no")

                def read() -> list[dict[str, Any]]:
                    out = []
                    for row in L.iter_human_labels(store, p.get("criterion") or None, p.get("since") or None,
                                                   include_implied=implied):
                        out.append(row)
                        if len(out) >= int(n):
                            break
                    return out

                rows = await run_in_threadpool(read)
        except GatewayError as exc:
            return error_response(exc)
        return _json({"object": "list", "data": rows})

    async def post_label_api(request: Request) -> Response:
        try:
            same_origin(request)
            body = _fields(await read_json(request, limit), LABEL_FIELDS)
            out = await run_in_threadpool(save_label, engine, body)
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        return _json(out)

    async def delete_label_api(request: Request) -> Response:
        try:
            same_origin(request)
            trace_id = (request.query_params.get("trace_id") or "").strip()
            if not trace_id:
                raise InvalidRequest("'trace_id' is required.", param="trace_id")
            deleted = await run_in_threadpool(L.clear_review, api.store_of(engine), trace_id)
            if not deleted:
                raise NotFound(f"Trace {trace_id} has no review.", param="trace_id", code="label_not_found")
        except GatewayError as exc:
            return error_response(exc)
        return _json({"trace_id": trace_id, "deleted": True})

    async def post_dataset_api(request: Request) -> Response:
        try:
            same_origin(request)
            body = _fields(await read_json(request, limit), DATASET_FIELDS)
            out = await run_in_threadpool(add_to_dataset, engine, body)
        except GatewayError as exc:
            return error_response(exc)
        except ClientDisconnect:
            return Response(status_code=499)
        return _json(out, 201)

    async def criteria_api(request: Request) -> Response:
        try:
            rows = await run_in_threadpool(L.criteria, api.store_of(engine))
        except GatewayError as exc:
            return error_response(exc)
        return _json({"object": "list", "data": rows, "at": time.time()})

    return [
        Route("/ui/review", review_page, methods=["GET"]),
        Route("/ui/review/label", label_form, methods=["POST"]),
        Route("/ui/review/dataset", dataset_form, methods=["POST"]),
        Route("/ui/review/build", build_form, methods=["POST"]),
        Route("/api/review/queue", get_queue_api, methods=["GET"]),
        Route("/api/review/queue", post_queue_api, methods=["POST"]),
        Route("/api/review/labels", get_labels_api, methods=["GET"]),
        Route("/api/review/labels", post_label_api, methods=["POST"]),
        Route("/api/review/labels", delete_label_api, methods=["DELETE"]),
        Route("/api/review/datasets", post_dataset_api, methods=["POST"]),
        Route("/api/review/criteria", criteria_api, methods=["GET"]),
    ]
