"""Soak: 50 concurrent clients against two `shipyard serve` replicas for 10 minutes, with
virtual keys, rate limits and budgets (Redis), the response cache (Redis) and recording
(PostgreSQL) all on. Reports errors (target 0), RSS growth after warm-up (target < 10%),
and the latency the gateway adds over calling the upstream directly (p50/p99).

    python bench/soak/run.py                       # 10 minutes (+ ~1 min of set-up and baseline)
    python bench/soak/run.py --duration 120 --warmup 30 --no-write

What runs, every process on this machine's loopback:
- the mock upstream of bench/gateway_overhead (fixed chat completion with usage, its own
  process, ``--upstream-delay-ms`` of simulated model latency);
- redis-server and PostgreSQL, started like the test suite's (tests/services.py: a
  throwaway data dir, a free port; PostgreSQL with fsync off);
- two replicas (`python -m shipyard.cli serve`), one config: store PostgreSQL, redis,
  auth, cache ``backend: redis``; ``--keys`` keys, each with rpm/tpm/USD budgets set high
  enough never to refuse (so every request is checked, reserved and settled in Redis);
- the load: ``--clients`` asyncio clients (aiohttp, one process), each alternating between
  the replicas, sending a request, waiting for the answer, then thinking ``--think-ms``.
  Of the requests, ``--cacheable`` are temperature 0 from a pool of 50 prompts (cache hits
  after the first), ``--stream`` are streamed, the rest are unique (cache misses).

First a baseline: the same clients against the mock directly for ``--baseline`` seconds.
Added latency = gateway percentile minus direct percentile. RSS (VmRSS of each replica)
is sampled every 5 s; growth = last sample vs the first sample after ``--warmup``.
The "## soak" section of bench/RESULTS.md is replaced (others are left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from services import PostgresServer, RedisServer, free_port  # noqa: E402

ADMIN = "soak-admin-key-" + uuid.uuid4().hex
MODEL = "gpt-4o-mini-2024-07-18"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, logfile: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}:\n{logfile.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{logfile.read_text()[-3000:]}")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        fh = open(logfile, "ab")
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=logfile.parent)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


# ---- load -----------------------------------------------------------------------------------

class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {"all": [], "hit": [], "miss": [], "stream": []}
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.by_status: dict[int, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


PROMPTS = [f"What is the capital of country number {i}? Answer in one word." for i in range(50)]


def body_for(rng: random.Random, args: argparse.Namespace, direct: bool) -> tuple[dict[str, Any], str]:
    r = rng.random()
    if r < args.cacheable:
        return ({"model": MODEL if direct else "chat", "temperature": 0,
                 "messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": 64}, "cacheable")
    stream = r < args.cacheable + args.stream
    body = {"model": MODEL if direct else "chat", "temperature": 0.7, "max_tokens": 64,
            "messages": [{"role": "user", "content": f"Tell me something new #{uuid.uuid4().hex}"}]}
    if stream:
        body["stream"] = True
    return body, "stream" if stream else "unique"


async def client(i: int, targets: list[str], keys: list[str], args: argparse.Namespace, stop_at: float,
                 stats: Stats, session: Any, direct: bool) -> None:
    rng = random.Random(i)
    key = keys[i % len(keys)]
    n = 0
    await asyncio.sleep(rng.random() * args.think_ms / 1000.0)  # spread the start
    while time.monotonic() < stop_at:
        base = targets[n % len(targets)]
        n += 1
        body, _kind = body_for(rng, args, direct)
        if direct and body.get("stream"):
            body.pop("stream")  # the mock streams too, but keep the baseline simple: same size of answer
        t0 = time.perf_counter()
        try:
            async with session.post(base + "/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {key}"}) as resp:
                data = await resp.read()
                ms = (time.perf_counter() - t0) * 1000.0
                stats.by_status[resp.status] = stats.by_status.get(resp.status, 0) + 1
                if resp.status != 200:
                    stats.error(f"http_{resp.status}: {data[:160].decode(errors='replace')}")
                elif body.get("stream") and b"[DONE]" not in data:
                    stats.error("stream without [DONE]")
                else:
                    stats.ok += 1
                    stats.lat["all"].append(ms)
                    if body.get("stream"):
                        stats.lat["stream"].append(ms)
                    elif resp.headers.get("x-shipyard-cache") == "hit":
                        stats.lat["hit"].append(ms)
                    else:
                        stats.lat["miss"].append(ms)
        except Exception as exc:
            stats.error(f"{type(exc).__name__}: {str(exc)[:120]}")
        await asyncio.sleep(args.think_ms / 1000.0)


async def run_load(targets: list[str], keys: list[str], args: argparse.Namespace, seconds: float, direct: bool,
                   on_tick: Any = None) -> Stats:
    import aiohttp

    stats = Stats()
    stop_at = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(i, targets, keys, args, stop_at, stats, session, direct))
                 for i in range(args.clients)]
        ticker = None
        if on_tick is not None:
            async def tick() -> None:
                while time.monotonic() < stop_at:
                    on_tick(stats)
                    await asyncio.sleep(5)
                on_tick(stats)
            ticker = asyncio.create_task(tick())
        await asyncio.gather(*tasks)
        if ticker is not None:
            await ticker
    return stats


# ---- set-up ------------------------------------------------------------------------------------

def start_everything(args: argparse.Namespace, work: Path, procs: Procs) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()}
    mock_port = free_port()
    mock = procs.start([sys.executable, str(ROOT / "bench/gateway_overhead/mock_upstream.py"), "--port",
                        str(mock_port), "--delay-ms", str(args.upstream_delay_ms)], work / "mock.log")
    wait_http(f"http://127.0.0.1:{mock_port}/health", mock, 30, work / "mock.log")
    log("starting redis-server and PostgreSQL")
    redis = RedisServer().start()
    pg = PostgresServer().start()
    config = {
        "store": pg.url,
        "providers": {"mock": {"type": "openai", "base_url": f"http://127.0.0.1:{mock_port}/v1", "api_key": "sk-x"}},
        "models": {"chat": {"targets": [{"provider": "mock", "model": MODEL}], "retries": 0}},
        "prices": {MODEL: {"input": 0.15, "output": 0.60}},
        "auth": {"admin_key": ADMIN},
        "redis": {"url": redis.url, "key_prefix": "soak"},
        "cache": {"enabled": True, "backend": "redis"},
    }
    import yaml

    cfg_path = work / "shipyard.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        p = procs.start([sys.executable, "-m", "shipyard.cli", "serve", "--config", str(cfg_path), "--port", str(port),
                         "--log-level", "warning"], work / f"replica-{name}.log", env=env)
        replicas.append({"name": name, "port": port, "proc": p, "url": f"http://127.0.0.1:{port}"})
    for r in replicas:
        wait_http(r["url"] + "/ready", r["proc"], 90, work / f"replica-{r['name']}.log")
    # keys: limits high enough never to refuse, so every request is checked and accounted
    import urllib.request

    keys = []
    for i in range(args.keys):
        req = urllib.request.Request(replicas[i % 2]["url"] + "/api/keys", method="POST",
                                     data=json.dumps({"name": f"soak-{i}", "team": f"team-{i % 3}",
                                                      "rpm": 1_000_000, "tpm": 1_000_000_000,
                                                      "usd_per_day": 100_000.0, "usd_per_month": 1_000_000.0}).encode(),
                                     headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            keys.append(json.loads(resp.read())["key"])
    return {"mock_port": mock_port, "redis": redis, "pg": pg, "replicas": replicas, "keys": keys}


def pg_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        spans = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
        traces = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
    return {"spans": int(spans), "traces": int(traces)}


def metric(url: str, name: str) -> dict[str, float]:
    import urllib.request

    out: dict[str, float] = {}
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
    return out


# ---- report ------------------------------------------------------------------------------------

def fmt(v: float | None, spec: str = ".1f", signed: bool = False) -> str:
    if v is None:
        return "–"
    return format(v, ("+" if signed else "") + spec)


def write_section(path: Path, text: str) -> None:
    content = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## soak\n.*?(?=^## |\Z)", re.S | re.M)
    block = text.rstrip() + "\n\n"
    if pattern.search(content):
        content = pattern.sub(lambda m: block, content, count=1)
    else:
        content = content.rstrip() + "\n\n" + block
    path.write_text(content.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load on the gateway (default 600)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS reference sample")
    ap.add_argument("--baseline", type=float, default=30.0, help="seconds of the direct-to-mock baseline")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--think-ms", type=float, default=200.0, help="pause between a client's requests")
    ap.add_argument("--upstream-delay-ms", type=float, default=20.0)
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--cacheable", type=float, default=0.3, help="share of temperature-0 requests from a small pool")
    ap.add_argument("--stream", type=float, default=0.1, help="share of streamed requests")
    ap.add_argument("--out", default=str(ROOT / "bench/RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    work = Path(tempfile.mkdtemp(prefix="shipyard-soak-"))
    procs = Procs()
    env: dict[str, Any] = {}
    started = dt.datetime.now(dt.timezone.utc)
    try:
        env = start_everything(args, work, procs)
        replicas = env["replicas"]
        log(f"baseline: {args.clients} clients direct to the mock for {args.baseline:.0f}s")
        base = asyncio.run(run_load([f"http://127.0.0.1:{env['mock_port']}/v1"], ["x"], args, args.baseline, True))
        log(f"baseline: {base.ok} ok, p50 {fmt(pct(base.lat['all'], 50), '.2f')} ms, "
            f"p99 {fmt(pct(base.lat['all'], 99), '.2f')} ms, errors {sum(base.errors.values())}")

        samples: list[dict[str, Any]] = []
        t_start = time.monotonic()
        cpu0 = {r["name"]: cpu_s(r["proc"].pid) for r in replicas}

        def tick(stats: Stats) -> None:
            t = time.monotonic() - t_start
            row = {"t": round(t, 1), "ok": stats.ok, "errors": sum(stats.errors.values()),
                   "load1": os.getloadavg()[0]}
            for r in replicas:
                row[r["name"]] = rss_mb(r["proc"].pid)
            samples.append(row)
            if len(samples) % 12 == 1:
                log(f"t={t:5.0f}s ok={stats.ok} errors={row['errors']} rss a={row['a']:.1f} MB b={row['b']:.1f} MB")

        log(f"soak: {args.clients} clients against 2 replicas for {args.duration:.0f}s")
        urls = [r["url"] + "/v1" for r in replicas]
        stats = asyncio.run(run_load(urls, env["keys"], args, args.duration, False, on_tick=tick))
        elapsed = time.monotonic() - t_start
        cpu = {r["name"]: cpu_s(r["proc"].pid) - cpu0[r["name"]] for r in replicas}
        time.sleep(1.0)  # recorder flush
        counts = pg_counts(env["pg"].url)
        decisions = {}
        for r in replicas:
            for k, v in metric(r["url"], "shipyard_access_decisions_total").items():
                decisions[k] = decisions.get(k, 0) + v
        dropped = sum(sum(metric(r["url"], "shipyard_recorder_dropped").values()) for r in replicas)
    finally:
        procs.stop_all()
        for k in ("redis", "pg"):
            if env.get(k) is not None:
                try:
                    env[k].close() if k == "redis" else env[k].stop()
                except Exception:
                    pass
        if not args.keep_tmp:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")

    # ---- figures
    warm = [s for s in samples if s["t"] >= args.warmup]
    rss: dict[str, dict[str, float | None]] = {}
    for name in ("a", "b"):
        ref = warm[0][name] if warm else None
        last = samples[-1][name] if samples else None
        peak = max((s[name] for s in samples if s[name] is not None), default=None)
        growth = None if not ref or last is None else (last - ref) / ref * 100.0
        rss[name] = {"after_warmup": ref, "end": last, "peak": peak, "growth_pct": growth}
    errors = sum(stats.errors.values())
    total = stats.ok + errors
    rps = total / elapsed if elapsed else 0
    lat = {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)} for k, v in stats.lat.items()}
    b50, b99 = pct(base.lat["all"], 50), pct(base.lat["all"], 99)
    loads = [s["load1"] for s in samples]
    load_mean = sum(loads) / len(loads) if loads else None
    hit_ratio = len(stats.lat["hit"]) / max(1, len(stats.lat["hit"]) + len(stats.lat["miss"]))
    result = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"), "duration_s": round(elapsed, 1), "args": vars(args),
        "requests": total, "ok": stats.ok, "errors": errors, "error_kinds": stats.errors, "by_status": stats.by_status,
        "rps": rps, "baseline": {"p50": b50, "p99": b99, "n": len(base.lat["all"]), "errors": sum(base.errors.values())},
        "latency": lat, "rss_mb": rss, "cpu_s": cpu, "cache_hit_ratio": hit_ratio, "store": counts,
        "recorder_dropped": dropped, "decisions": decisions, "samples": samples, "load_mean": load_mean,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))

    g_max = max((v["growth_pct"] for v in rss.values() if v["growth_pct"] is not None), default=None)
    verdict_err = "met" if errors == 0 else "MISSED"
    verdict_rss = "met" if g_max is not None and g_max < 10 else "MISSED"
    cmd = "python bench/soak/run.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "## soak",
        "",
        f"Date: {result['date']}  ",
        f"Command: `{cmd}`  ",
        f"Machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}. "
        "**Everything shares these cores**: both replicas, redis-server, PostgreSQL, the mock upstream and the "
        "load generator.",
        "",
        f"Set-up: 2 replicas (`shipyard serve`, one worker each) with auth on ({args.keys} virtual keys, each with "
        "rpm, tpm, USD/day and USD/month limits set high enough never to refuse, plus team limits off), limits and "
        "budgets in Redis (reserve + settle on every request), the response cache in Redis "
        f"(`cache.backend: redis`), recording to PostgreSQL. Load: {args.clients} concurrent clients (aiohttp), "
        f"alternating replicas, {args.think_ms:.0f} ms think time; {args.cacheable:.0%} temperature-0 requests from "
        f"50 prompts (cacheable), {args.stream:.0%} streamed, the rest unique. Upstream: the gateway_overhead mock "
        f"with {args.upstream_delay_ms:.0f} ms delay. Baseline: the same clients straight to the mock for "
        f"{args.baseline:.0f} s. RSS = VmRSS per replica every 5 s; growth = end vs first sample after "
        f"{args.warmup:.0f} s warm-up.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| duration | {elapsed:.0f} s | 600 s |",
        f"| requests (rps) | {total:,} ({rps:.0f}/s) | – |",
        f"| errors | {errors} | 0 ({verdict_err}) |",
        f"| RSS replica a: after warm-up → end (peak) | {fmt(rss['a']['after_warmup'])} → {fmt(rss['a']['end'])} MB "
        f"({fmt(rss['a']['peak'])}) = {fmt(rss['a']['growth_pct'], '.1f', True)}% | < 10% ({verdict_rss}) |",
        f"| RSS replica b: after warm-up → end (peak) | {fmt(rss['b']['after_warmup'])} → {fmt(rss['b']['end'])} MB "
        f"({fmt(rss['b']['peak'])}) = {fmt(rss['b']['growth_pct'], '.1f', True)}% | < 10% |",
        f"| latency p50 / p99, all | {fmt(lat['all']['p50'], '.2f')} / {fmt(lat['all']['p99'], '.2f')} ms | – |",
        f"| direct to the mock p50 / p99 | {fmt(b50, '.2f')} / {fmt(b99, '.2f')} ms | – |",
        f"| **added** p50 / p99 | {fmt(None if lat['all']['p50'] is None else lat['all']['p50'] - b50, '.2f', True)} / "
        f"{fmt(None if lat['all']['p99'] is None else lat['all']['p99'] - b99, '.2f', True)} ms | – |",
        f"| cache hits p50 / p99 (n) | {fmt(lat['hit']['p50'], '.2f')} / {fmt(lat['hit']['p99'], '.2f')} ms "
        f"({lat['hit']['n']:,}) | – |",
        f"| cache misses p50 / p99 (n) | {fmt(lat['miss']['p50'], '.2f')} / {fmt(lat['miss']['p99'], '.2f')} ms "
        f"({lat['miss']['n']:,}) | – |",
        f"| streamed p50 / p99 (n) | {fmt(lat['stream']['p50'], '.2f')} / {fmt(lat['stream']['p99'], '.2f')} ms "
        f"({lat['stream']['n']:,}) | – |",
        f"| cache hit ratio (non-streamed) | {hit_ratio:.1%} | – |",
        f"| replica CPU a / b | {cpu['a'] / elapsed:.0%} / {cpu['b'] / elapsed:.0%} of a core | – |",
        f"| machine load average (1 min), mean over the run | {fmt(load_mean, '.1f')} on {os.cpu_count()} cores | – |",
        f"| traces / spans in PostgreSQL | {counts['traces']:,} / {counts['spans']:,} | = requests |",
        f"| recorder dropped | {dropped:.0f} | 0 |",
    ]
    if stats.errors:
        lines += ["", "Errors: " + "; ".join(f"{k} × {v}" for k, v in sorted(stats.errors.items())[:10])]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(Path(args.out), text)
        log(f"wrote the soak section of {args.out}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
