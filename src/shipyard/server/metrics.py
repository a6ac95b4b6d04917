"""Prometheus ``GET /metrics``: request, token, cost, fallback and retry counters updated
from ``engine.span_listeners``, plus breaker and recorder state read at scrape time.

Each app gets its own CollectorRegistry (never the process-global one), so several apps
in one process do not clash. The ``user`` label is capped: the first ``USER_LABEL_LIMIT``
distinct users keep their id, later ones are counted as ``other``.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..routing.breaker import CLOSED, HALF_OPEN, OPEN
from ..tracing.otlp import error_type
from ..tracing.span import Span

USER_LABEL_LIMIT = 1000
USER_LABEL_MAX_CHARS = 128
OTHER_USER = "other"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def breaker_value(breaker: Any) -> int:
    """0 closed, 1 half-open (also: open with the cool-down over, so the next call probes), 2 open."""
    if breaker.state == CLOSED:
        return 0
    if breaker.state == HALF_OPEN or (breaker.state == OPEN and breaker.retry_in() <= 0):
        return 1
    return 2


class GatewayMetrics:
    def __init__(self, engine: Any, registry: CollectorRegistry | None = None,
                 user_limit: int = USER_LABEL_LIMIT) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("shipyard_requests", "Gateway calls by alias, target model and status (ok|error).",
                                ["alias", "model", "status"], registry=r)
        self.errors = Counter("shipyard_request_errors", "Failed calls by alias and error kind "
                              "(last failed attempt's outcome, cancelled, fallback_response, stream_error, internal).",
                              ["alias", "error_kind"], registry=r)
        self.duration = Histogram("shipyard_request_duration_seconds", "Call duration, first byte in to last byte out.",
                                  ["alias", "model"], buckets=DURATION_BUCKETS, registry=r)
        self.ttft = Histogram("shipyard_time_to_first_token_seconds", "Time to the first streamed chunk.",
                              ["alias", "model"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("shipyard_tokens", "Tokens by alias, model, user and direction (input|output).",
                              ["alias", "model", "user", "direction"], registry=r)
        self.cost = Counter("shipyard_cost_usd", "Cost in US dollars of priced calls (unknown prices are not counted).",
                            ["alias", "model", "user"], registry=r)
        self.fallbacks = Counter("shipyard_fallbacks", "Fall-overs to a later target of an alias.", ["alias"], registry=r)
        self.retries = Counter("shipyard_retries", "Retries of the same target.", ["alias"], registry=r)
        r.register(_EngineCollector(engine))
        self.user_limit = user_limit
        self._users: set[str] = set()
        # label children, cached: .labels() hashes and locks on every call
        self._by_model: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._by_status: dict[tuple[str, str, str], Any] = {}
        self._by_user: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._by_error: dict[tuple[str, str], Any] = {}
        self._by_alias: dict[str, tuple[Any, Any]] = {}

    def user_label(self, user: str | None) -> str:
        if not user:
            return ""
        user = user[:USER_LABEL_MAX_CHARS]
        if user in self._users:
            return user
        if len(self._users) < self.user_limit:
            self._users.add(user)
            return user
        return OTHER_USER

    def observe(self, span: Span) -> None:
        """A finished gateway span (engine.span_listeners): the request path, so cheap."""
        alias, model = span.alias or "", span.model or ""
        key = (alias, model)
        by_model = self._by_model.get(key)
        if by_model is None:
            by_model = self._by_model[key] = (self.duration.labels(alias, model), self.ttft.labels(alias, model))
        skey = (alias, model, span.status)
        req = self._by_status.get(skey)
        if req is None:
            req = self._by_status[skey] = self.requests.labels(alias, model, span.status)
        req.inc()
        if span.end_time is not None:
            by_model[0].observe(max(0.0, span.end_time - span.start_time))
        if span.ttft_ms is not None:
            by_model[1].observe(span.ttft_ms / 1000.0)
        if span.input_tokens is not None or span.output_tokens is not None or span.cost_usd is not None:
            ukey = (alias, model, self.user_label(span.user_id))
            by_user = self._by_user.get(ukey)
            if by_user is None:
                by_user = self._by_user[ukey] = (self.tokens.labels(*ukey, "input"), self.tokens.labels(*ukey, "output"),
                                                 self.cost.labels(*ukey))
            if span.input_tokens:
                by_user[0].inc(span.input_tokens)
            if span.output_tokens:
                by_user[1].inc(span.output_tokens)
            if span.cost_usd:
                by_user[2].inc(span.cost_usd)
        attrs = span.attributes or {}
        if span.status == "error":
            ekey = (alias, error_type(span) or "internal")
            err = self._by_error.get(ekey)
            if err is None:
                err = self._by_error[ekey] = self.errors.labels(*ekey)
            err.inc()
        by_alias = self._by_alias.get(alias)
        if by_alias is None:
            by_alias = self._by_alias[alias] = (self.fallbacks.labels(alias), self.retries.labels(alias))
        fallbacks = attrs.get("fallbacks")
        if fallbacks:
            by_alias[0].inc(fallbacks)
        attempts = attrs.get("attempts")
        if attempts and len(attempts) > 1:
            tried = [a for a in attempts if a.get("outcome") != "breaker_open"]
            retries = len(tried) - len({(a.get("provider"), a.get("model")) for a in tried})
            if retries > 0:
                by_alias[1].inc(retries)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """State read at scrape time: breakers, the recorder, the OTLP exporter."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        e = self.engine
        g = GaugeMetricFamily("shipyard_circuit_breaker_state",
                              "Circuit breaker per provider/model target: 0 closed, 1 half-open, 2 open.",
                              labels=["target"])
        for target, breaker in sorted(e.breakers.items()):
            g.add_metric([target], breaker_value(breaker))
        yield g
        st = e.recorder.stats()
        yield GaugeMetricFamily("shipyard_recorder_queue_depth", "Spans waiting to be written.", value=st["queue_depth"])
        yield CounterMetricFamily("shipyard_recorder_dropped", "Spans dropped (queue full or store down too long).",
                                  value=st["dropped"])
        yield CounterMetricFamily("shipyard_recorder_written", "Spans written to the store.", value=st["written"])
        yield CounterMetricFamily("shipyard_recorder_write_errors", "Failed store writes (retried).",
                                  value=st["write_errors"])
        exp = getattr(e, "otlp_exporter", None)
        if exp is not None:
            xs = exp.stats()
            for name, doc in (("exported", "Spans accepted by the OTLP collector."),
                              ("failed", "Spans the OTLP collector refused or that could not be sent after retries."),
                              ("dropped", "Spans dropped because the OTLP export queue was full.")):
                yield CounterMetricFamily(f"shipyard_otlp_{name}_spans", doc, value=xs[name])
            yield GaugeMetricFamily("shipyard_otlp_queue_depth", "Spans waiting for OTLP export.",
                                    value=xs["queue_depth"])


def metrics_routes(engine: Any) -> list[Route]:
    metrics = GatewayMetrics(engine)
    engine.span_listeners.append(metrics.observe)

    async def scrape(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", scrape, methods=["GET"])]
