"""Trace store benchmark: ingest, trace-list pages (plain, filtered, free text), dashboard.

Ingests N llm spans (default 1,000,000; ~1 KB of JSON input and ~1 KB of output each, 20
models, 2,000 users, 20,000 sessions, 1-3 spans per trace, spread over the last 7 days in
arrival order) into SQLite and into PostgreSQL (a throwaway server started the way the tests
start theirs, tests/services.py), then times the queries the UI and API make. Prints a
table and writes the "## trace_store" section of bench/RESULTS.md.

Targets (from the issue): ingest >= 5,000 spans/s batched; first trace-list page < 300 ms
(also filtered and with q); a 7-day dashboard < 1 s. A benchmark, not a test: it reports
misses, it never fails on them.

Usage:
    python bench/trace_store/run.py [--spans 1000000] [--backends sqlite,postgres] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

import shipyard.store.postgres  # noqa: E402,F401  (loaded now: edits made during a long run cannot mix in)
import shipyard.store.sqlite  # noqa: E402,F401
from shipyard.store import TraceFilter, open_store  # noqa: E402
from shipyard.tracing.span import Span  # noqa: E402

DAY = 86400.0
WINDOW = 7 * DAY
BATCH = 500  # the recorder's default batch size
CHUNK = 50_000  # spans generated ahead of the clock (see ingest)
MODELS = [
    "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06", "gpt-4.1-mini-2025-04-14", "gpt-4.1-2025-04-14",
    "o4-mini-2025-04-16", "claude-3-5-haiku-20241022", "claude-sonnet-4-20250514", "claude-opus-4-20250514",
    "gemini-2.0-flash-001", "gemini-2.5-pro", "llama-3.1-8b-instruct", "llama-3.3-70b-instruct",
    "mistral-small-2501", "mistral-large-2411", "qwen2.5-72b-instruct", "deepseek-v3",
    "command-r-plus-08-2024", "phi-4", "gemma-3-27b-it", "gemma-3-270m-q4_k_m",
]
PRICED = {m: ((i % 7) * 0.15 + 0.1, (i % 5) * 0.6 + 0.4) for i, m in enumerate(MODELS) if i % 10 != 9}
ALIASES = ["chat", "summarize", "classify", "extract", "agent"]
COMMON = ("the of and to a in is it you that for on with as this be are your can not please order "
          "account refund policy shipping delivery customer support help thanks question issue "
          "product price return window days payment card invoice update status").split()


# ---- data --------------------------------------------------------------------------------


class Corpus:
    """Realistic-looking text: a Zipf-distributed vocabulary of common words and invented
    ones, pre-built into paragraphs so generation stays cheap next to the store."""

    def __init__(self, rng: random.Random) -> None:
        syll = ["ka", "lo", "ri", "mu", "te", "sa", "no", "vi", "de", "po", "ra", "zu", "me", "ti", "go", "ba"]
        vocab = list(COMMON)
        while len(vocab) < 8000:
            vocab.append("".join(rng.choice(syll) for _ in range(rng.randint(2, 4))))
        weights = [1 / (i + 1) ** 1.05 for i in range(len(vocab))]
        self.paragraphs = []
        for _ in range(4000):
            words = rng.choices(vocab, weights, k=rng.randint(100, 140))
            self.paragraphs.append(" ".join(words).capitalize() + ".")
        self.vocab = vocab


def spans(n: int, now: float, seed: int = 7) -> Iterator[Span]:
    """n llm spans in arrival order over the 7 days before ``now``."""
    rng = random.Random(seed)
    corpus = Corpus(rng)
    system = "You are a helpful support assistant for an online shop. Answer briefly and politely. " * 2
    users = [f"user-{i:05d}" for i in range(2000)]
    sessions = [f"sess-{i:06d}" for i in range(20000)]
    step = WINDOW / n
    i = 0
    while i < n:
        trace_id = rng.getrandbits(128).to_bytes(16, "big").hex()
        user = rng.choice(users)
        session = rng.choice(sessions)
        alias = rng.choice(ALIASES)
        parts = min(n - i, rng.choices((1, 2, 3), (0.6, 0.3, 0.1))[0])
        parent = None
        for _ in range(parts):
            start = now - WINDOW + i * step + rng.random() * step
            model = MODELS[min(int(rng.paretovariate(1.2)) - 1, len(MODELS) - 1)]
            dur = min(rng.lognormvariate(-0.3, 0.7), 120.0)
            tin, tout = rng.randint(150, 900), rng.randint(30, 500)
            price = PRICED.get(model)
            cost = None if price is None else (tin * price[0] + tout * price[1]) / 1e6
            error = rng.random() < 0.02
            ticket = f"ticket {rng.randint(100000, 999999)}"
            user_text = rng.choice(corpus.paragraphs) + f" My {ticket}. " + rng.choice(corpus.paragraphs)[:250]
            answer = rng.choice(corpus.paragraphs) + " " + rng.choice(corpus.paragraphs)[:300]
            span_id = rng.getrandbits(64).to_bytes(8, "big").hex()
            s = Span(trace_id=trace_id, span_id=span_id, name=f"chat {alias}", kind="llm", parent_id=parent,
                     start_time=start, end_time=start + dur, alias=alias, provider="primary",
                     model=model, response_model=model, user_id=user, session_id=session,
                     input_tokens=tin, output_tokens=tout, cost_usd=cost)
            s.input = {"model": alias, "messages": [{"role": "system", "content": system},
                                                    {"role": "user", "content": user_text}],
                       "temperature": 0.7, "user": user}
            if error:
                s.status, s.error = "error", "upstream 503: service unavailable (after 3 attempts)"
                s.output = None
            else:
                s.output = {"id": f"chatcmpl-{span_id}", "object": "chat.completion", "model": model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": answer}}],
                            "usage": {"prompt_tokens": tin, "completion_tokens": tout}}
                s.completion_id = f"chatcmpl-{span_id}"
            s.attributes = {"attempts": [{"provider": "primary", "model": model, "outcome": "error" if error else "ok"}]}
            parent = parent or span_id
            yield s
            i += 1


def dump(v: Any) -> str | None:
    return None if v is None else orjson.dumps(v).decode()


# ---- measuring ---------------------------------------------------------------------------


def server_cpu(server: Any) -> float:
    """CPU seconds used so far by every process of a PostgreSQL server we started."""
    if server is None:
        return 0.0
    pid_file = server.datadir / "data" / "postmaster.pid"
    root = int(pid_file.read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == root or ppid == root:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def ingest(store: Any, n: int, now: float, progress: bool, server: Any = None) -> dict[str, Any]:
    """Spans are generated CHUNK at a time outside the clock, then written in batches on the
    clock; a store that indexes in the background (SQLite) is waited for at the end of each
    chunk, inside the clock, so work left to its threads is never counted as free."""
    busy = 0.0
    cpu = 0.0
    written = 0
    t_start = time.perf_counter()
    last = t_start
    srv0 = server_cpu(server)
    load0 = os.getloadavg()[0]
    settle = getattr(store, "wait_for_search_index", None)
    source = spans(n, now)
    while True:
        chunk = [s for _, s in zip(range(CHUNK), source)]
        if not chunk:
            break
        gc.collect()
        gc.freeze()  # the chunk held here is not the store's: Python's GC skips it
        c0, t0 = time.process_time(), time.perf_counter()
        for k in range(0, len(chunk), BATCH):
            store.write_spans(chunk[k:k + BATCH], dump)
        if settle is not None:
            settle()
        busy += time.perf_counter() - t0
        cpu += time.process_time() - c0
        written += len(chunk)
        del chunk
        gc.unfreeze()
        if progress and time.perf_counter() - last > 30:
            last = time.perf_counter()
            print(f"  … {written:,} spans, {written / busy:,.0f}/s in write_spans "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    srv = server_cpu(server) - srv0
    return {"spans": written, "write_s": busy, "wall_s": time.perf_counter() - t_start,
            "spans_per_s": written / busy if busy else 0.0,
            "client_cpu_us": cpu / written * 1e6, "server_cpu_us": srv / written * 1e6,
            "load": (load0, os.getloadavg()[0])}


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[float, float, Any]:
    """(first call ms, median of the following calls ms, last result)."""
    t0 = time.perf_counter()
    result = fn()
    first = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return first, statistics.median(times), result


def queries(store: Any, now: float, probe: dict[str, Any]) -> list[tuple[str, str, float, float, str]]:
    """(name, target, first ms, median ms, note) per query."""
    out = []

    # the 7 days of the data, given explicitly: the default window moves with the clock, and
    # the second backend is queried many minutes after the first
    window = {"start": now - WINDOW, "end": now + 60}

    def page(**kw: Any) -> Callable[[], Any]:
        return lambda: store.list_traces(TraceFilter(limit=50, **window, **kw))

    cases: list[tuple[str, str, Callable[[], Any]]] = [
        ("list: first page (7 days)", "< 300 ms", page()),
        ("list: user_id", "< 300 ms", page(user_id="user-00042")),
        ("list: model + status=error", "< 300 ms", page(model=MODELS[3], status="error")),
        ("list: min_cost (top ~1%)", "< 300 ms", page(min_cost=probe["cost_p99"])),
        ("list: min_latency_ms (top ~0.1%)", "< 300 ms", page(min_latency_ms=probe["lat_p999"])),
        ("list: q common word", "< 300 ms", page(q="refund")),
        ("list: q two words", "< 300 ms", page(q="shipping invoice")),
        ("list: q rare word (~0.5%)", "< 300 ms", page(q=probe["mid_word"])),
        ("list: q ticket number (1 span)", "< 300 ms", page(q=probe["ticket"])),
        ("list: q no match", "< 300 ms", page(q="zzzqqqxxx")),
        ("list: q + user_id", "< 300 ms", page(q="refund", user_id="user-00042")),
    ]
    for name, target, fn in cases:
        first, med, (rows, _) = timed(fn)
        out.append((name, target, first, med, f"{len(rows)} rows"))
    # a page deep in the window, through cursors
    def deep() -> int:
        rows, cursor = store.list_traces(TraceFilter(limit=500, **window))
        seen = len(rows)
        for _ in range(9):
            if cursor is None:
                break
            rows, cursor = store.list_traces(TraceFilter(limit=500, cursor=cursor, **window))
            seen += len(rows)
        return seen
    first, med, seen = timed(deep, repeat=2)
    out.append(("list: 10 pages of 500 via cursor", "–", first, med, f"{seen:,} traces"))
    tid = probe["trace_id"]
    first, med, _ = timed(lambda: store.get_trace(tid))
    out.append(("get_trace", "–", first, med, ""))
    for bucket, label in ((3600, "1 h buckets"), (300, "5 min buckets"), (60, "1 min buckets")):
        first, med, rows = timed(lambda b=bucket: store.dashboard(now - WINDOW, now, b))
        out.append((f"dashboard 7 days, {label}", "< 1 s", first, med, f"{len(rows):,} rows"))
    return out


def probe_values(n: int, now: float) -> dict[str, Any]:
    """Thresholds and search words taken from the generated data itself."""
    costs, lats = [], []
    count: dict[str, int] = {}
    ticket = None
    trace_id = None
    word = re.compile(r"[a-z]+")
    for k, s in enumerate(spans(min(n, 20000), now)):
        if s.cost_usd is not None:
            costs.append(s.cost_usd)
        lats.append(s.duration_ms)
        for w in set(word.findall(s.input["messages"][1]["content"].lower())):
            count[w] = count.get(w, 0) + 1
        if k == 1234 % max(1, min(n, 20000)):
            ticket = s.input["messages"][1]["content"].split("ticket ")[1].split(".")[0]
            trace_id = s.trace_id
    costs.sort()
    lats.sort()
    sampled = min(n, 20000)
    mid = min(count, key=lambda w: abs(count[w] / sampled - 0.005))
    return {"cost_p99": costs[int(len(costs) * 0.99)], "lat_p999": lats[int(len(lats) * 0.999)],
            "mid_word": mid, "ticket": ticket, "trace_id": trace_id}


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_backend(name: str, n: int, now: float, workdir: Path, probe: dict[str, Any], progress: bool) -> dict[str, Any]:
    server = None
    if name == "sqlite":
        url = f"sqlite:///{workdir}/bench.db?cache_mb=192"  # bulk ingest: a big page cache
    else:
        from services import PostgresServer

        server = PostgresServer(fsync=True, settings={
            "shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "30min",
            "work_mem": "64MB", "maintenance_work_mem": "512MB",
        }).start()
        url = server.url
    try:
        store = open_store(url)
        print(f"[{name}] ingesting {n:,} spans …", flush=True)
        ing = ingest(store, n, now, progress, server)
        print(f"[{name}] {ing['spans_per_s']:,.0f} spans/s ({ing['write_s']:.1f} s in write_spans, "
              f"{ing['wall_s']:.1f} s wall); CPU per span: {ing['client_cpu_us']:.0f} µs in Python + "
              f"{ing['server_cpu_us']:.0f} µs in the server; load {ing['load'][0]:.1f} → {ing['load'][1]:.1f}",
              flush=True)
        if name == "postgres":  # what autovacuum would have done by the time anyone looks
            with store._write() as cur:
                cur.execute("ANALYZE")
        else:
            store.close()  # runs PRAGMA optimize, as a long-running server does on shutdown
            store = open_store(url)
        gc.collect()
        rows = queries(store, now, probe)
        store.close()
        if name == "sqlite":
            size = size_of(workdir)
        else:
            size = size_of(server.datadir / "data" / "base")
        return {"backend": name, "ingest": ing, "queries": rows, "disk_bytes": size}
    finally:
        if server is not None:
            server.stop()


# ---- report ------------------------------------------------------------------------------


def verdict(target: str, ms: float) -> str:
    m = re.match(r"< (\d+) (ms|s)", target)
    if not m:
        return ""
    limit = float(m.group(1)) * (1000 if m.group(2) == "s" else 1)
    return "ok" if ms < limit else "MISS"


def table(results: list[dict[str, Any]]) -> str:
    names = [r["backend"] for r in results]
    head = "| measure | target | " + " | ".join(f"{b} first | {b} median" for b in names) + " | notes |"
    sep = "|---|---|" + "---:|---:|" * len(names) + "---|"
    lines = [head, sep]
    ing = "| ingest, spans/s (batches of 500) | ≥ 5,000 | " + " | ".join(
        f"{r['ingest']['spans_per_s']:,.0f} {'ok' if r['ingest']['spans_per_s'] >= 5000 else 'MISS'} | "
        f"({r['ingest']['write_s']:.0f} s)" for r in results) + " | time inside write_spans |"
    lines.append(ing)
    cpu = "| ingest CPU per span (store process + DB server) | – | " + " | ".join(
        f"{r['ingest']['client_cpu_us']:.0f} + {r['ingest']['server_cpu_us']:.0f} µs | "
        f"≙ {1e6 / (r['ingest']['client_cpu_us'] + r['ingest']['server_cpu_us']):,.0f}/s on one core"
        for r in results) + " | machine load average " + ", ".join(
        f"{r['backend']} {r['ingest']['load'][0]:.1f}→{r['ingest']['load'][1]:.1f}" for r in results) + " |"
    lines.append(cpu)
    size = "| disk size | – | " + " | ".join(f"{r['disk_bytes'] / 2**30:.2f} GiB | " for r in results) + " | |"
    lines.append(size)
    for k, (name, target, *_rest) in enumerate(results[0]["queries"]):
        cells = []
        notes = []
        for r in results:
            _, _, first, med, note = r["queries"][k]
            v = verdict(target, med)
            cells.append(f"{first:,.1f} ms | {med:,.1f} ms{(' ' + v) if v else ''}")
            if note:
                notes.append(f"{r['backend']}: {note}")
        lines.append(f"| {name} | {target} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    return "\n".join(lines)


def machine_note() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlite3

    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def write_results(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts under bench/; see bench/README.md.\n"
    pattern = re.compile(r"^## trace_store\b.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section.rstrip() + "\n\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text.rstrip() + "\n")


def section(results: list[dict[str, Any]], n: int, backends: str) -> str:
    cmd = "python bench/trace_store/run.py" + (f" --spans {n}" if n != 1_000_000 else "")
    if backends != "sqlite,postgres":
        cmd += f" --backends {backends}"
    return (
        f"## trace_store\n\n"
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · `{cmd}` · {machine_note()}\n\n"
        f"{n:,} llm spans (~1 KB JSON input + ~1 KB output each; 20 models, 2,000 users, "
        "20,000 sessions, 1-3 spans per trace, 2% errors) over 7 days, written in arrival order in "
        "batches of 500 (the recorder's default), each batch one transaction that also feeds the search "
        "index, the trace summaries and the rollups. Query times: the first call, then the median of "
        "the next 5; pages are 50 traces. PostgreSQL 15: its own server on the same 2 cores "
        "(fsync on, shared_buffers 1GB), ANALYZE after loading. SQLite: WAL, synchronous=NORMAL, "
        "reopened after loading (PRAGMA optimize). The machine is shared: the load average during "
        "ingest is in the CPU row; wall-clock rates fall with it, CPU per span much less.\n\n"
        f"{table(results)}\n"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--workdir", help="where the SQLite file goes (default: a temp dir, removed)")
    ap.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--json", help="also write the raw figures here (after each backend)")
    ap.add_argument("--previous", help="raw figures of an earlier run (--json) to report beside "
                                       "this run's, for the backends not run now")
    args = ap.parse_args()

    now = time.time()
    probe = probe_values(args.spans, now)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    earlier = []
    if args.previous:
        earlier = [r for r in json.loads(Path(args.previous).read_text()) if r["backend"] not in names]
    results: list[dict[str, Any]] = []
    for name in names:
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            results.append(run_backend(name, args.spans, now, workdir, probe, progress=True))
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        shown = earlier + results
        print()
        print(table(shown), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(shown, indent=1, default=str))
        if not args.no_write:  # after each backend, so a later failure loses nothing
            write_results(Path(args.out), section(shown, args.spans, ",".join(r["backend"] for r in shown)))
            print(f"\nwrote the trace_store section of {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
