"""Recording off the request path: a bounded queue drained in batches by one thread.

``record()`` is a non-blocking append. When the queue is full the span is counted as
dropped instead of blocking the request or growing memory. A store error is retried
with back-off and the batch is kept (up to the queue bound), so a brief outage loses
nothing; ``close()`` flushes what is queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from ..config import RecordingConfig
from .redact import Redactor
from .span import Span

log = logging.getLogger("shipyard.recorder")


class Recorder:
    def __init__(self, store: Any | None, cfg: RecordingConfig | None = None) -> None:
        cfg = cfg or RecordingConfig()
        self.store = store
        self.enabled = cfg.enabled and store is not None
        self.maxsize = cfg.queue_size
        self.batch_size = cfg.batch_size
        self.interval = cfg.flush_interval_s
        self.retention_s = cfg.retention_days * 86400 if cfg.retention_days else None
        self.purge_interval = cfg.purge_interval_s
        self._last_purge: float | None = None
        self.purged = 0
        redactor = Redactor(cfg.redact_keys, cfg.redact_patterns, cfg.max_payload_bytes)
        self._dump: Callable[[Any], str | None] = redactor.dump if cfg.capture_bodies else (lambda v: None)
        self._redact = redactor.redact
        self._capture_bodies = cfg.capture_bodies
        self._q: deque[Span] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self.recorded = 0
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._listeners: list[Callable[[list[Span]], None]] = []
        self._retention_hooks: list[Callable[[float], int]] = []
        self._thread: threading.Thread | None = None

    # ---- request path -------------------------------------------------------------
    def record(self, span: Span) -> bool:
        if not self.enabled:
            return False
        if len(self._q) >= self.maxsize:
            self.dropped += 1
            return False
        self._q.append(span)
        self.recorded += 1
        if len(self._q) >= self.batch_size:
            self._wake.set()
        return True

    @property
    def depth(self) -> int:
        return len(self._q)

    def add_listener(self, fn: Callable[[list[Span]], None]) -> None:
        """Also hand each written batch to ``fn`` (exporters), in the writer thread."""
        self._listeners.append(fn)

    def add_retention_hook(self, fn: Callable[[float], int]) -> None:
        """When retention runs, also call ``fn(older_than)`` (data kept beside the traces,
        such as feedback), in the writer thread, after the traces are purged."""
        self._retention_hooks.append(fn)

    # ---- writer thread ------------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="shipyard-recorder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
            self._maybe_purge()
            if self._stop and not self._q:
                return

    def _prepare(self, span: Span) -> None:
        """Attributes get the same redaction as bodies; request metadata is a body."""
        if span.attributes:
            if not self._capture_bodies:
                span.attributes.pop("metadata", None)
            span.attributes = self._redact(span.attributes)

    def _drain(self, deadline: float | None = None) -> None:
        backoff = 0.05
        while self._q:
            self._idle.clear()
            batch = [self._q.popleft() for _ in range(min(self.batch_size, len(self._q)))]
            for span in batch:
                self._prepare(span)
            try:
                self.store.write_spans(batch, self._dump)
            except Exception as exc:  # store down: keep the batch, retry with back-off
                self.write_errors += 1
                log.warning("recorder: store write failed (%s); %d spans kept for retry", type(exc).__name__, len(batch))
                room = self.maxsize - len(self._q)
                keep = batch[:max(0, room)]
                self.dropped += len(batch) - len(keep)
                self._q.extendleft(reversed(keep))
                if self._stop and backoff > 2:
                    self.dropped += len(self._q)
                    self._q.clear()
                    break
                if deadline is not None and time.monotonic() + backoff > deadline:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            self.written += len(batch)
            for fn in self._listeners:
                try:
                    fn(batch)
                except Exception:
                    log.exception("recorder: listener failed")
        self._idle.set()

    def _maybe_purge(self) -> None:
        """Retention, in the writer thread: at start and then every purge interval."""
        if self.retention_s is None or not hasattr(self.store, "purge"):
            return
        now = time.monotonic()
        if self._last_purge is not None and now - self._last_purge < self.purge_interval:
            return
        self._last_purge = now
        cutoff = time.time() - self.retention_s
        try:
            self.purged += self.store.purge(cutoff)
        except Exception as exc:  # retried at the next interval; recording goes on
            log.warning("recorder: retention purge failed (%s)", type(exc).__name__)
            return
        for fn in self._retention_hooks:
            try:
                fn(cutoff)
            except Exception as exc:
                log.warning("recorder: retention hook failed (%s)", type(exc).__name__)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or the timeout passes)."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout
        if self._thread is None:
            self._drain(deadline)
            return not self._q
        while time.monotonic() < deadline:
            self._wake.set()
            if not self._q and self._idle.wait(0.01) and not self._q:
                return True
            time.sleep(0.005)
        return not self._q

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def stats(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "written": self.written,
            "dropped": self.dropped,
            "queue_depth": self.depth,
            "write_errors": self.write_errors,
        }
