"""The exact-match response cache, end to end: `shipyard serve` with the openai SDK as the
client and a fake OpenAI upstream; plus its keys, directives and the memory and SQLite
backends on their own."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import client_for, fast_alias
from fakes import Fault

from shipyard.cache.config import CacheConfig
from shipyard.cache.keys import alias_fingerprint, directive, request_keys
from shipyard.cache.memory import MemoryBackend
from shipyard.cache.sqlite import SQLiteBackend
from shipyard.errors import ConfigError, InvalidRequest

MODEL = "gpt-4o-mini-2024-07-18"
PRICES = {MODEL: {"input": 0.15, "output": 0.60}, "gpt-4o-2024-08-06": {"input": 2.5, "output": 10.0}}
Q = [{"role": "user", "content": "Say hello"}]


def config(up: Any, *, model: str = MODEL, alias_cache: dict[str, Any] | None = None,
           cache: dict[str, Any] | None = None, **alias_kw: Any) -> dict[str, Any]:
    alias = fast_alias({"provider": "primary", "model": model}, **alias_kw)
    alias["cache"] = {"enabled": True} if alias_cache is None else alias_cache
    return {
        "providers": {"primary": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test-secret-123"}},
        "models": {"chat": alias},
        "prices": PRICES,
        "cache": cache or {},
    }


def chat_calls(up: Any) -> int:
    return sum(1 for r in up.requests if r["path"] == "/v1/chat/completions")


def ask(client: Any, **kw: Any) -> Any:
    kw.setdefault("messages", Q)
    kw.setdefault("temperature", 0)
    return client.chat.completions.with_raw_response.create(model="chat", **kw)


def trace(server: Any, raw: Any) -> dict[str, Any]:
    server.flush()
    t = server.engine.store.get_trace(raw.headers["x-shipyard-trace-id"])
    assert t is not None
    return t


def llm_span(t: dict[str, Any]) -> dict[str, Any]:
    (s,) = [s for s in t["spans"] if s["kind"] == "llm"]
    return s


def flush_cache(server: Any) -> None:
    """Wait for the cache writes in flight (the server's own loop runs them)."""
    deadline = time.monotonic() + 5
    while server.engine.cache._tasks and time.monotonic() < deadline:
        time.sleep(0.01)


# ---- the exact cache end to end ---------------------------------------------------------


def test_second_identical_deterministic_call_is_served_from_cache(serve, fake_openai):
    fake_openai.reply_text = "Hello from upstream"
    fake_openai.usage = (1000, 500)
    server = serve(config(fake_openai))
    client = client_for(server)

    first = ask(client, user="u1", metadata={"session_id": "s-1"})
    assert first.headers["x-shipyard-cache"] == "miss"
    flush_cache(server)
    second = ask(client, user="someone-else", metadata={"session_id": "s-2"})  # user/metadata: not in the key
    assert second.headers["x-shipyard-cache"] == "hit"
    assert chat_calls(fake_openai) == 1

    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content == "Hello from upstream"
    assert b.id != a.id and b.id.startswith("chatcmpl-")  # its own completion id
    assert b.usage.prompt_tokens == 1000 and b.usage.completion_tokens == 500

    miss = llm_span(trace(server, first))
    assert miss["attributes"]["cache"] == "miss"
    assert miss["cost_usd"] == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    t = trace(server, second)
    hit = llm_span(t)
    assert hit["attributes"]["cache"] == "hit"
    assert hit["attributes"]["cache_key"] == miss["attributes"]["cache_key"] and len(hit["attributes"]["cache_key"]) == 16
    assert hit["cost_usd"] == 0.0 and t["cost_usd"] == 0.0  # known to be free, not unknown
    assert (hit["input_tokens"], hit["output_tokens"], hit["cached_tokens"]) == (1000, 500, 1000)
    assert hit["provider"] == "primary" and hit["model"] == MODEL
    assert hit["completion_id"] == b.id
    info = hit["attributes"]["cache_hit"]
    assert info["kind"] == "exact" and info["trace_id"] == miss["trace_id"] and info["span_id"] == miss["span_id"]
    assert info["saved_usd"] == pytest.approx(miss["cost_usd"])
    assert hit["attributes"]["attempts"] == []
    assert hit["output"]["choices"][0]["message"]["content"] == "Hello from upstream"


def test_what_is_part_of_the_key(serve, fake_openai):
    server = serve(config(fake_openai))
    client = client_for(server)
    ask(client)
    flush_cache(server)
    assert ask(client, temperature=0.0).headers["x-shipyard-cache"] == "hit"  # 0 and 0.0 are one value
    assert ask(client, n=1).headers["x-shipyard-cache"] == "hit"  # n: 1 is the default
    assert ask(client, messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]
               ).headers["x-shipyard-cache"] == "hit"  # one text part is the string
    before = chat_calls(fake_openai)
    for kw in ({"max_tokens": 5}, {"stop": ["x"]}, {"seed": 3}, {"top_p": 0.5},
               {"messages": [{"role": "system", "content": "Be brief."}, *Q]},
               {"response_format": {"type": "json_object"}},
               {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}):
        assert ask(client, **kw).headers["x-shipyard-cache"] == "miss", kw
    assert chat_calls(fake_openai) == before + 7


def test_non_deterministic_requests_are_not_cached_by_default(serve, fake_openai):
    server = serve(config(fake_openai))
    client = client_for(server)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="chat", messages=Q, temperature=0.7)
        assert raw.headers["x-shipyard-cache"] == "bypass"
    assert chat_calls(fake_openai) == 2
    span = llm_span(trace(server, raw))
    assert span["attributes"]["cache"] == "bypass" and span["attributes"]["cache_bypass"] == "non-deterministic"
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=Q)  # default temperature is 1
    assert raw.headers["x-shipyard-cache"] == "bypass"

    # a fixed seed makes it cacheable; so does an explicit opt-in
    for kw in ({"temperature": 0.7, "seed": 42}, {"temperature": 0.7, "metadata": {"cache": "yes"}}):
        assert ask(client, **kw).headers["x-shipyard-cache"] == "miss"
        flush_cache(server)
        assert ask(client, **kw).headers["x-shipyard-cache"] == "hit"


def test_an_alias_may_cache_every_request(serve, fake_openai):
    server = serve(config(fake_openai, alias_cache={"enabled": True, "deterministic_only": False}))
    client = client_for(server)
    client.chat.completions.create(model="chat", messages=Q, temperature=1.2)
    flush_cache(server)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=Q, temperature=1.2)
    assert raw.headers["x-shipyard-cache"] == "hit" and chat_calls(fake_openai) == 1


def test_opt_out_per_request(serve, fake_openai):
    server = serve(config(fake_openai))
    client = client_for(server)
    # metadata.cache "no" and Cache-Control: no-store neither read nor write
    assert ask(client, metadata={"cache": "no"}).headers["x-shipyard-cache"] == "bypass"
    assert ask(client, extra_headers={"Cache-Control": "no-store"}).headers["x-shipyard-cache"] == "bypass"
    flush_cache(server)
    assert chat_calls(fake_openai) == 2
    assert ask(client).headers["x-shipyard-cache"] == "miss"  # nothing was stored by them
    flush_cache(server)
    assert ask(client).headers["x-shipyard-cache"] == "hit"
    raw = ask(client, metadata={"cache": "no"})
    assert raw.headers["x-shipyard-cache"] == "bypass"  # an entry exists, but is not read
    assert llm_span(trace(server, raw))["attributes"]["cache_bypass"] == "metadata.cache"
    assert chat_calls(fake_openai) == 4

    # Cache-Control: no-cache (and metadata.cache "refresh") skip the lookup but store the answer
    fake_openai.reply_text = "A fresher answer"
    raw = ask(client, extra_headers={"Cache-Control": "no-cache"})
    assert raw.headers["x-shipyard-cache"] == "miss" and chat_calls(fake_openai) == 5
    flush_cache(server)
    raw = ask(client)
    assert raw.headers["x-shipyard-cache"] == "hit" and raw.parse().choices[0].message.content == "A fresher answer"
    fake_openai.reply_text = "Freshest"
    assert ask(client, metadata={"cache": "refresh"}).headers["x-shipyard-cache"] == "miss"
    flush_cache(server)
    assert ask(client).parse().choices[0].message.content == "Freshest"

    # max-age: only entries young enough
    time.sleep(0.3)
    assert ask(client, extra_headers={"Cache-Control": "max-age=0.1"}).headers["x-shipyard-cache"] == "miss"
    assert ask(client, extra_headers={"Cache-Control": "max-age=3600"}).headers["x-shipyard-cache"] == "hit"

    with pytest.raises(openai.BadRequestError) as ei:
        ask(client, metadata={"cache": "sometimes"})
    assert ei.value.body["param"] == "metadata.cache"


def test_entries_expire_after_the_alias_ttl(serve, fake_openai):
    server = serve(config(fake_openai, alias_cache={"enabled": True, "ttl_s": 0.4},
                          cache={"ttl_s": 3600}))
    client = client_for(server)
    ask(client)
    flush_cache(server)
    assert ask(client).headers["x-shipyard-cache"] == "hit"
    time.sleep(0.6)
    assert ask(client).headers["x-shipyard-cache"] == "miss"
    assert chat_calls(fake_openai) == 2


def test_streaming_hit_replays_chunks_that_reassemble(serve, fake_openai):
    fake_openai.reply_text = "One two three four five six seven"
    fake_openai.usage = (20, 7)
    server = serve(config(fake_openai))
    client = client_for(server)

    def stream(**kw: Any) -> tuple[str, list[Any], Any]:
        with client.chat.completions.with_streaming_response.create(
                model="chat", messages=Q, temperature=0, stream=True, **kw) as resp:
            chunks = list(resp.parse())
            header = resp.headers["x-shipyard-cache"]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks, header

    text, chunks, header = stream()
    assert header == "miss" and text == "One two three four five six seven"
    assert all(c.usage is None for c in chunks)
    flush_cache(server)

    text2, chunks2, header2 = stream()
    assert header2 == "hit" and text2 == text
    assert chunks2[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks2)  # not asked for
    assert len({c.id for c in chunks2}) == 1 and chunks2[0].id != chunks[0].id

    text3, chunks3, header3 = stream(stream_options={"include_usage": True})
    assert header3 == "hit" and text3 == text
    assert chunks3[-1].choices == [] and chunks3[-1].usage.prompt_tokens == 20
    assert chunks3[-1].usage.completion_tokens == 7

    # the stored completion serves non-streaming requests too, and the other way round
    raw = ask(client)
    assert raw.headers["x-shipyard-cache"] == "hit" and raw.parse().choices[0].message.content == text
    assert chat_calls(fake_openai) == 1

    server.flush()
    rows, _ = server.engine.store.list_traces(__import__("shipyard.store", fromlist=["TraceFilter"]).TraceFilter())
    spans = [llm_span(server.engine.store.get_trace(r["trace_id"])) for r in rows]
    hits = [s for s in spans if s["attributes"].get("cache") == "hit"]
    assert len(hits) == 3 and all(s["cost_usd"] == 0.0 for s in hits)
    streamed_hit = [s for s in hits if s["attributes"].get("stream")]
    assert streamed_hit and all(s["ttft_ms"] is not None for s in streamed_hit)


def test_a_streaming_miss_is_stored_only_when_complete(serve, fake_openai):
    fake_openai.reply_text = "a b c d e f g h"
    server = serve(config(fake_openai, retries=0))
    client = client_for(server)
    fake_openai.fail_next(Fault("cut_stream", after_chunks=2))
    with pytest.raises(openai.APIError), \
            client.chat.completions.create(model="chat", messages=Q, temperature=0, stream=True) as s:
        for _ in s:
            pass
    flush_cache(server)
    assert ask(client).headers["x-shipyard-cache"] == "miss"  # the cut stream was not stored


def test_changing_the_target_model_misses(serve, fake_openai, tmp_path: Path):
    """Entries survive in SQLite across restarts; a config change of the alias's targets
    changes every key, and changing it back finds the old entries again."""
    cache = {"backend": "sqlite", "path": str(tmp_path / "cache.db")}
    fake_openai.reply_text = "from the mini model"
    s1 = serve(config(fake_openai, cache=cache))
    assert ask(client_for(s1)).headers["x-shipyard-cache"] == "miss"
    flush_cache(s1)
    assert ask(client_for(s1)).headers["x-shipyard-cache"] == "hit"
    s1.stop()

    fake_openai.reply_text = "from the big model"
    s2 = serve(config(fake_openai, model="gpt-4o-2024-08-06", cache=cache))
    raw = ask(client_for(s2))
    assert raw.headers["x-shipyard-cache"] == "miss" and raw.parse().choices[0].message.content == "from the big model"
    s2.stop()

    s3 = serve(config(fake_openai, cache=cache, alias_cache={"enabled": True},
                      backoff={"initial_s": 0.01, "max_s": 0.05}))
    raw = ask(client_for(s3))
    assert raw.headers["x-shipyard-cache"] == "hit" and raw.parse().choices[0].message.content == "from the mini model"
    assert chat_calls(fake_openai) == 2
    s3.stop()

    # target params are part of the alias too
    cfg = config(fake_openai, cache=cache)
    cfg["models"]["chat"]["targets"][0]["params"] = {"max_tokens": 50}
    s4 = serve(cfg)
    assert ask(client_for(s4)).headers["x-shipyard-cache"] == "miss"


def test_errors_are_not_cached(serve, fake_openai):
    server = serve(config(fake_openai, retries=0))
    client = client_for(server)
    fake_openai.fail_next(Fault("status", status=500))
    with pytest.raises(openai.APIStatusError):
        ask(client)
    fake_openai.fail_next(Fault("status", status=400))
    with pytest.raises(openai.BadRequestError):
        ask(client)
    flush_cache(server)
    assert server.engine.cache.counts["stored"] == 0
    assert ask(client).headers["x-shipyard-cache"] == "miss"
    assert chat_calls(fake_openai) == 3


def test_fallback_response_answers_are_not_cached(serve, fake_openai):
    server = serve(config(fake_openai, retries=0, fallback_response="Sorry, try later."))
    client = client_for(server)
    fake_openai.fail_next(Fault("status", status=503))
    raw = ask(client)
    assert raw.parse().choices[0].message.content == "Sorry, try later."
    flush_cache(server)
    raw = ask(client)
    assert raw.headers["x-shipyard-cache"] == "miss" and raw.parse().choices[0].message.content != "Sorry, try later."
    flush_cache(server)
    assert server.engine.cache.counts["stored"] == 1  # only the real answer


def test_guard_refusals_are_not_cached(serve, fake_openai):
    fake_openai.reply_text = "the code is swordfish"
    server = serve(config(fake_openai, guards={"output": [{"name": "regex", "pattern": "swordfish",
                                                           "action": "block"}]}))
    client = client_for(server)
    first = ask(client).parse()
    assert first.choices[0].finish_reason == "content_filter"
    flush_cache(server)
    assert ask(client).headers["x-shipyard-cache"] == "miss"
    assert chat_calls(fake_openai) == 2

    # an input guard's block never gets as far as the cache
    server2 = serve(config(fake_openai, guards={"input": [{"name": "regex", "pattern": "forbidden",
                                                           "action": "block"}]}))
    with pytest.raises(openai.BadRequestError):
        ask(client_for(server2), messages=[{"role": "user", "content": "forbidden words"}])
    assert server2.engine.cache.counts == {**server2.engine.cache.counts, "misses": 0, "hits": 0}


def test_aliases_without_cache_are_untouched(serve, fake_openai):
    cfg = config(fake_openai)
    cfg["models"]["other"] = fast_alias({"provider": "primary", "model": MODEL})
    server = serve(cfg)
    client = client_for(server)
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="other", messages=Q, temperature=0)
        assert "x-shipyard-cache" not in raw.headers
    assert chat_calls(fake_openai) == 2
    # and with no alias caching at all, the engine has no cache
    plain = serve({**cfg, "models": {"other": cfg["models"]["other"]}})
    assert plain.engine.cache is None


def test_per_request_guards_are_part_of_the_key(serve, fake_openai):
    fake_openai.reply_text = "mail me at bob@example.com"
    server = serve(config(fake_openai))
    client = client_for(server)
    plain = ask(client).parse().choices[0].message.content
    flush_cache(server)
    raw = ask(client, metadata={"guards": {"output": [{"name": "pii", "action": "redact"}]}})
    assert raw.headers["x-shipyard-cache"] == "miss"
    assert "bob@example.com" in plain and "bob@example.com" not in raw.parse().choices[0].message.content


def test_library_gateway_uses_the_cache(fake_openai, tmp_path: Path):
    from shipyard import Gateway

    cfg = {**config(fake_openai), "store": f"sqlite:///{tmp_path}/lib.db"}
    with Gateway(cfg) as gw:
        a = gw.chat(model="chat", messages=Q, temperature=0)
        gw._sync().run(gw.engine.cache.flush())
        b = gw.chat(model="chat", messages=Q, temperature=0)
        assert b.choices[0].message.content == a.choices[0].message.content
        assert chat_calls(fake_openai) == 1
        c = gw.chat(model="chat", messages=Q, temperature=0, metadata={"cache": "no"})
        assert c.choices[0].message.content == a.choices[0].message.content
        assert chat_calls(fake_openai) == 2


# ---- keys and directives --------------------------------------------------------------


class _P:
    def __init__(self, name: str) -> None:
        self.name = name


class _T:
    def __init__(self, provider: str, model: str, params: dict[str, Any] | None = None) -> None:
        self.provider, self.model, self.params = _P(provider), model, params or {}


class _R:
    def __init__(self, alias: str, *targets: _T) -> None:
        self.alias, self.targets, self.cfg = alias, list(targets), None


class _C:
    providers = {"p": {"type": "openai", "base_url": "http://a"}, "q": {"type": "openai", "base_url": "http://b"}}
    guards: dict[str, Any] = {}


def key(body: dict[str, Any], router: _R | None = None, metadata: dict[str, Any] | None = None) -> str:
    fp = alias_fingerprint(router or _R("chat", _T("p", "m")), _C())
    k = request_keys({"model": "chat", **body}, fp, metadata or {})
    assert k is not None
    return k.exact


def test_keys_normalise_and_separate() -> None:
    base = {"messages": Q, "temperature": 0}
    k = key(base)
    assert key({**base, "user": "x", "metadata": {"a": 1}, "stream": True,
                "stream_options": {"include_usage": True}, "n": 1, "seed": None}) == k
    assert key({"temperature": 0.0, "messages": Q}) == k  # order and 0.0
    assert key({**base, "model": "another-alias-name"}) == k  # the alias is in the fingerprint instead
    for other in ({**base, "temperature": 0.1}, {**base, "messages": [{"role": "user", "content": "say hello"}]},
                  {**base, "n": 2}, {**base, "logit_bias": {"1": 2}}, {**base, "reasoning_effort": "low"}):
        assert key(other) != k, other
    assert key(base, _R("chat", _T("p", "m2"))) != k  # model version
    assert key(base, _R("chat", _T("q", "m"))) != k  # provider (its base URL)
    assert key(base, _R("chat", _T("p", "m", {"max_tokens": 3}))) != k  # target params
    assert key(base, _R("chat", _T("p", "m"), _T("q", "m"))) != k  # the fallback chain
    assert key(base, _R("other", _T("p", "m"))) != k  # aliases do not share entries
    assert key(base, metadata={"guards": {"output": ["pii"]}}) != k


def test_directives() -> None:
    d = directive({}, None)
    assert (d.read, d.write, d.force, d.max_age_s) == (True, True, False, None)
    assert (lambda d: (d.read, d.write))(directive({"cache": "no"}, None)) == (False, False)
    assert (lambda d: (d.read, d.write))(directive({"cache": False}, None)) == (False, False)
    assert (lambda d: (d.read, d.write))(directive({"cache": "refresh"}, None)) == (False, True)
    assert directive({"cache": "YES"}, None).force
    assert (lambda d: (d.read, d.write))(directive({}, "No-Store")) == (False, False)
    assert (lambda d: (d.read, d.write))(directive({}, "no-cache")) == (False, True)
    assert directive({}, "private, max-age=60").max_age_s == 60
    assert not directive({}, "max-age=0").read
    assert directive({}, "max-age=abc").read  # unknown or malformed directives are ignored
    assert (lambda d: (d.read, d.write))(directive({"cache": "yes"}, "no-store")) == (False, False)  # stricter wins
    for bad in ("maybe", 3, {"x": 1}):
        with pytest.raises(InvalidRequest):
            directive({"cache": bad}, None)


# ---- config ---------------------------------------------------------------------------


def test_config_keys_and_errors(fake_openai) -> None:
    from shipyard.config import load_config

    cfg = load_config({**config(fake_openai, alias_cache={"ttl_s": 5, "semantic": {"threshold": 0.8}}),
                       "cache": {"enabled": True, "ttl_s": 60, "semantic": {"enabled": True, "threshold": 0.95}}})
    s = cfg.cache.for_alias(cfg.models["chat"].cache)
    assert (s.enabled, s.ttl_s, s.deterministic_only) == (True, 5, True)
    assert (s.semantic.enabled, s.semantic.threshold, s.semantic.embedder) == (True, 0.8, "builtin")
    assert CacheConfig().for_alias(None).enabled is False

    for bad, msg in (
        ({"cache": {"backend": "memcached"}}, "cache.backend"),
        ({"cache": {"ttl": 5}}, "cache.ttl: unknown key"),
        ({"cache": {"backend": "redis"}}, "cache.backend: 'redis' needs a redis block"),
        ({"cache": {"semantic": {"embedder": "nope"}}}, "cache.semantic.embedder"),
        ({"cache": {"semantic": {"threshold": 1.5}}}, "cache.semantic.threshold"),
    ):
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
            load_config({**config(fake_openai), **bad})
    bad_alias = config(fake_openai, alias_cache={"enabled": True, "semantic": {"embedder": "missing"}})
    with pytest.raises(ConfigError, match=r"models\.chat\.cache\.semantic\.embedder"):
        load_config(bad_alias)
    with pytest.raises(ConfigError, match=r"models\.chat\.cache\.ttl_s"):
        load_config(config(fake_openai, alias_cache={"ttl_s": 0}))


# ---- backends -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


async def test_memory_backend_is_an_lru_bounded_by_entries_bytes_and_ttl() -> None:
    clock = Clock()
    m = MemoryBackend(max_entries=3, max_bytes=100, clock=clock)
    for k in "abc":
        await m.set(k, b"x" * 10, ttl_s=60)
    assert await m.get("a") == b"x" * 10  # a is now the most recent
    await m.set("d", b"y" * 10, ttl_s=60)
    assert await m.get("b") is None and await m.get("a") is not None  # b was least recently used
    assert m.stats()["entries"] == 3 and m.evictions == 1
    await m.set("big", b"z" * 80, ttl_s=60)  # 3 entries of 10 + 80 > 100 bytes: the oldest go
    assert m.bytes <= 100 and await m.get("big") is not None
    await m.set("huge", b"z" * 101, ttl_s=60)  # larger than the whole cache: not stored
    assert await m.get("huge") is None
    clock.t += 61
    for k in ("a", "d", "big"):
        assert await m.get(k) is None  # expired (removed as they are found)
    assert m.bytes == 0 and m.stats()["entries"] == 0 and m.expirations >= 1
    # vectors live with their entry
    await m.set("e", b"1", ttl_s=10, context="ctx")
    await m.add_vector("ctx", "e", b"vec", ttl_s=10, limit=5)
    await m.add_vector("ctx", "unknown", b"vec", ttl_s=10, limit=5)  # no entry: ignored
    assert [k for k, _ in await m.vectors("ctx")] == ["e"]
    await m.delete("e", "ctx")
    assert await m.vectors("ctx") == [] and m.bytes == 0


async def test_sqlite_backend_ttl_trim_and_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shipyard.cache.sqlite as sq

    monkeypatch.setattr(sq, "TRIM_EVERY", 5)
    clock = Clock()
    b = SQLiteBackend(str(tmp_path / "c.db"), max_entries=3, clock=clock)
    await b.start()
    await b.set("k", b"v1", ttl_s=10, context="ctx")
    await b.set("k", b"v2", ttl_s=10, context="ctx")
    assert await b.get("k") == b"v2"
    await b.add_vector("ctx", "k", b"rec", ttl_s=10, limit=2)
    for i in range(3):
        await b.set(f"o{i}", b"x", ttl_s=10, context="ctx")
        await b.add_vector("ctx", f"o{i}", b"rec", ttl_s=10, limit=2)
    assert len(await b.vectors("ctx")) == 2  # at most `limit` per context, the oldest dropped
    clock.t += 11
    assert await b.get("k") is None and await b.vectors("ctx") == []
    for i in range(5):
        await b.set(f"n{i}", b"x", ttl_s=10)  # the 5th write trims: expired rows go, then the oldest
    with __import__("sqlite3").connect(tmp_path / "c.db") as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM cache_entries").fetchone()
    assert n == 3
    assert await b.get("n4") == b"x" and await b.get("n0") is None
    await b.close()
    b2 = SQLiteBackend(str(tmp_path / "c.db"), max_entries=3, clock=clock)  # survives a restart
    assert await b2.get("n4") == b"x"
    await b2.close()


async def test_a_broken_backend_is_a_miss_not_an_error(fake_openai, tmp_path: Path) -> None:
    from shipyard.engine import Engine

    class Broken(MemoryBackend):
        async def get(self, key: str) -> bytes | None:
            raise OSError("disk on fire")

        async def set(self, *a: Any, **kw: Any) -> None:
            raise OSError("disk on fire")

    engine = Engine({**config(fake_openai), "store": "none"})
    engine.cache.backend = Broken(10, 10_000)
    await engine.start()
    try:
        from shipyard.types import parse_chat_request

        for _ in range(2):
            span = engine.new_span("llm", "chat")
            resp = await engine.complete(parse_chat_request({"model": "chat", "messages": Q, "temperature": 0}), span)
            assert resp["choices"][0]["message"]["content"]
            assert span.attributes["cache"] == "miss"
        await engine.cache.flush()
        assert engine.cache.counts["errors"] >= 3 and chat_calls(fake_openai) == 2
    finally:
        await engine.close()


def test_cache_answers_quicker_than_upstream(serve, fake_openai):
    """Not a timing assertion on absolute numbers: a hit never waits for a slow upstream."""
    server = serve(config(fake_openai))
    client = client_for(server)
    ask(client)
    flush_cache(server)
    fake_openai.fail_next(Fault("delay", seconds=3), times=5)
    t0 = time.monotonic()
    assert ask(client).headers["x-shipyard-cache"] == "hit"
    assert time.monotonic() - t0 < 2.5


def test_raw_http_headers(serve, fake_openai):
    server = serve(config(fake_openai))
    body = {"model": "chat", "messages": Q, "temperature": 0}
    r1 = httpx.post(server.base_url + "/chat/completions", json=body)
    flush_cache(server)
    r2 = httpx.post(server.base_url + "/chat/completions", json=body)
    assert (r1.headers["x-shipyard-cache"], r2.headers["x-shipyard-cache"]) == ("miss", "hit")
    assert json.loads(r2.content)["choices"] == json.loads(r1.content)["choices"]
