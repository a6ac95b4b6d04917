"""Counters of access decisions and dependency health, exported on /metrics.

Plain integers on the request path; a Prometheus collector reads them at scrape time and
is registered in the app's /metrics registry (``server/metrics.py``'s GatewayMetrics).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

DECISIONS = ("allowed", "unauthorized", "forbidden", "rate_limited", "budget_exceeded", "degraded_open",
             "degraded_closed")


class AccessMetrics:
    def __init__(self) -> None:
        self.decisions: Counter[str] = Counter()
        self.dependency_errors: Counter[str] = Counter()
        self.access: Any = None  # set by Access: read at scrape time

    def decision(self, what: str) -> None:
        self.decisions[what] += 1

    def dependency_error(self, dependency: str) -> None:
        self.dependency_errors[dependency] += 1

    def collector(self) -> "_Collector":
        return _Collector(self)


class _Collector:
    def __init__(self, m: AccessMetrics) -> None:
        self.m = m

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.m
        c = CounterMetricFamily("shipyard_access_decisions", "Access decisions on OpenAI routes: allowed, "
                                "unauthorized (401), forbidden (403), rate_limited and budget_exceeded (429), "
                                "degraded_open / degraded_closed (Redis unreachable, per redis.on_error).",
                                labels=["decision"])
        for d in DECISIONS:
            c.add_metric([d], m.decisions.get(d, 0))
        yield c
        access = m.access
        errors = dict(m.dependency_errors)
        up = GaugeMetricFamily("shipyard_dependency_up", "1 when a shared dependency answered its last check, "
                               "else 0 (redis: limits, budgets, breakers; key_store: virtual keys).",
                               labels=["dependency"])
        if access is not None:
            if access.link is not None:
                up.add_metric(["redis"], 1 if access.link.up else 0)
                errors["redis"] = access.link.errors
            if access.auth is not None:
                up.add_metric(["key_store"], 1 if access.auth.store_up else 0)
        yield up
        e = CounterMetricFamily("shipyard_dependency_errors", "Failed calls to a shared dependency.",
                                labels=["dependency"])
        for dep, n in sorted(errors.items()):
            e.add_metric([dep], n)
        yield e
        if access is not None and access.auth is not None:
            yield GaugeMetricFamily("shipyard_auth_cache_keys", "Key lookups held in this replica's cache.",
                                    value=len(access.auth._cache))
