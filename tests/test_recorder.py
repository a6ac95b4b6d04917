"""The Recorder against a real SQLite file: batching, the queue bound, store outages,
close() flushing, redaction, payload caps and capture_bodies."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from shipyard.config import RecordingConfig
from shipyard.store.sqlite import SQLiteStore
from shipyard.tracing.recorder import Recorder
from shipyard.tracing.redact import REDACTED
from shipyard.tracing.span import Span, new_span_id, new_trace_id

SECRET = "sk-abc123XYZ789"


class ControlledStore:
    """A real SQLiteStore behind switches: ``gate`` (an Event) blocks writes until set,
    ``fail_first`` makes the first N writes raise, and every attempted batch size is kept."""

    def __init__(self, inner: SQLiteStore, *, gate: threading.Event | None = None, fail_first: int = 0) -> None:
        self.inner = inner
        self.gate = gate
        self.fail_first = fail_first
        self.entered = threading.Event()
        self.batches: list[int] = []

    def write_spans(self, spans: list[Span], dump: Any) -> None:
        self.batches.append(len(spans))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            raise sqlite3.OperationalError("database is locked (injected)")
        self.inner.write_spans(spans, dump)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "rec.db"


@pytest.fixture
def store(db_path: Path):
    s = SQLiteStore(f"sqlite:///{db_path}")
    yield s
    s.close()


def make_span(trace_id: str | None = None, **kw: Any) -> Span:
    s = Span(trace_id=trace_id or new_trace_id(), span_id=new_span_id(), name="chat test", alias="chat")
    s.end_time = s.start_time + 0.01
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def recorder(store: Any, **cfg: Any) -> Recorder:
    return Recorder(store, RecordingConfig(**cfg))


def span_count(store: SQLiteStore) -> int:
    with sqlite3.connect(store.path) as raw:  # a separate reader, as another process would be
        return raw.execute("SELECT COUNT(*) FROM spans").fetchone()[0]


def stored_span(store: SQLiteStore, span: Span) -> dict[str, Any]:
    trace = store.get_trace(span.trace_id)
    assert trace is not None, "span was not written"
    (s,) = [s for s in trace["spans"] if s["span_id"] == span.span_id]
    return s


# ---- batching ---------------------------------------------------------------------


def test_spans_are_written_in_batches_and_readable(store: SQLiteStore) -> None:
    cs = ControlledStore(store)
    rec = recorder(cs, batch_size=4, flush_interval_s=0.05)
    rec.start()
    try:
        tid = new_trace_id()
        spans = [make_span(tid, input_tokens=i, output_tokens=1) for i in range(10)]
        assert all(rec.record(s) for s in spans)
        assert rec.flush()
        trace = store.get_trace(tid)
        assert trace["span_count"] == 10
        assert {s["span_id"] for s in trace["spans"]} == {s.span_id for s in spans}
        assert trace["input_tokens"] == sum(range(10))
        assert sum(cs.batches) == 10
        assert max(cs.batches) <= 4
        assert rec.stats() == {"recorded": 10, "written": 10, "dropped": 0, "queue_depth": 0, "write_errors": 0}
    finally:
        rec.close()


def test_flush_without_writer_thread_drains_inline(store: SQLiteStore) -> None:
    rec = recorder(store)
    s = make_span()
    assert rec.record(s)
    assert rec.depth == 1
    assert rec.flush()
    assert rec.depth == 0
    assert store.get_trace(s.trace_id)["span_count"] == 1


def test_listener_sees_written_batches(store: SQLiteStore) -> None:
    seen: list[str] = []
    rec = recorder(store)
    rec.add_listener(lambda batch: seen.extend(s.span_id for s in batch))
    rec.add_listener(lambda batch: 1 / 0)  # a failing listener does not break recording
    spans = [make_span() for _ in range(3)]
    for s in spans:
        rec.record(s)
    rec.start()
    rec.close()
    assert seen == [s.span_id for s in spans]
    assert span_count(store) == 3


# ---- the queue bound --------------------------------------------------------------


def test_full_queue_drops_instead_of_blocking(store: SQLiteStore) -> None:
    gate = threading.Event()
    cs = ControlledStore(store, gate=gate)
    rec = recorder(cs, queue_size=10, batch_size=1, flush_interval_s=0.01)
    rec.start()
    try:
        # the writer takes one span and blocks inside the store
        assert rec.record(make_span())
        assert cs.entered.wait(10), "the writer never called the store"
        assert rec.depth == 0

        results: list[bool] = []
        spans = [make_span() for _ in range(100)]
        t = threading.Thread(target=lambda: results.extend(rec.record(s) for s in spans), daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "record() blocked while the store was stuck"

        assert results == [True] * 10 + [False] * 90
        assert rec.dropped == 90
        assert rec.depth == 10
        assert rec.stats()["recorded"] == 11
    finally:
        gate.set()
        rec.close()
    # what was accepted is written once the store recovers
    assert span_count(store) == 11
    for s in spans[:10]:
        assert store.get_trace(s.trace_id) is not None
    assert store.get_trace(spans[10].trace_id) is None


def test_queue_bound_without_writer(store: SQLiteStore) -> None:
    rec = recorder(store, queue_size=10)
    results = [rec.record(make_span()) for _ in range(100)]
    assert results.count(True) == 10
    assert rec.dropped == 90
    rec.close()
    assert span_count(store) == 10


# ---- store outages ----------------------------------------------------------------


def test_store_errors_are_retried_and_nothing_is_lost(store: SQLiteStore) -> None:
    cs = ControlledStore(store, fail_first=2)
    rec = recorder(cs, batch_size=5, flush_interval_s=0.01)
    rec.start()
    try:
        tid = new_trace_id()
        spans = [make_span(tid) for _ in range(12)]
        for s in spans:
            assert rec.record(s)
        assert rec.flush()
        assert rec.write_errors == 2
        assert rec.dropped == 0
        assert rec.written == 12
        trace = store.get_trace(tid)
        assert trace["span_count"] == 12
        assert {s["span_id"] for s in trace["spans"]} == {s.span_id for s in spans}
    finally:
        rec.close()


def test_store_errors_without_writer_thread(store: SQLiteStore) -> None:
    cs = ControlledStore(store, fail_first=2)
    rec = recorder(cs)
    spans = [make_span() for _ in range(3)]
    for s in spans:
        rec.record(s)
    assert rec.flush()
    assert (rec.write_errors, rec.dropped, rec.written) == (2, 0, 3)
    assert span_count(store) == 3


def test_flush_honours_its_timeout_when_the_store_stays_down(store: SQLiteStore) -> None:
    # no writer thread: flush() drains inline, and must still give up after its timeout
    cs = ControlledStore(store, fail_first=10**9)
    rec = recorder(cs)
    rec.record(make_span())
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(rec.flush(timeout=0.5)), daemon=True)
    t.start()
    try:
        t.join(10)
        assert not t.is_alive(), "flush() never returned while the store was down"
        assert result == [False]
        assert rec.write_errors >= 1
    finally:
        cs.fail_first = 0  # let a stuck drain finish rather than leak a retrying thread
        t.join(10)


# ---- close --------------------------------------------------------------------------


def test_close_flushes_everything_queued(store: SQLiteStore, db_path: Path) -> None:
    # a long interval and a big batch: without close() nothing would be written soon
    rec = recorder(store, batch_size=1000, flush_interval_s=60)
    rec.start()
    spans = [make_span() for _ in range(50)]
    for s in spans:
        assert rec.record(s)
    rec.close()
    assert rec.depth == 0
    # a fresh connection to the same file sees every span
    other = SQLiteStore(f"sqlite:///{db_path}")
    try:
        assert span_count(other) == 50
    finally:
        other.close()


def test_close_without_start_flushes(store: SQLiteStore) -> None:
    rec = recorder(store)
    s = make_span()
    rec.record(s)
    rec.close()
    assert store.get_trace(s.trace_id) is not None


def test_disabled_recorder_records_nothing(store: SQLiteStore) -> None:
    rec = recorder(store, enabled=False)
    rec.start()
    assert rec.record(make_span()) is False
    rec.close()
    assert span_count(store) == 0
    assert Recorder(None).record(make_span()) is False


# ---- what is stored -----------------------------------------------------------------


def test_redaction_of_keys_and_patterns(store: SQLiteStore, db_path: Path) -> None:
    rec = recorder(store, redact_keys=["api_key"], redact_patterns=[r"sk-[A-Za-z0-9]+"])
    s = make_span(
        input={
            "model": "chat",
            "messages": [{"role": "user", "content": f"my key is {SECRET}, keep it safe"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"API_KEY": "hunter2"}}}],
            "api_key": "plain-secret",
        },
        output={"choices": [{"message": {"content": f"echo {SECRET}"}}]},
    )
    rec.record(s)
    rec.close()
    got = stored_span(store, s)
    assert got["input"]["messages"][0]["content"] == f"my key is {REDACTED}, keep it safe"
    assert got["input"]["api_key"] == REDACTED
    assert got["input"]["tools"][0]["function"]["parameters"]["API_KEY"] == REDACTED  # keys match any case
    assert got["input"]["model"] == "chat"  # the rest is intact
    assert got["output"]["choices"][0]["message"]["content"] == f"echo {REDACTED}"
    store.close()
    raw = b"".join(p.read_bytes() for p in db_path.parent.glob("rec.db*"))
    for secret in (SECRET.encode(), b"plain-secret", b"hunter2"):
        assert secret not in raw


def test_redaction_covers_request_metadata_recorded_by_the_engine(tmp_path: Path, fake_openai) -> None:
    """Everything the gateway records from a call goes through redaction: the request's
    metadata is stored both in the input and in the span attributes."""
    from shipyard import Gateway

    db = tmp_path / "gw.db"
    cfg = {
        "store": f"sqlite:///{db}",
        "providers": {"p": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-upstreamKEY1"}},
        "models": {"chat": {"targets": [{"provider": "p", "model": "gpt-4o-mini"}]}},
        "recording": {"redact_keys": ["api_key"], "redact_patterns": [r"sk-[A-Za-z0-9]+"]},
    }
    with Gateway(cfg) as gw:
        resp = gw.chat(model="chat", messages=[{"role": "user", "content": f"use {SECRET}"}],
                       metadata={"api_key": "meta-secret", "note": f"token {SECRET}"})
        gw.engine.recorder.flush()
        assert gw.engine.store.get_trace(resp.trace_id) is not None
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT attributes, input, output, error FROM spans").fetchall()
    text = orjson.dumps(rows).decode()
    assert "use [REDACTED]" in text
    for secret in (SECRET, "meta-secret", "sk-upstreamKEY1"):
        assert secret not in text, f"{secret} stored unredacted: {text}"


def test_payload_over_cap_is_truncated_with_marker(store: SQLiteStore) -> None:
    rec = recorder(store, max_payload_bytes=256)
    big = {"messages": [{"role": "user", "content": "é" * 2000}]}  # multi-byte: cut mid-character
    small = {"id": "chatcmpl-1", "choices": []}
    s = make_span(input=big, output=small)
    rec.record(s)
    rec.close()
    got = stored_span(store, s)
    original = len(orjson.dumps(big))
    assert got["input"]["_truncated"] is True
    assert got["input"]["_original_bytes"] == original
    kept = got["input"]["text"]
    assert kept.startswith('{"messages":[{"role":"user","content":"éé')
    assert len(kept.split("…[truncated")[0].encode()) <= 256
    assert str(original - len(kept.split("…[truncated")[0].encode())) in kept  # bytes omitted, exactly
    assert got["output"] == small  # under the cap: stored as-is


def test_capture_bodies_false_stores_no_payloads(store: SQLiteStore) -> None:
    rec = recorder(store, capture_bodies=False)
    s = make_span(input={"messages": [{"role": "user", "content": "private"}]}, output={"id": "x"},
                  input_tokens=3, output_tokens=2, cost_usd=0.01, attributes={"attempts": []})
    rec.record(s)
    rec.close()
    got = stored_span(store, s)
    assert got["input"] is None and got["output"] is None
    assert (got["input_tokens"], got["output_tokens"], got["cost_usd"]) == (3, 2, 0.01)
    assert got["alias"] == "chat"


def test_retention_purges_old_traces_in_the_writer_thread(tmp_path):
    import time as _time

    from shipyard.config import RecordingConfig
    from shipyard.store import open_store
    from shipyard.tracing.recorder import Recorder
    from shipyard.tracing.span import Span, new_span_id, new_trace_id

    store = open_store(f"sqlite:///{tmp_path}/ret.db")
    now = _time.time()
    old = Span(trace_id=new_trace_id(), span_id=new_span_id(), name="old", start_time=now - 40 * 86400,
               end_time=now - 40 * 86400 + 1)
    fresh = Span(trace_id=new_trace_id(), span_id=new_span_id(), name="fresh", start_time=now - 60, end_time=now)
    store.write_spans([old, fresh], lambda v: None)
    rec = Recorder(store, RecordingConfig(retention_days=30, flush_interval_s=0.05))
    rec.start()
    deadline = _time.monotonic() + 10
    while rec.purged == 0 and _time.monotonic() < deadline:
        _time.sleep(0.05)
    rec.close()
    assert rec.purged == 1
    assert store.get_trace(old.trace_id) is None
    assert store.get_trace(fresh.trace_id) is not None
    store.close()
