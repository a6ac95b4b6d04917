"""What only the ClickHouse store does, its SQL run for real on chDB (ClickHouse embedded
in-process, through clickhouse-connect's chDB backend: the same client API and SQL as over
HTTP): table engines, sorting keys and TTL, merged aggregate states, URLs, the companion SQL
store, the gateway and server recording into it.

Everything it shares with the SQL stores (spans, summaries, filters, search, cursors, the
dashboard, retention, concurrency) is in the suite every store runs,
tests/test_store_conformance.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from test_store_conformance import DAY, NEEDS_CHDB, dump, ids, span

from shipyard.errors import ConfigError
from shipyard.store import StoreUnavailable, TraceFilter, open_store
from shipyard.store.clickhouse import ClickHouseStore, parse_url
from shipyard.tracing.span import new_trace_id


@pytest.fixture
def db_name() -> Iterator[str]:
    pytest.importorskip("chdb", reason=NEEDS_CHDB)
    pytest.importorskip("clickhouse_connect", reason=NEEDS_CHDB)
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    s = ClickHouseStore(f"chdb://memory?database={name}")
    s._cmd(f"DROP DATABASE IF EXISTS {name}")
    s.close()


@pytest.fixture
def store(db_name: str) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore(f"chdb://memory?database={db_name}")
    yield s
    s.close()


# ---- schema -------------------------------------------------------------------------


def test_tables_engines_order_and_ttl(store: ClickHouseStore) -> None:
    rows = store._q("SELECT name, engine, sorting_key, create_table_query FROM system.tables "
                    "WHERE database = {db:String} ORDER BY name", {"db": store.db})
    by = {r[0]: r for r in rows}
    assert by["spans"][1] == "MergeTree" and by["spans"][2] == "start_time, trace_id"
    assert by["trace_summaries"][1] == "AggregatingMergeTree" and by["trace_summaries"][2] == "day, trace_id"
    assert by["llm_rollup_1m"][1] == "AggregatingMergeTree"
    assert by["trace_summaries_mv"][1] == by["llm_rollup_1m_mv"][1] == "MaterializedView"
    for t in ("spans", "trace_summaries", "llm_rollup_1m"):
        assert "TTL" in by[t][3] and "toIntervalDay(90)" in by[t][3], t


def test_migrate_is_idempotent_and_follows_ttl_days(db_name: str) -> None:
    keeper = ClickHouseStore(f"chdb://memory?database={db_name}")  # chDB's in-memory data lives while a client does
    s1 = ClickHouseStore(f"chdb://memory?database={db_name}")
    sp = span(alias="chat")
    s1.write_spans([sp], dump)
    assert s1.migrate() == []
    s1.close()
    s2 = ClickHouseStore(f"chdb://memory?database={db_name}&ttl_days=7")  # reopen: data kept, TTL changed
    assert s2.get_trace(sp.trace_id)["span_count"] == 1

    def create(table: str) -> str:
        return keeper._q("SELECT create_table_query FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                     {"d": db_name, "t": table})[0][0]

    assert "toIntervalDay(7)" in create("spans") and "toIntervalDay(7)" in create("llm_rollup_1m")
    s2.close()
    s3 = ClickHouseStore(f"chdb://memory?database={db_name}&ttl_days=0")
    assert " TTL " not in create("spans")
    s3.close()
    keeper.close()


def test_ttl_retires_old_rows(store: ClickHouseStore) -> None:
    old = span(start=time.time() - 200 * DAY, kind="llm", model="m")
    recent = span(kind="llm", model="m")
    store.write_spans([old, recent], dump)
    for t in ("spans", "trace_summaries", "llm_rollup_1m"):
        store._cmd(f"OPTIMIZE TABLE {store.db}.{t} FINAL")  # a merge applies the TTL
    assert store._q(f"SELECT count() FROM {store.db}.spans")[0][0] == 1
    assert ids(store, start=time.time() - 365 * DAY) == [recent.trace_id]


# ---- aggregate states --------------------------------------------------------------


def test_merged_summary_states_read_the_same(store: ClickHouseStore) -> None:
    tid = new_trace_id()
    t0 = time.time() - 100
    store.write_spans([span(tid, start=t0 + 8, dur=1, cost_usd=0.5)], dump)
    store.write_spans([span(tid, start=t0 + 4, dur=3, status="error", error="x", cost_usd=None),
                       span(tid, start=t0 + 1, dur=2, cost_usd=0.25)], dump)
    store.write_spans([span(tid, start=t0, dur=10, name="root", kind="chain")], dump)
    before = store.get_trace(tid)
    store._cmd(f"OPTIMIZE TABLE {store.db}.trace_summaries FINAL")  # one merged state per trace
    after = store.get_trace(tid)
    assert {k: v for k, v in after.items() if k != "spans"} == {k: v for k, v in before.items() if k != "spans"}
    assert after["span_count"] == 4 and after["name"] == "root" and after["status"] == "error"
    assert after["cost_usd"] == pytest.approx(0.75)
    store.write_spans([span(tid, start=t0 + 9)], dump)
    assert store.get_trace(tid)["span_count"] == 5


def test_nul_characters_are_kept_in_names(store: ClickHouseStore) -> None:
    sp = span(name="odd\x00name", error="e\x00", status="error")
    store.write_spans([sp], dump)
    assert store.get_trace(sp.trace_id)["spans"][0]["name"] == "odd\x00name"  # PostgreSQL cannot


# ---- URLs, config, the gateway ------------------------------------------------------------


def test_parse_url() -> None:
    o = parse_url("clickhouse://u%40x:p%2Fw@ch.internal:8123/traces?ttl_days=30&async_insert=1")
    assert (o["host"], o["port"], o["secure"], o["username"], o["password"], o["database"]) == (
        "ch.internal", 8123, False, "u@x", "p/w", "traces")
    assert o["ttl_days"] == 30 and o["settings"] == {"async_insert": "1"}
    assert o["meta"] == "sqlite:///shipyard.db"  # the companion SQL store, by default
    o = parse_url("clickhouses://ch.example.com?meta=postgresql%3A%2F%2Fu%3Ap%40pg%3A5432%2Fshipyard")
    assert (o["port"], o["secure"], o["database"], o["username"], o["ttl_days"]) == (8443, True, "default",
                                                                                     "default", 90)
    assert o["meta"] == "postgresql://u:p@pg:5432/shipyard"
    for bad, msg in (("clickhouse://:8123/db", "needs a host"), ("clickhouse://h:99999/db", "bad port"),
                     ("clickhouse://h/bad-name", "database name"), ("clickhouse://h/db?ttl_days=x", "ttl_days"),
                     ("clickhouse://h/db?bad%20name=1", "setting name"),
                     ("clickhouse://h/db?meta=none", "meta must be")):
        with pytest.raises(ValueError, match=msg):
            parse_url(bad)


def test_config_accepts_clickhouse_urls_and_names_errors() -> None:
    from shipyard.config import load_config

    assert load_config({"store": "clickhouse://u:p@h:8123/db"}).store.startswith("clickhouse://")
    with pytest.raises(ConfigError, match="store: .*needs a host"):
        load_config({"store": "clickhouse:///db"})


def test_an_unreachable_server_fails_at_start_without_the_password() -> None:
    from services import free_port

    pytest.importorskip("clickhouse_connect", reason="needs the clickhouse extra: pip install -e '.[clickhouse]'")

    with pytest.raises(StoreUnavailable) as ei:
        open_store(f"clickhouse://shipyard:s3cret-pw@127.0.0.1:{free_port()}/db")
    assert "cannot connect to ClickHouse" in str(ei.value) and "s3cret-pw" not in str(ei.value)


def test_features_that_need_a_sql_store_say_so(store: ClickHouseStore) -> None:
    from shipyard.releases.store import RegistryUnavailable, ReleaseStore

    with pytest.raises(RegistryUnavailable, match="needs a SQL store"):
        ReleaseStore(store)


def test_the_gateway_records_into_clickhouse(store: ClickHouseStore, fake_openai) -> None:
    from shipyard import Gateway

    cfg = {"providers": {"p": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-x"}},
           "models": {"chat": {"targets": [{"provider": "p", "model": "gpt-4o-mini-2024-07-18"}]}},
           "prices": {"gpt-4o-mini-2024-07-18": {"input": 0.15, "output": 0.6}}}
    with Gateway(cfg, store=store) as gw:
        resp = gw.chat(model="chat", messages=[{"role": "user", "content": "hello clickhouse"}], user="ada")
        assert gw.engine.recorder.flush()
        rows, _ = store.list_traces(TraceFilter(user_id="ada", q="clickhouse"))
        (row,) = rows
        t = store.get_trace(row["trace_id"])
        (s,) = t["spans"]
        assert s["completion_id"] == resp.id and s["alias"] == "chat" and s["cost_usd"] > 0
        assert store.find_span_by_completion(resp.id)["trace_id"] == row["trace_id"]
        (d,) = store.dashboard(s["start_time"] - 60, s["start_time"] + 60, 60)
        assert d["requests"] == 1 and d["model"] == s["response_model"]


def test_serve_with_clickhouse_traces_and_a_companion_sql_store(db_name: str, fake_openai, tmp_path) -> None:
    """The whole server on a ClickHouse store: calls are recorded in ClickHouse and read back
    by the API; relational features (here the prompt registry) use the companion store."""
    from starlette.testclient import TestClient

    from shipyard.engine import Engine
    from shipyard.server.app import create_app

    store = ClickHouseStore(f"chdb://memory?database={db_name}&meta=sqlite:///{tmp_path}/meta.db")
    assert hasattr(store, "_write") and store.dialect.name == "sqlite"
    cfg = {"store": "none", "releases": {"admin_token": "admin-token-for-tests"},
           "providers": {"p": {"type": "openai", "base_url": fake_openai.base_url, "api_key": "sk-x"}},
           "models": {"chat": {"targets": [{"provider": "p", "model": "gpt-4o-mini-2024-07-18"}]}}}
    engine = Engine(cfg, store=store)
    with TestClient(create_app(engine)) as client:
        r = client.post("/v1/chat/completions", json={"model": "chat", "user": "ada",
                                                      "messages": [{"role": "user", "content": "hi from the api"}]})
        assert r.status_code == 200
        trace_id = r.headers["x-shipyard-trace-id"]
        assert engine.recorder.flush()
        got = client.get("/api/traces", params={"user": "ada", "q": "api"})
        assert got.status_code == 200, got.text
        listed = got.json()["data"]
        assert [t["trace_id"] for t in listed] == [trace_id]
        detail = client.get(f"/api/traces/{trace_id}").json()
        assert detail["spans"][0]["completion_id"] == r.json()["id"]
        assert client.get("/api/dashboard").json()["data"]
        assert client.get("/ready").json()["store"] is True
        created = client.post("/api/prompts", json={"name": "greet", "model": "chat", "messages": [{"role": "system",
                                                                                     "content": "Hi {{name}}"}]},
                              headers={"Authorization": "Bearer admin-token-for-tests"})
        assert created.status_code in (200, 201), created.text
        assert store._q(f"SELECT count() FROM {db_name}.spans")[0][0] >= 1  # the spans are in ClickHouse
        with store._read() as cur:  # and the prompt in the companion
            cur.execute("SELECT COUNT(*) FROM prompt_versions")
            assert cur.fetchone()[0] == 1
