"""Recording and reading feedback and outcomes (any SQL store: SQLite, PostgreSQL).

``FeedbackService(store, engine=None)``: with an engine it also knows the calls this
process finished a moment ago (not yet written by the recorder), and it can ask the
recorder to flush before it answers "no such trace". Every method is blocking: the server
calls them in a worker thread.

Idempotency: an event with an ``idempotency_key`` already stored is not stored again; the
stored event is returned with ``duplicate: true``. The same key with a different event is
a conflict (409), as a retry must repeat the original request exactly.
"""

from __future__ import annotations

import time
import uuid
import weakref
from typing import Any, Iterable

import orjson

from ..errors import GatewayError, InvalidRequest, NotFound
from .model import FeedbackIn, OutcomeIn
from .schema import ensure_schema
from .targets import RecentTargets, Target, llm_spans, prompt_version, route_of, target_in_trace

FEEDBACK_COLUMNS = (
    "feedback_id", "idempotency_key", "request_hash", "trace_id", "span_id", "completion_id", "kind", "value",
    "label", "text", "score_norm", "sentiment", "source", "user_id", "session_id", "principal", "metadata",
    "alias", "model", "prompt_version", "route", "trace_time", "trace_ts", "created_at",
)
PUBLIC_FEEDBACK = tuple(c for c in FEEDBACK_COLUMNS if c not in ("request_hash", "trace_ts"))
OUTCOME_COLUMNS = ("outcome_id", "idempotency_key", "request_hash", "session_id", "trace_id", "name", "value",
                   "metadata", "principal", "created_at")
MAX_LIST = 500
SESSION_SPANS = 500  # llm calls of a session read to join an outcome to its traces
FLUSH_WAIT_S = 2.0


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"


def _dicts(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _loads(v: Any) -> Any:
    return orjson.loads(v) if isinstance(v, (str, bytes)) and v else None


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in PUBLIC_FEEDBACK}
    out["id"] = out.pop("feedback_id")
    out["metadata"] = _loads(out["metadata"])
    return out


_services: "weakref.WeakKeyDictionary[Any, FeedbackService]" = weakref.WeakKeyDictionary()


def service_for(engine: Any) -> "FeedbackService":
    """The engine's feedback service (created once; it listens to the engine's finished
    calls from then on)."""
    svc = _services.get(engine)
    if svc is None:
        if engine.store is None:
            raise GatewayError("Feedback needs a store: this gateway runs with 'store: none'.",
                               status=503, code="store_disabled")
        svc = _services[engine] = FeedbackService(engine.store, engine=engine)
    return svc


class FeedbackService:
    def __init__(self, store: Any, engine: Any = None) -> None:
        if store is None:
            raise GatewayError("Feedback needs a store (the config has store: none).", status=503,
                               code="store_disabled")
        self.store = store
        self.engine = engine
        ensure_schema(store)
        self.q = store.dialect.q
        self.recent = RecentTargets()
        if engine is not None:
            engine.span_listeners.append(self.recent.observe)
            recorder = getattr(engine, "recorder", None)
            if recorder is not None and hasattr(recorder, "add_retention_hook"):
                recorder.add_retention_hook(self.purge)

    # ---- retention --------------------------------------------------------------------
    def purge(self, older_than: float, batch_size: int = 1000) -> int:
        """Retention (``recording.retention_days``): feedback about traces that started
        before ``older_than`` goes with them, as do outcome events recorded before it.
        Human labels and review days stay: they are curated evaluation data (like datasets).
        Bounded batches, one short transaction each. Returns the rows deleted."""
        deleted = 0
        # trace_ts is the trace's start in whole seconds: compare with whole seconds (never early)
        for table, key, col, cut in (("feedback", "feedback_id", "trace_ts", int(older_than)),
                                     ("outcomes", "outcome_id", "created_at", older_than)):
            while True:
                with self.store._write() as cur:
                    cur.execute(self.q(f"SELECT {key} FROM {table} WHERE {col} < ? LIMIT ?"), (cut, batch_size))
                    ids = [r[0] for r in cur.fetchall()]
                    if not ids:
                        break
                    marks = ", ".join("?" * len(ids))
                    cur.execute(self.q(f"DELETE FROM {table} WHERE {key} IN ({marks})"), ids)
                    deleted += len(ids)
        return deleted

    # ---- targets ----------------------------------------------------------------------
    def _flush_recorder(self) -> bool:
        """Make sure what this process recorded is in the store; True when a retry may help:
        this recorder had spans queued, or (another worker of a scaled-out server may have
        answered the call) after a short wait for the other writers' next batch."""
        rec = getattr(self.engine, "recorder", None)
        if rec is None or not getattr(rec, "enabled", False):
            return False
        if rec.depth:
            rec.flush(FLUSH_WAIT_S)
            return True
        time.sleep(min(1.0, 3 * getattr(rec, "interval", 0.2)))
        return True

    def resolve(self, trace_id: str | None = None, completion_id: str | None = None,
                span_id: str | None = None) -> Target:
        """The target of feedback addressed by trace id and/or completion id (NotFound: 404)."""
        if completion_id is not None:
            t = self.recent.by_completion(completion_id)
            if t is None:
                t = self._completion_from_store(completion_id)
                if t is None and self._flush_recorder():
                    t = self._completion_from_store(completion_id)
            if t is None:
                raise NotFound(f"No call with completion id '{completion_id}' was recorded (it may be outside "
                               "the retention window, or from another gateway).", param="completion_id",
                               code="completion_not_found")
            if trace_id is not None and trace_id != t.trace_id:
                raise InvalidRequest(f"completion '{completion_id}' belongs to trace {t.trace_id}, not {trace_id}.",
                                     param="trace_id", code="trace_mismatch")
            return t
        assert trace_id is not None
        if span_id is None:
            t = self.recent.by_trace(trace_id)
            if t is not None:
                return t
        t = self._trace_from_store(trace_id, span_id)
        if t is None and self._flush_recorder():
            t = self._trace_from_store(trace_id, span_id)
        if t is None:
            raise NotFound(f"No trace with id '{trace_id}'" + (f" and span '{span_id}'" if span_id else "")
                           + " (it may be outside the retention window, or not written yet).",
                           param="span_id" if span_id and self.store.get_trace(trace_id) else "trace_id",
                           code="trace_not_found")
        return t

    def _completion_from_store(self, completion_id: str) -> Target | None:
        found = self.store.find_span_by_completion(completion_id)
        if found is None:
            return None
        trace = self.store.get_trace(found["trace_id"])
        return None if trace is None else target_in_trace(trace, completion_id=completion_id)

    def _trace_from_store(self, trace_id: str, span_id: str | None) -> Target | None:
        trace = self.store.get_trace(trace_id)
        return None if trace is None else target_in_trace(trace, span_id=span_id)

    # ---- feedback -----------------------------------------------------------------------
    def record(self, fb: FeedbackIn, principal: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store one event; (the stored event, created). A repeated idempotency key returns
        the stored event with created False."""
        if fb.idempotency_key:
            existing = self._by_key("feedback", fb.idempotency_key)
            if existing is not None:
                return self._duplicate(existing, fb.request_hash(), "feedback")
        target = self.resolve(fb.trace_id, fb.completion_id, fb.span_id)
        now = time.time()
        t0 = target.trace_time if target.trace_time is not None else now
        row = {
            "feedback_id": uuid.uuid4().hex, "idempotency_key": fb.idempotency_key, "request_hash": fb.request_hash(),
            "trace_id": target.trace_id, "span_id": target.span_id,
            "completion_id": fb.completion_id or target.completion_id, "kind": fb.kind, "value": fb.value,
            "label": fb.label, "text": fb.text, "score_norm": fb.score_norm, "sentiment": fb.sentiment,
            "source": fb.source, "user_id": fb.user_id or (target.user_id if fb.source == "end_user" else None),
            "session_id": fb.session_id or target.session_id, "principal": principal,
            "metadata": orjson.dumps(fb.metadata, default=str).decode() if fb.metadata else None,
            "alias": target.alias, "model": target.model, "prompt_version": target.prompt_version,
            "route": target.route, "trace_time": t0, "trace_ts": int(t0), "created_at": now,
        }
        sql = self.q(f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES "
                     f"({', '.join('?' * len(FEEDBACK_COLUMNS))}) ON CONFLICT (idempotency_key) DO NOTHING")
        with self.store._write() as cur:
            cur.execute(sql, tuple(row[c] for c in FEEDBACK_COLUMNS))
            inserted = cur.rowcount == 1
        if not inserted:  # a concurrent request with the same key won
            existing = self._by_key("feedback", fb.idempotency_key or "")
            if existing is None:  # pragma: no cover - defensive
                raise GatewayError("Feedback could not be stored.", status=500, code="internal_error")
            return self._duplicate(existing, fb.request_hash(), "feedback")
        out = _public(row)
        out["duplicate"] = False
        return out, True

    def _by_key(self, table: str, key: str) -> dict[str, Any] | None:
        cols = FEEDBACK_COLUMNS if table == "feedback" else OUTCOME_COLUMNS
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT {', '.join(cols)} FROM {table} WHERE idempotency_key = ?"), (key,))
            rows = _dicts(cur)
        return rows[0] if rows else None

    @staticmethod
    def _duplicate(existing: dict[str, Any], request_hash: str, what: str) -> tuple[dict[str, Any], bool]:
        if existing["request_hash"] != request_hash:
            raise Conflict(f"The idempotency key '{existing['idempotency_key']}' was already used for a different "
                           f"{what} event; a retry must repeat the original request (use a new key for a new event).",
                           param="idempotency_key", code="idempotency_key_reused")
        out = _public(existing) if what == "feedback" else _public_outcome(existing)
        out["duplicate"] = True
        return out, False

    def list_feedback(self, *, trace_id: str | None = None, start: float | None = None, end: float | None = None,
                      kind: str | None = None, source: str | None = None, limit: int = 100,
                      before: float | None = None) -> list[dict[str, Any]]:
        """Events, newest first: for one trace, or by the time they were given (bounded)."""
        where, args = [], []
        if trace_id is not None:
            where.append("trace_id = ?")
            args.append(trace_id)
        if start is not None:
            where.append("created_at >= ?")
            args.append(start)
        if end is not None:
            where.append("created_at < ?")
            args.append(end)
        if before is not None:
            where.append("created_at < ?")
            args.append(before)
        for col, val in (("kind", kind), ("source", source)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, feedback_id DESC LIMIT ?"
        with self.store._read() as cur:
            cur.execute(self.q(sql), (*args, max(1, min(limit, MAX_LIST))))
            rows = _dicts(cur)
        return [_public(r) for r in rows]

    def for_traces(self, trace_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """All events of these traces, oldest first, by trace id."""
        ids = list(dict.fromkeys(trace_ids))
        out: dict[str, list[dict[str, Any]]] = {}
        for k in range(0, len(ids), 400):
            chunk = ids[k:k + 400]
            with self.store._read() as cur:
                cur.execute(self.q(f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE trace_id IN "
                                   f"({', '.join('?' * len(chunk))}) ORDER BY created_at, feedback_id"), chunk)
                rows = _dicts(cur)
            for r in rows:
                out.setdefault(r["trace_id"], []).append(_public(r))
        return out

    # ---- outcomes -----------------------------------------------------------------------
    def record_outcome(self, o: OutcomeIn, principal: str | None = None) -> tuple[dict[str, Any], bool]:
        if o.idempotency_key:
            existing = self._by_key("outcomes", o.idempotency_key)
            if existing is not None:
                return self._duplicate(existing, o.request_hash(), "outcome")
        if o.trace_id is not None:
            t = self.resolve(o.trace_id)
            if o.session_id is None:
                o.session_id = t.session_id
        now = time.time()
        row = {"outcome_id": uuid.uuid4().hex, "idempotency_key": o.idempotency_key, "request_hash": o.request_hash(),
               "session_id": o.session_id, "trace_id": o.trace_id, "name": o.name, "value": o.value,
               "metadata": orjson.dumps(o.metadata, default=str).decode() if o.metadata else None,
               "principal": principal, "created_at": now}
        with self.store._write() as cur:
            cur.execute(self.q(f"INSERT INTO outcomes ({', '.join(OUTCOME_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(OUTCOME_COLUMNS))}) ON CONFLICT (idempotency_key) DO NOTHING"),
                        tuple(row[c] for c in OUTCOME_COLUMNS))
            inserted = cur.rowcount == 1
        if not inserted:
            existing = self._by_key("outcomes", o.idempotency_key or "")
            assert existing is not None
            return self._duplicate(existing, o.request_hash(), "outcome")
        out = _public_outcome(row)
        out["traces"] = self.session_traces(o.session_id, o.trace_id)
        out["duplicate"] = False
        return out, True

    def session_traces(self, session_id: str | None, trace_id: str | None = None, limit: int = 200) -> list[str]:
        """Trace ids an outcome is joined to: its session's traces (or its one trace)."""
        if session_id is None:
            return [trace_id] if trace_id else []
        with self.store._read() as cur:
            cur.execute(self.q("SELECT trace_id FROM traces WHERE session_id = ? ORDER BY start_time DESC LIMIT ?"),
                        (session_id, limit))
            ids = [r[0] for r in cur.fetchall()]
        if trace_id and trace_id not in ids:
            ids.append(trace_id)
        return ids

    def outcomes_for(self, session_id: str | None, trace_id: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        if session_id:
            where.append("session_id = ?")
            args.append(session_id)
        if trace_id:
            where.append("trace_id = ?")
            args.append(trace_id)
        if not where:
            return []
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT {', '.join(OUTCOME_COLUMNS)} FROM outcomes WHERE {' OR '.join(where)} "
                               "ORDER BY created_at LIMIT 500"), args)
            return [_public_outcome(r) for r in _dicts(cur)]

    def outcome_dims(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, set[str]]]:
        """Per outcome id: the distinct alias / model / prompt_version / route values of the
        llm calls of its session (or trace), read now (the join)."""
        cache: dict[tuple[str | None, str | None], dict[str, set[str]]] = {}
        out: dict[str, dict[str, set[str]]] = {}
        for r in rows:
            key = (r.get("session_id"), r.get("trace_id"))
            if key not in cache:
                cache[key] = self._dims_of(*key)
            out[r["outcome_id"]] = cache[key]
        return out

    def _dims_of(self, session_id: str | None, trace_id: str | None) -> dict[str, set[str]]:
        dims: dict[str, set[str]] = {"alias": set(), "model": set(), "prompt_version": set(), "route": set()}
        cols = "s.span_id, s.name, s.kind, s.alias, s.model, s.response_model, s.attributes"
        with self.store._read() as cur:
            if session_id:
                cur.execute(self.q(f"SELECT {cols} FROM traces t JOIN spans s ON s.trace_id = t.trace_id "
                                   "WHERE t.session_id = ? AND s.kind = 'llm' LIMIT ?"), (session_id, SESSION_SPANS))
            else:
                cur.execute(self.q(f"SELECT {cols} FROM spans s WHERE s.trace_id = ? AND s.kind = 'llm' LIMIT ?"),
                            (trace_id, SESSION_SPANS))
            rows = _dicts(cur)
        for s in rows:
            s["attributes"] = _loads(s["attributes"]) or {}
            if str(s.get("name") or "").startswith("judge "):
                continue
            for dim, val in (("alias", s.get("alias")), ("model", s.get("response_model") or s.get("model")),
                             ("prompt_version", prompt_version(s["attributes"])), ("route", route_of(s))):
                if val:
                    dims[dim].add(str(val))
        return dims

    # ---- one trace ----------------------------------------------------------------------
    def trace_summary(self, trace_id: str) -> dict[str, Any]:
        """Feedback, human labels and outcomes of one trace (404 when the trace is unknown)."""
        from .labels import get_labels

        trace = self.store.get_trace(trace_id)
        if trace is None:
            raise NotFound(f"No trace with id '{trace_id}'.", param="trace_id", code="trace_not_found")
        feedback = self.list_feedback(trace_id=trace_id, limit=MAX_LIST)
        feedback.reverse()
        session = trace.get("session_id") or next(
            (s.get("session_id") for s in llm_spans(trace.get("spans") or []) if s.get("session_id")), None)
        counts = {"positive": sum(1 for f in feedback if f["sentiment"] > 0),
                  "negative": sum(1 for f in feedback if f["sentiment"] < 0),
                  "neutral": sum(1 for f in feedback if f["sentiment"] == 0)}
        return {"trace_id": trace_id, "feedback": feedback, "counts": counts,
                "labels": get_labels(self.store, trace_id), "outcomes": self.outcomes_for(session, trace_id),
                "session_id": session}


def _public_outcome(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in OUTCOME_COLUMNS if k != "request_hash"}
    out["id"] = out.pop("outcome_id")
    out["metadata"] = _loads(out["metadata"])
    return out
