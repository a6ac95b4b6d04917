"""GET /metrics: counters after real calls through the gateway, read with prometheus_client's parser."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import client_for, fast_alias
from fakes import Fault
from shipyard.server.metrics import GatewayMetrics
from shipyard.tracing.span import Span

MODEL = "gpt-4o-mini-2024-07-18"
BACKUP = "backup-model"
PRICES = {MODEL: {"input": 0.15, "output": 0.60}}
MSG = [{"role": "user", "content": "Say hello"}]


def config(up1, up2=None, **alias_kw):
    providers = {"primary": {"type": "openai", "base_url": up1.base_url, "api_key": "sk-1"}}
    targets = [{"provider": "primary", "model": MODEL}]
    if up2 is not None:
        providers["backup"] = {"type": "openai", "base_url": up2.base_url, "api_key": "sk-2"}
        targets.append({"provider": "backup", "model": BACKUP})
    return {"providers": providers, "models": {"chat": fast_alias(*targets, **alias_kw)}, "prices": PRICES}


def scrape(server) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_success_counts_tokens_cost_and_latency(serve, fake_openai):
    fake_openai.usage = (1000, 500)
    server = serve(config(fake_openai))
    client = client_for(server)
    for _ in range(2):
        client.chat.completions.create(model="chat", messages=MSG, user="alice")
    client.chat.completions.create(model="chat", messages=MSG)  # no user
    stream = client.chat.completions.create(model="chat", messages=MSG, user="alice", stream=True)
    assert list(stream)
    m = scrape(server)

    assert value(m, "shipyard_requests_total", alias="chat", model=MODEL, status="ok") == 4
    assert value(m, "shipyard_tokens_total", alias="chat", model=MODEL, user="alice", direction="input") == 3000
    assert value(m, "shipyard_tokens_total", alias="chat", model=MODEL, user="alice", direction="output") == 1500
    assert value(m, "shipyard_tokens_total", alias="chat", model=MODEL, user="", direction="input") == 1000
    assert value(m, "shipyard_cost_usd_total", alias="chat", model=MODEL, user="alice") == pytest.approx(
        3 * (1000 * 0.15 + 500 * 0.60) / 1e6)
    assert value(m, "shipyard_request_duration_seconds_count", alias="chat", model=MODEL) == 4
    assert value(m, "shipyard_request_duration_seconds_sum", alias="chat", model=MODEL) > 0
    assert value(m, "shipyard_time_to_first_token_seconds_count", alias="chat", model=MODEL) == 1
    assert value(m, "shipyard_circuit_breaker_state", target=f"primary/{MODEL}") == 0
    assert value(m, "shipyard_request_errors_total", alias="chat", error_kind="http_500") is None
    server.flush()
    m = scrape(server)
    assert value(m, "shipyard_recorder_written_total") == 4
    assert value(m, "shipyard_recorder_dropped_total") == 0
    assert value(m, "shipyard_recorder_queue_depth") == 0


def test_errors_fallbacks_retries_and_open_breaker(serve, fake_openai, fake_openai_2):
    cfg = config(fake_openai, fake_openai_2, retries=1,
                 circuit_breaker={"failure_threshold": 2, "cooldown_s": 60})
    server = serve(cfg)
    client = client_for(server)
    # primary: 500, retried once, 500 again -> breaker opens; backup answers
    fake_openai.fail_next(Fault("status", status=500), times=2)
    client.chat.completions.create(model="chat", messages=MSG)
    m = scrape(server)
    assert value(m, "shipyard_fallbacks_total", alias="chat") == 1
    assert value(m, "shipyard_retries_total", alias="chat") == 1
    assert value(m, "shipyard_requests_total", alias="chat", model=BACKUP, status="ok") == 1
    assert value(m, "shipyard_circuit_breaker_state", target=f"primary/{MODEL}") == 2
    assert value(m, "shipyard_circuit_breaker_state", target=f"backup/{BACKUP}") == 0

    # breaker open: primary is skipped (a fall-over, no retry); then the backup fails too
    fake_openai_2.fail_next(Fault("status", status=503), times=2)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="chat", messages=MSG)
    assert not fake_openai.pending_faults and len(fake_openai.requests) == 2
    m = scrape(server)
    assert value(m, "shipyard_requests_total", alias="chat", model="", status="error") == 1
    assert value(m, "shipyard_request_errors_total", alias="chat", error_kind="http_503") == 1
    assert value(m, "shipyard_fallbacks_total", alias="chat") == 2
    assert value(m, "shipyard_retries_total", alias="chat") == 2
    assert value(m, "shipyard_circuit_breaker_state", target=f"backup/{BACKUP}") == 2


def test_unknown_alias_is_not_a_call_and_apps_do_not_share_registries(serve, fake_openai):
    a, b = serve(config(fake_openai)), serve(config(fake_openai))
    client_for(a).chat.completions.create(model="chat", messages=MSG)
    with pytest.raises(openai.NotFoundError):
        client_for(a).chat.completions.create(model="nope", messages=MSG)
    assert value(scrape(a), "shipyard_requests_total", alias="chat", model=MODEL, status="ok") == 1
    assert value(scrape(b), "shipyard_requests_total", alias="chat", model=MODEL, status="ok") is None


class _Engine:
    def __init__(self) -> None:
        self.breakers: dict = {}
        self.otlp_exporter = None

    class recorder:
        @staticmethod
        def stats():
            return {"queue_depth": 0, "dropped": 0, "written": 0, "write_errors": 0, "recorded": 0}


def test_user_label_is_capped():
    metrics = GatewayMetrics(_Engine(), user_limit=2)
    for user in ("u1", "u2", "u3", "u4", "u1"):
        s = Span(trace_id="a" * 32, span_id="b" * 16, name="chat chat", alias="chat", model="m",
                 user_id=user, input_tokens=1, output_tokens=1)
        s.end_time = s.start_time + 0.1
        metrics.observe(s)
    m = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            m[(s.name, frozenset(s.labels.items()))] = s.value
    assert value(m, "shipyard_tokens_total", alias="chat", model="m", user="u1", direction="input") == 2
    assert value(m, "shipyard_tokens_total", alias="chat", model="m", user="u2", direction="input") == 1
    assert value(m, "shipyard_tokens_total", alias="chat", model="m", user="other", direction="input") == 2
    assert value(m, "shipyard_tokens_total", alias="chat", model="m", user="u3", direction="input") is None


def test_breaker_state_values():
    from shipyard.routing.breaker import CircuitBreaker
    from shipyard.server.metrics import breaker_value

    now = [0.0]
    b = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=lambda: now[0])
    assert breaker_value(b) == 0
    b.failure()
    assert breaker_value(b) == 2
    now[0] = 11.0  # cool-down over: the next call is a probe
    assert breaker_value(b) == 1
    assert b.allow() and breaker_value(b) == 1
    b.success()
    assert breaker_value(b) == 0
