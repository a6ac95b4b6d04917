"""The Redis cache backend: one cache shared by replicas (separate Engines and servers),
against a real redis-server on loopback (the ``redis_url`` fixture of tests/services.py;
each test uses its own key prefix)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import client_for
from services import free_port
from test_cache import Q, chat_calls, config, flush_cache, llm_span, trace

from shipyard.engine import Engine
from shipyard.types import parse_chat_request


def redis_config(up: Any, url: str, prefix: str, **kw: Any) -> dict[str, Any]:
    cfg = config(up, cache={"backend": "redis"}, **kw)
    cfg["redis"] = {"url": url, "key_prefix": prefix, "retry_interval_s": 0.5}
    cfg["store"] = "none"
    return cfg


def request(text: str = "Say hello", **kw: Any) -> Any:
    return parse_chat_request({"model": "chat", "messages": [{"role": "user", "content": text}],
                               "temperature": 0, **kw})


async def call(engine: Engine, text: str = "Say hello", **kw: Any) -> tuple[dict[str, Any], Any]:
    span = engine.new_span("llm", "chat")
    resp = await engine.complete(request(text, **kw), span)
    return resp, span


async def test_two_engines_share_one_cache(fake_openai, redis_url):
    cfg = redis_config(fake_openai, redis_url, f"t{time.time_ns()}")
    a, b = Engine(cfg), Engine(cfg)
    await a.start()
    await b.start()
    try:
        resp_a, span_a = await call(a)
        assert span_a.attributes["cache"] == "miss"
        await a.cache.flush()
        resp_b, span_b = await call(b)
        assert span_b.attributes["cache"] == "hit" and span_b.cost_usd == 0.0
        assert resp_b["choices"] == resp_a["choices"]
        assert span_b.attributes["cache_hit"]["trace_id"] == span_a.trace_id  # the other replica's call
        assert chat_calls(fake_openai) == 1

        # streaming on one replica, replayed on the other
        span = a.new_span("llm", "chat")
        chunks = [c async for c in await a.open_stream(request("Count to three", stream=True), span)]
        await a.cache.flush()
        span2 = b.new_span("llm", "chat")
        replay = [c async for c in await b.open_stream(request("Count to three", stream=True), span2)]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        assert span2.attributes["cache"] == "hit"
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in replay if c.get("choices")) == text
        assert chat_calls(fake_openai) == 2
    finally:
        await a.close()
        await b.close()


async def test_semantic_entries_are_shared_and_expire(fake_openai, redis_url):
    cfg = redis_config(fake_openai, redis_url, f"t{time.time_ns()}",
                       alias_cache={"enabled": True, "ttl_s": 0.5, "semantic": {"enabled": True, "threshold": 0.85}})
    a, b = Engine(cfg), Engine(cfg)
    await a.start()
    await b.start()
    try:
        await call(a, "What is the capital of France?")
        await a.cache.flush()
        _, s = await call(b, "What is the capital of Germany?")
        assert s.attributes["cache"] == "miss"
        _, s = await call(b, "what's the capital city of France")
        assert s.attributes["cache"] == "hit" and s.attributes["cache_hit"]["kind"] == "semantic"
        await asyncio.sleep(0.7)
        _, s = await call(b, "what's the capital city of France")
        assert s.attributes["cache"] == "miss"  # the entry and its vector expired (Redis TTLs)
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=cfg["redis"]["key_prefix"] + ":cache:*")]
            assert keys  # the entries written last, each with a TTL
            for k in keys:
                assert 0 < await r.pttl(k) <= 500
        finally:
            await r.aclose()
    finally:
        await a.close()
        await b.close()


def test_two_servers_share_the_cache_end_to_end(serve, fake_openai, redis_url):
    cfg = redis_config(fake_openai, redis_url, f"t{time.time_ns()}")
    s1 = serve({k: v for k, v in cfg.items() if k != "store"})
    s2 = serve({k: v for k, v in cfg.items() if k != "store"})
    c1, c2 = client_for(s1), client_for(s2)
    r1 = c1.chat.completions.with_raw_response.create(model="chat", messages=Q, temperature=0)
    flush_cache(s1)
    r2 = c2.chat.completions.with_raw_response.create(model="chat", messages=Q, temperature=0)
    assert (r1.headers["x-shipyard-cache"], r2.headers["x-shipyard-cache"]) == ("miss", "hit")
    assert chat_calls(fake_openai) == 1
    hit = llm_span(trace(s2, r2))
    assert hit["cost_usd"] == 0.0 and hit["attributes"]["cache_hit"]["trace_id"] == r1.headers["x-shipyard-trace-id"]


async def test_redis_down_means_misses_not_errors(fake_openai):
    cfg = redis_config(fake_openai, f"redis://127.0.0.1:{free_port()}/0", "down")
    engine = Engine(cfg)
    await engine.start()
    try:
        t0 = time.monotonic()
        for _ in range(3):
            resp, span = await call(engine)
            assert resp["choices"][0]["message"]["content"] and span.attributes["cache"] == "miss"
        await engine.cache.flush()
        assert time.monotonic() - t0 < 5
        stats = engine.cache.stats()
        assert stats["errors"] >= 1 and stats["ok"] is False and stats["stored"] == 0
        assert chat_calls(fake_openai) == 3
    finally:
        await engine.close()
