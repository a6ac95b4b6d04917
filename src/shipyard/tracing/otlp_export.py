"""OTLP/HTTP export: spans the recorder has written are POSTed as protobuf to
``{endpoint}/v1/traces`` from the exporter's own thread.

``submit()`` is called by the recorder's writer thread after each written batch; it only
appends to a bounded queue (spans beyond it are counted as dropped), so a slow or dead
collector never holds up recording. The exporter thread sends batches, retrying 429, 5xx
and connection errors with back-off a bounded number of times (``Retry-After`` honoured,
up to a cap); a batch that still fails is counted as failed and let go.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any, Callable

from ..config import OtlpConfig, RecordingConfig
from ..errors import parse_retry_after
from .otlp import INGESTED_MARK, build_export_request
from .redact import Redactor
from .span import Span

log = logging.getLogger("shipyard.otlp")

QUEUE_SIZE = 10_000  # spans waiting for export
BATCH_SIZE = 512  # spans per request
MAX_ATTEMPTS = 5  # per batch: the first try and 4 retries
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 5.0
MAX_RETRY_AFTER_S = 30.0
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


def traces_url(endpoint: str) -> str:
    """OTEL_EXPORTER_OTLP_ENDPOINT semantics: a base URL to which ``/v1/traces`` is added
    (a URL that already ends in ``/v1/traces`` is used as is)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class OtlpExporter:
    def __init__(
        self,
        cfg: OtlpConfig,
        *,
        provider_type: Callable[[str | None], str | None] = lambda name: None,
        recording: RecordingConfig | None = None,
        service_version: str | None = None,
        queue_size: int = QUEUE_SIZE,
        batch_size: int = BATCH_SIZE,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
    ) -> None:
        if not cfg.endpoint:
            raise ValueError("otlp.endpoint is not set")
        self.url = traces_url(cfg.endpoint)
        self.headers = {"content-type": "application/x-protobuf", "user-agent": "shipyard-otlp",
                        **{k.lower(): v for k, v in cfg.headers.items()}}
        self.timeout = cfg.timeout_s
        recording = recording or RecordingConfig()
        # content goes out redacted and capped exactly as it is stored
        self.capture_content = cfg.capture_content and recording.capture_bodies
        self._dump = Redactor(recording.redact_keys, recording.redact_patterns, recording.max_payload_bytes).dump
        self.provider_type = provider_type
        self.service_version = service_version
        self.maxsize = queue_size
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self._q: deque[Span] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._deadline: float | None = None  # while closing: give up retrying after this
        self._thread: threading.Thread | None = None
        self.exported = 0
        self.failed = 0
        self.dropped = 0
        self.requests = 0
        self.last_error: str | None = None

    @classmethod
    def for_engine(cls, engine: Any) -> "OtlpExporter":
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("shipyard")
        except PackageNotFoundError:  # pragma: no cover
            ver = None

        def provider_type(name: str | None) -> str | None:
            p = engine.providers.get(name) if name else None
            return p.type if p is not None else None

        return cls(engine.config.otlp, provider_type=provider_type, recording=engine.config.recording,
                   service_version=ver)

    # ---- recorder's writer thread ---------------------------------------------------
    def submit(self, spans: list[Span]) -> None:
        """Queue spans for export; never blocks. Ingested spans are not re-exported."""
        with self._lock:
            for s in spans:
                if s.attributes and s.attributes.get(INGESTED_MARK) == "otlp":
                    continue
                if len(self._q) >= self.maxsize:
                    self.dropped += 1
                    continue
                self._q.append(s)
        self._wake.set()

    # ---- exporter thread ------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._deadline = None
            self._thread = threading.Thread(target=self._run, name="shipyard-otlp", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            self._drain()
            if self._stop and not self._q:
                return

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._q:
                    self._idle.set()
                    return
                self._idle.clear()
                batch = [self._q.popleft() for _ in range(min(self.batch_size, len(self._q)))]
            self._export(batch)

    def _export(self, batch: list[Span]) -> None:
        try:
            req, bad = build_export_request(batch, self.provider_type, capture_content=self.capture_content,
                                            dump=self._dump, service_version=self.service_version)
            body = req.SerializeToString()
        except Exception as exc:  # a mapping bug must not kill the thread
            log.exception("otlp: could not encode %d spans", len(batch))
            self.failed += len(batch)
            self.last_error = f"encode: {type(exc).__name__}"
            return
        if bad:
            self.failed += bad
        sent = len(batch) - bad
        if not sent:
            return
        delay = self.backoff_initial_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                self._post(body)
            except _Retryable as exc:
                self.last_error = str(exc)
                wait = min(exc.retry_after, MAX_RETRY_AFTER_S) if exc.retry_after is not None else random.uniform(0, delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                if attempt == self.max_attempts or (self._deadline is not None and time.monotonic() + wait > self._deadline):
                    break
                time.sleep(wait)
                continue
            except _Permanent as exc:
                self.last_error = str(exc)
                log.warning("otlp: collector rejected %d spans: %s", sent, exc)
                self.failed += sent
                return
            self.exported += sent
            return
        log.warning("otlp: giving up on %d spans after %d attempts: %s", sent, attempt, self.last_error)
        self.failed += sent

    def _post(self, body: bytes) -> None:
        self.requests += 1
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} from {self.url}"
            exc.close()
            if exc.code in RETRY_STATUSES or exc.code >= 500:
                raise _Retryable(reason, parse_retry_after(exc.headers.get("retry-after"))) from None
            raise _Permanent(reason) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise _Retryable(f"cannot reach {self.url}: {getattr(exc, 'reason', exc)}") from None

    # ---- lifecycle --------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been sent (or given up on)."""
        if self._thread is None:
            self._drain()
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            with self._lock:
                empty = not self._q
            if empty and self._idle.wait(0.01):
                with self._lock:
                    if not self._q:
                        return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, retrying only within ``timeout``, then stop the thread."""
        self._deadline = time.monotonic() + timeout
        self._stop = True
        self._wake.set()
        if self._thread is None:
            self._drain()
        else:
            self._thread.join(timeout + self.timeout)
            self._thread = None
        with self._lock:  # what is left could not be sent within the timeout
            self.dropped += len(self._q)
            self._q.clear()

    def stats(self) -> dict[str, Any]:
        return {"exported": self.exported, "failed": self.failed, "dropped": self.dropped,
                "queue_depth": len(self._q), "requests": self.requests, "last_error": self.last_error}


class _Permanent(Exception):
    pass
