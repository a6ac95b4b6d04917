"""gateway_overhead: what a gateway adds on top of calling the upstream directly.

Compares, in one run and against the same fast mock upstream (mock_upstream.py, its own
process on loopback):

  direct    wrk -> mock
  shipyard  wrk -> ``shipyard serve`` (one worker, recording ON to SQLite in a temp dir) -> mock
  litellm   wrk -> ``litellm --config ... --num_workers 1`` (litellm[proxy]==1.106.2, own venv) -> mock

at concurrency 1, 10 and 50 (wrk -t1 -c1, -t2 -c10, -t2 -c50), each point after a short
warm-up. Reports throughput, p50/p99 latency, added latency versus direct, max throughput,
the Shipyard/LiteLLM throughput ratio and Shipyard's RSS (VmRSS, and peak VmHWM) after the
run, then writes the "## gateway_overhead" section of bench/RESULTS.md.

Latency percentiles are per request, from wrk's own 1 us histogram, dumped by the Lua
``done()`` hook with wrk's built-in coordinated-omission correction undone exactly (wrk
adds synthetic samples for every response slower than the mean interval, which on a
shared 2-core box turns a handful of scheduler stalls into a fat tail). wrk's corrected
figures are kept in the JSON output too.

Usage:
    python bench/gateway_overhead/run.py [--duration 10] [--skip-litellm] [--out bench/RESULTS.md]

It is a benchmark, not a test: it never fails on a missed target, only on a broken harness.
Every child process is ended when it finishes, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import ipaddress
import json
import math
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MOCK = HERE / "mock_upstream.py"
SETUP_LITELLM = HERE / "setup_litellm.sh"
LITELLM_VERSION = "1.106.2"
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
HOST = "127.0.0.1"

# Goals printed next to the results (not enforced).
GOAL_ADDED_P50_MS_C1 = 1.0
GOAL_RPS = 2000.0
GOAL_RATIO_VS_LITELLM = 10.0
GOAL_RSS_MB = 150.0

CHAT_BODY = {
    "model": "MODEL",
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 16,
    "temperature": 0,
}


NICE = 0  # --nice: niceness increment for every benchmark process (negative needs root)


def _preexec() -> None:
    if NICE:
        os.nice(NICE)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- processes


class Children:
    """Every long-running child, each in its own session so it can be ended as a group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_preexec,  # noqa: PLW1509 - the harness runs no threads
            )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
        """SIGTERM the child's process group, wait, then SIGKILL what is left."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group can outlive its leader (workers): kill whatever remains in it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        for _name, proc in list(reversed(self.procs)):
            self.stop(proc, timeout=5.0)


CHILDREN = Children()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({})
)  # loopback: never a proxy


def http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    assert ipaddress.ip_address(
        urllib.request.urlparse(url).hostname or ""
    ).is_loopback, url
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Poll ``url`` until it answers 200; return seconds waited. Raises if the process dies."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"process exited with code {proc.returncode} before {url} answered"
            )
        try:
            status, _ = http("GET", url, timeout=2.0)
            if status == 200:
                return time.monotonic() - t0
            last = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(
        f"{url} did not answer 200 within {timeout:.0f} s (last: {last})"
    )


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- /proc


def proc_tree(pid: int) -> list[int]:
    """pid and all its descendants (via /proc/*/stat ppid)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tck


def system_busy_seconds() -> float:
    """CPU-seconds spent busy by the whole machine (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    # user nice system idle iowait irq softirq steal ...
    busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def mem_status(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(val.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return out


def memory_report(pid: int) -> dict[str, Any]:
    pids = proc_tree(pid)
    per = {p: mem_status(p) for p in pids}
    main = per.get(pid, {})
    return {
        "pids": pids,
        "rss_mb": main.get("VmRSS"),
        "hwm_mb": main.get("VmHWM"),
        "tree_rss_mb": sum(m.get("VmRSS", 0.0) for m in per.values()),
        "tree_hwm_mb": sum(m.get("VmHWM", 0.0) for m in per.values()),
    }


# --------------------------------------------------------------------------- wrk

LUA_TEMPLATE = r"""-- generated by bench/gateway_overhead/run.py
wrk.method = "POST"
wrk.body = [==[__BODY__]==]
wrk.headers["Content-Type"] = "application/json"
__HEADERS__

-- Dump wrk's latency histogram (1 us buckets) plus the summary as one JSON line.
-- latency(i) scans the histogram, so a huge one is skipped (percentiles only).
done = function(summary, latency, requests)
  local e = summary.errors
  local n = #latency
  local parts = {}
  local dumped = 0
  if n * (latency.max - latency.min + 1) < 3e10 then
    for i = 1, n do
      local v, c = latency(i)
      parts[#parts + 1] = string.format("[%d,%d]", v, c)
    end
    dumped = 1
  end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"co_p50_us":%d,"co_p90_us":%d,"co_p99_us":%d,"co_p999_us":%d,"co_mean_us":%.3f,"max_us":%d,' ..
    '"connect_err":%d,"read_err":%d,"write_err":%d,"status_err":%d,"timeout_err":%d,' ..
    '"hist_dumped":%d,"hist":[%s]}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout,
    dumped, table.concat(parts, ",")))
end
"""


def write_lua(path: Path, model: str, api_key: str | None) -> None:
    body = json.dumps({**CHAT_BODY, "model": model}, separators=(",", ":"))
    headers = f'wrk.headers["Authorization"] = "Bearer {api_key}"' if api_key else ""
    path.write_text(
        LUA_TEMPLATE.replace("__BODY__", body).replace("__HEADERS__", headers)
    )


def threads_for(conc: int) -> int:
    return 1 if conc == 1 else min(2, conc)


def undo_co_correction(
    hist: dict[int, int], requests: int, duration_us: int, conns: int
) -> dict[int, int]:
    """Invert wrk 4's stats_correct(): recover the per-request latency histogram.

    wrk computes ``e = duration_us / (requests / conns)`` (integer division) and, for every
    recorded value n >= 2e, adds its count at n-e, n-2e, ... while > e. So for m > e:
    corrected[m] = original[m] + sum(original[n] for n > m, n = m (mod e)).
    """
    per_conn = requests // conns
    if per_conn <= 0:
        return dict(hist)
    e = duration_us // per_conn
    if e <= 0:
        return dict(hist)
    by_class: dict[int, list[int]] = {}
    for v in hist:
        by_class.setdefault(v % e, []).append(v)
    orig: dict[int, int] = {}
    for values in by_class.values():
        running = 0
        for v in sorted(values, reverse=True):
            o = hist[v] - running if v > e else hist[v]
            if o < 0:
                raise ValueError("histogram is not a wrk-corrected one")
            running += o
            if o:
                orig[v] = o
    return orig


def percentile(hist: dict[int, int], p: float) -> float:
    total = sum(hist.values())
    if total == 0:
        return float("nan")
    target = p / 100.0 * total
    acc = 0
    for v in sorted(hist):
        acc += hist[v]
        if acc >= target:
            return float(v)
    return float(max(hist))


@dataclass
class Point:
    target: str
    conc: int
    threads: int
    duration_s: float
    requests: int = 0
    ok_requests: int = 0
    rps: float = 0.0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    mean_us: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    latency_source: str = "per-request (wrk histogram, CO correction undone)"
    wrk_co: dict[str, float] = field(default_factory=dict)
    gw_cpu_pct: float | None = None
    mock_cpu_pct: float | None = None
    wrk_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    gw_rss_mb: float | None = None
    gw_cpu_us_per_req: float | None = None
    upstream_calls: int | None = None
    littles_law_conc: float | None = None
    failed: str | None = None


def run_wrk(
    wrk: str,
    url: str,
    lua: Path,
    conc: int,
    duration: float,
    log_path: Path,
    timeout_s: float = 10.0,
    sampler: Callable[[int], dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Run wrk; if ``sampler`` is given, call it (with wrk's pid) when wrk starts and when
    its measurement window ends, before its done() hook dumps the histogram."""
    secs = max(1, round(duration))
    argv = [
        wrk,
        f"-t{threads_for(conc)}",
        f"-c{conc}",
        f"-d{secs}s",
        "--timeout",
        f"{int(timeout_s)}s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    proc = subprocess.Popen(
        argv,
        preexec_fn=_preexec,  # noqa: PLW1509 - the harness runs no threads
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    s0: dict[str, float] = {}
    s1: dict[str, float] = {}
    try:
        if sampler is not None:
            s0 = sampler(proc.pid)
            time.sleep(secs)
            s1 = sampler(proc.pid)
        # Bounded: wrk stops itself after -d; the extra time covers start-up and done()
        # (dumping a wide histogram costs up to ~30 s of wrk CPU, after the measurement).
        out, err = proc.communicate(timeout=secs + timeout_s + 180)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    with open(log_path, "a") as fh:
        fh.write("$ " + shlex.join(argv) + "\n")
        fh.write(
            "\n".join(l for l in out.splitlines() if not l.startswith("WRK_JSON"))
            + "\n"
        )
        fh.write(err)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.strip()[:300]}")
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :]), s0, s1
    raise RuntimeError("wrk printed no WRK_JSON line (Lua done() hook failed?)")


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    url: str  # chat completions URL
    model: str
    api_key: str | None
    proc: subprocess.Popen[bytes] | None = None  # the gateway process (None for direct)
    status: str = "ok"
    reason: str = ""
    version: str = ""
    startup_s: float | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def mock_stats(mock_port: int) -> dict[str, int]:
    status, body = http("GET", f"http://{HOST}:{mock_port}/__stats", timeout=5.0)
    return json.loads(body) if status == 200 else {}


def settle(mock_port: int, limit_s: float = 15.0) -> None:
    """Wait (bounded) until the warm-up's stragglers have reached the mock."""
    deadline = time.monotonic() + limit_s
    last, stable = -1, 0
    while time.monotonic() < deadline and stable < 2:
        time.sleep(0.25)
        n = mock_stats(mock_port).get("chat_completions", 0)
        stable = stable + 1 if n == last else 0
        last = n


def preflight(t: Target) -> None:
    headers = {"Authorization": f"Bearer {t.api_key}"} if t.api_key else {}
    status, body = http(
        "POST", t.url, {**CHAT_BODY, "model": t.model}, headers, timeout=30.0
    )
    if status != 200:
        raise RuntimeError(f"preflight POST {t.url} -> HTTP {status}: {body[:300]!r}")
    data = json.loads(body)
    if not data.get("choices") or "usage" not in data:
        raise RuntimeError(f"preflight response has no choices/usage: {body[:300]!r}")


def measure(
    t: Target,
    args: argparse.Namespace,
    wrk: str,
    workdir: Path,
    mock_proc: subprocess.Popen[bytes],
    mock_port: int,
) -> list[Point]:
    lua = workdir / f"{t.name}.lua"
    write_lua(lua, t.model, t.api_key)
    wrk_log = workdir / f"wrk-{t.name}.log"
    points: list[Point] = []
    for conc in args.concurrency:
        pt = Point(t.name, conc, threads_for(conc), args.duration)
        try:
            if args.warmup > 0:
                run_wrk(wrk, t.url, lua, conc, args.warmup, wrk_log)  # discarded
            settle(mock_port)
            gw_pids = proc_tree(t.proc.pid) if t.proc else []
            mock_pids = [mock_proc.pid]
            before_mock = mock_stats(mock_port).get("chat_completions", 0)

            def sample(
                wrk_pid: int,
                gw_pids: list[int] = gw_pids,
                mock_pids: list[int] = mock_pids,
            ) -> dict[str, float]:
                return {
                    "t": time.monotonic(),
                    "sys": system_busy_seconds(),
                    "gw": cpu_seconds(gw_pids),
                    "mock": cpu_seconds(mock_pids),
                    "wrk": cpu_seconds([wrk_pid]),
                }

            res, s0, s1 = run_wrk(
                wrk, t.url, lua, conc, args.duration, wrk_log, sampler=sample
            )
            after_mock = mock_stats(mock_port).get("chat_completions", 0)
        except Exception as exc:  # noqa: BLE001 - a failed point is reported, not fatal
            pt.failed = f"{type(exc).__name__}: {exc}"
            log(f"  {t.name} c={conc}: FAILED {pt.failed}")
            points.append(pt)
            if t.proc is not None and t.proc.poll() is not None:
                t.status, t.reason = (
                    "failed",
                    f"process exited with code {t.proc.returncode} during the run",
                )
                break
            continue

        wall = s1["t"] - s0["t"]
        dur_s = res["duration_us"] / 1e6
        pt.requests = res["requests"]
        pt.errors = {
            k: res[k]
            for k in (
                "connect_err",
                "read_err",
                "write_err",
                "status_err",
                "timeout_err",
            )
            if res[k]
        }
        pt.ok_requests = max(0, res["requests"] - res["status_err"])
        pt.rps = pt.ok_requests / dur_s if dur_s > 0 else 0.0
        pt.wrk_co = {
            k: res[k]
            for k in (
                "co_p50_us",
                "co_p90_us",
                "co_p99_us",
                "co_p999_us",
                "co_mean_us",
                "max_us",
            )
        }
        hist = {int(v): int(c) for v, c in res.get("hist", [])}
        try:
            if not res.get("hist_dumped"):
                raise ValueError("histogram too large to dump")
            orig = undo_co_correction(hist, res["requests"], res["duration_us"], conc)
            pt.p50_us, pt.p99_us = percentile(orig, 50), percentile(orig, 99)
            total = sum(orig.values())
            pt.mean_us = (
                sum(v * c for v, c in orig.items()) / total if total else float("nan")
            )
            pt.littles_law_conc = (
                pt.mean_us * pt.requests / res["duration_us"] if total else None
            )
        except ValueError as exc:
            pt.latency_source = f"wrk CO-corrected percentiles ({exc})"
            pt.p50_us, pt.p99_us, pt.mean_us = (
                res["co_p50_us"],
                res["co_p99_us"],
                res["co_mean_us"],
            )
        if wall > 0:
            d = {k: s1[k] - s0[k] for k in ("sys", "gw", "mock", "wrk")}
            pt.mock_cpu_pct = 100.0 * d["mock"] / wall
            pt.wrk_cpu_pct = 100.0 * d["wrk"] / wall
            if not math.isnan(d["sys"]):
                ours = d["gw"] + d["mock"] + d["wrk"]
                pt.other_cpu_pct = max(0.0, 100.0 * (d["sys"] - ours) / wall)
            if t.proc is not None:
                pt.gw_cpu_pct = 100.0 * d["gw"] / wall
                if pt.requests:
                    pt.gw_cpu_us_per_req = 1e6 * d["gw"] / pt.requests
        if t.proc is not None:
            pt.gw_rss_mb = mem_status(t.proc.pid).get("VmRSS")
        pt.upstream_calls = after_mock - before_mock
        if (
            t.proc is not None
            and pt.requests
            and abs(pt.upstream_calls - pt.requests) > max(conc * 2, 0.01 * pt.requests)
        ):
            t.notes.append(
                f"c={conc}: {pt.upstream_calls} upstream calls for {pt.requests} client requests"
            )
        log(
            f"  {t.name:8s} c={conc:<3d} {pt.rps:9.0f} rps  p50 {pt.p50_us / 1000:7.3f} ms  "
            f"p99 {pt.p99_us / 1000:8.3f} ms  errors {pt.errors or 0}"
            + (f"  gw CPU {pt.gw_cpu_pct:.0f}%" if pt.gw_cpu_pct is not None else "")
            + (f"  wrk CPU {pt.wrk_cpu_pct:.0f}%" if pt.wrk_cpu_pct is not None else "")
            + (
                f"  other CPU {pt.other_cpu_pct:.0f}%"
                if pt.other_cpu_pct is not None
                else ""
            )
        )
        points.append(pt)
    return points


def shipyard_command(args: argparse.Namespace) -> list[str]:
    if args.shipyard_bin:
        return shlex.split(args.shipyard_bin)
    cand = Path(sys.executable).parent / "shipyard"
    if cand.exists():
        return [str(cand)]
    found = shutil.which("shipyard")
    if found:
        return [found]
    raise RuntimeError(
        "the `shipyard` command is not installed (pip install -e /work/main)"
    )


def start_shipyard(
    args: argparse.Namespace, workdir: Path, mock_port: int, name: str = "shipyard",
    shadow_sample: float | None = None,
) -> Target:
    """Shipyard on the mock; with ``shadow_sample``, the alias also mirrors that share of
    its calls to a candidate model on the same mock (in the background)."""
    port = free_port()
    t = Target(
        name, f"http://{HOST}:{port}/v1/chat/completions", "bench", "sk-bench"
    )
    db = workdir / f"{name}.db"
    cfg = workdir / f"{name}.yaml"
    shadow = (
        "    shadow:\n"
        f"      sample: {shadow_sample}\n"
        f"      candidates: [{{name: candidate, provider: mock, model: {UPSTREAM_MODEL}-candidate}}]\n"
        if shadow_sample is not None
        else ""
    )
    cfg.write_text(
        f"store: sqlite:///{db}\n"
        "providers:\n"
        f'  mock: {{type: openai, base_url: "http://{HOST}:{mock_port}/v1", api_key: "sk-bench"}}\n'
        "models:\n"
        "  bench:\n"
        f"    targets: [{{provider: mock, model: {UPSTREAM_MODEL}}}]\n"
        + shadow
        + "prices:\n"
        f"  {UPSTREAM_MODEL}: {{input: 0.15, output: 0.60}}\n"
    )
    try:
        cmd = shipyard_command(args)
        t.version = _pkg_version(sys.executable, "shipyard")
    except Exception as exc:  # noqa: BLE001
        t.status, t.reason = "unavailable", str(exc)
        return t
    argv = cmd + ["serve", "--config", str(cfg), "--host", HOST, "--port", str(port)]
    t.notes.append(
        "command: "
        + shlex.join(["shipyard"] + argv[len(cmd) :]).replace(str(workdir), "$TMP")
    )
    env = _child_env()
    log_path = workdir / f"{name}.log"
    t.proc = CHILDREN.start(name, argv, log_path=log_path, env=env, cwd=workdir)
    try:
        t.startup_s = wait_http_ok(
            f"http://{HOST}:{port}/health", t.proc, args.start_timeout
        )
        preflight(t)
    except Exception as exc:  # noqa: BLE001
        t.status, t.reason = (
            "failed",
            f"{exc}\n--- shipyard log tail ---\n{tail(log_path)}",
        )
        CHILDREN.stop(t.proc)
    return t


def litellm_bin(venv: Path) -> Path:
    return venv / "bin" / "litellm"


def ensure_litellm(args: argparse.Namespace, workdir: Path) -> str | None:
    """Install LiteLLM into its venv if needed; return a reason string if unavailable."""
    venv = Path(args.litellm_venv)
    ok = (
        litellm_bin(venv).exists()
        and _pkg_version(str(venv / "bin" / "python"), "litellm") == LITELLM_VERSION
    )
    if ok:
        return None
    if args.no_install_litellm:
        return f"litellm=={LITELLM_VERSION} not installed in {venv} (run {SETUP_LITELLM.relative_to(REPO)})"
    log(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (a few minutes) ...")
    log_path = workdir / "setup_litellm.log"
    with open(log_path, "wb") as fh:
        try:
            rc = subprocess.run(
                ["bash", str(SETUP_LITELLM), str(venv)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=1800,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return "setup_litellm.sh timed out after 30 min"
    if rc != 0:
        return f"setup_litellm.sh failed (exit {rc}): {tail(log_path, 8)}"
    if _pkg_version(str(venv / "bin" / "python"), "litellm") != LITELLM_VERSION:
        return f"litellm {LITELLM_VERSION} still not importable from {venv} after setup"
    return None


def start_litellm(args: argparse.Namespace, workdir: Path, mock_port: int) -> Target:
    port = free_port()
    master_key = "sk-" + secrets.token_hex(32)
    t = Target(
        "litellm", f"http://{HOST}:{port}/v1/chat/completions", "bench", master_key
    )
    reason = ensure_litellm(args, workdir)
    if reason:
        t.status, t.reason = "unavailable", reason
        return t
    venv = Path(args.litellm_venv)
    t.version = _pkg_version(str(venv / "bin" / "python"), "litellm")
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: http://{HOST}:{mock_port}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
        "  disable_spend_logs: true\n"
    )
    env = _child_env()
    for k in ("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST", "REDIS_URL"):
        env.pop(k, None)
    env.update(
        {
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from the internet
            "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
            "DISABLE_ADMIN_UI": "True",
        }
    )
    argv = [
        str(litellm_bin(venv)),
        "--config",
        str(cfg),
        "--host",
        HOST,
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    t.notes.append(
        "command: "
        + shlex.join(["litellm"] + argv[1:]).replace(str(workdir), "$TMP")
        + " (env LITELLM_LOG=ERROR LITELLM_TELEMETRY=False LITELLM_LOCAL_MODEL_COST_MAP=True; "
        "no database, master key set)"
    )
    log_path = workdir / "litellm.log"
    t.proc = CHILDREN.start("litellm", argv, log_path=log_path, env=env, cwd=workdir)
    try:
        t.startup_s = wait_http_ok(
            f"http://{HOST}:{port}/health/liveliness",
            t.proc,
            args.litellm_start_timeout,
        )
        preflight(t)
    except Exception as exc:  # noqa: BLE001
        t.status, t.reason = (
            "failed",
            f"{exc}\n--- litellm log tail ---\n{tail(log_path)}",
        )
        CHILDREN.stop(t.proc)
    return t


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    no_proxy = ",".join(
        x for x in (env.get("NO_PROXY", ""), "127.0.0.1,localhost") if x
    )
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pkg_version(python: str, dist: str) -> str:
    try:
        res = subprocess.run(
            [
                python,
                "-c",
                f"import importlib.metadata as m; print(m.version({dist!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def store_rows(db: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    if not db.exists():
        return out
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            tables = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'"
                )
            ]
            for tb in tables:
                if tb.startswith("sqlite_"):
                    continue
                out[tb] = con.execute(f'SELECT count(*) FROM "{tb}"').fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        out["<error>"] = -1
        log(f"  cannot read {db}: {exc}")
    return out


# --------------------------------------------------------------------------- report


def fmt_ms(us: float | None, signed: bool = False) -> str:
    if us is None or math.isnan(us):
        return "–"
    ms = us / 1000.0
    prec = 3 if abs(ms) < 10 else (2 if abs(ms) < 100 else 1)
    return f"{ms:+.{prec}f}" if signed else f"{ms:.{prec}f}"


def fmt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}%"


def build_report(
    targets: list[Target], points: dict[str, list[Point]], meta: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    direct = {p.conc: p for p in points.get("direct", []) if not p.failed}
    lines: list[str] = []
    L = lines.append
    L(
        "| target | conc | rps | p50 ms | p99 ms | added p50 ms | added p99 ms | gateway CPU "
        "| gateway CPU µs/req | mock CPU | wrk CPU | other CPU | gateway RSS MB | errors |"
    )
    L("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    blanks = "| " * 11
    for t in targets:
        pts = points.get(t.name, [])
        if t.status != "ok" and not pts:
            L(f"| {t.name} | – | {t.status} {blanks}| see below |")
            continue
        for p in pts:
            if p.failed:
                L(f"| {t.name} | {p.conc} | failed {blanks}| {p.failed[:80]} |")
                continue
            d = direct.get(p.conc)
            add50 = p.p50_us - d.p50_us if (d and t.name != "direct") else None
            add99 = p.p99_us - d.p99_us if (d and t.name != "direct") else None
            errs = (
                ", ".join(f"{k.replace('_err', '')}={v}" for k, v in p.errors.items())
                or "0"
            )
            if p.latency_source.startswith("wrk CO"):
                errs += " (percentiles: wrk's CO-corrected ones)"
            cpu_req = (
                "–" if p.gw_cpu_us_per_req is None else f"{p.gw_cpu_us_per_req:,.0f}"
            )
            rss = "–" if p.gw_rss_mb is None else f"{p.gw_rss_mb:.0f}"
            L(
                f"| {t.name} | {p.conc} | {p.rps:,.0f} | {fmt_ms(p.p50_us)} | {fmt_ms(p.p99_us)} "
                f"| {fmt_ms(add50, True)} | {fmt_ms(add99, True)} | {fmt_pct(p.gw_cpu_pct)} | {cpu_req} "
                f"| {fmt_pct(p.mock_cpu_pct)} | {fmt_pct(p.wrk_cpu_pct)} | {fmt_pct(p.other_cpu_pct)} "
                f"| {rss} | {errs} |"
            )

    def max_rps(name: str) -> float | None:
        ok = [p.rps for p in points.get(name, []) if not p.failed and p.rps > 0]
        return max(ok) if ok else None

    mx = {t.name: max_rps(t.name) for t in targets}
    L("")
    L(
        "| max throughput | measured rps (best point) | CPU-bound estimate, 1 core "
        "(10^6 / least gateway CPU µs per request) |"
    )
    L("|---|---:|---:|")
    for t in targets:
        v = mx.get(t.name)
        costs = [
            p.gw_cpu_us_per_req
            for p in points.get(t.name, [])
            if not p.failed and p.gw_cpu_us_per_req
        ]
        est = f"{1e6 / min(costs):,.0f} rps" if costs else "–"
        shown = "–" if v is None else f"{v:,.0f}"
        status = "" if t.status == "ok" else f" ({t.status})"
        L(f"| {t.name} | {shown}{status} | {est} |")

    ship = next((t for t in targets if t.name == "shipyard"), None)
    lite = next((t for t in targets if t.name == "litellm"), None)
    ratio = (
        (mx["shipyard"] / mx["litellm"])
        if (mx.get("shipyard") and mx.get("litellm"))
        else None
    )
    c1 = next(
        (p for p in points.get("shipyard", []) if p.conc == 1 and not p.failed), None
    )
    added_c1 = (c1.p50_us - direct[1].p50_us) / 1000.0 if (c1 and 1 in direct) else None
    rss = ship.memory.get("rss_mb") if ship else None
    hwm = ship.memory.get("hwm_mb") if ship else None

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "MISS")

    L("")
    L("| goal | result | target | verdict |")
    L("|---|---:|---:|---|")
    L(
        f"| Shipyard added p50 at c=1 | {'–' if added_c1 is None else f'{added_c1:+.3f} ms'} | <= {GOAL_ADDED_P50_MS_C1:g} ms "
        f"| {verdict(None if added_c1 is None else added_c1 <= GOAL_ADDED_P50_MS_C1)} |"
    )
    ship_rps = mx.get("shipyard")
    L(
        f"| Shipyard max throughput, one worker | {'–' if ship_rps is None else f'{ship_rps:,.0f} rps'} "
        f"| >= {GOAL_RPS:,.0f} rps | {verdict(None if ship_rps is None else ship_rps >= GOAL_RPS)} |"
    )
    L(
        f"| Shipyard / LiteLLM throughput | {'–' if ratio is None else f'{ratio:.1f}x'} | >= {GOAL_RATIO_VS_LITELLM:g}x "
        f"| {verdict(None if ratio is None else ratio >= GOAL_RATIO_VS_LITELLM)} |"
    )
    L(
        f"| Shipyard RSS after the run (VmRSS; peak VmHWM) | {'–' if rss is None else f'{rss:.0f} MB (peak {hwm:.0f} MB)'} "
        f"| <= {GOAL_RSS_MB:g} MB | {verdict(None if rss is None else rss <= GOAL_RSS_MB)} |"
    )
    shadow = {p.conc: p for p in points.get("shipyard+shadow", []) if not p.failed}
    plain = {p.conc: p for p in points.get("shipyard", []) if not p.failed}
    shadow_c1 = (
        (shadow[1].p50_us - plain[1].p50_us) / 1000.0 if (1 in shadow and 1 in plain) else None
    )
    if shadow:
        L(
            f"| Shadow traffic: client p50 at c=1 with vs without | {'–' if shadow_c1 is None else f'{shadow_c1:+.3f} ms'} "
            f"| no measurable latency | {verdict(None if shadow_c1 is None else shadow_c1 <= 0.1)} |"
        )
    if lite and lite.memory.get("rss_mb") is not None:
        L(
            f"| (reference) LiteLLM RSS after the run | {lite.memory['rss_mb']:.0f} MB (peak {lite.memory['hwm_mb']:.0f} MB) | – | – |"
        )

    summary = {
        "max_rps": mx,
        "shipyard_over_litellm": ratio,
        "shipyard_added_p50_ms_c1": added_c1,
        "shipyard_rss_mb": rss,
        "shipyard_hwm_mb": hwm,
        "shadow_added_p50_ms_c1": shadow_c1,
    }
    return "\n".join(lines), summary


def notes_block(targets: list[Target], points: dict[str, list[Point]]) -> str:
    out: list[str] = []
    for t in targets:
        head = f"- **{t.name}**"
        if t.version:
            head += f" {t.version}"
        if t.status != "ok":
            reason = t.reason.strip().splitlines()[0] if t.reason.strip() else "unknown"
            out.append(f"{head}: **{t.status}** — {reason}")
        else:
            bits = []
            if t.startup_s is not None:
                bits.append(f"ready in {t.startup_s:.1f} s")
            if t.memory:
                m = t.memory
                bits.append(
                    f"RSS {m['rss_mb']:.0f} MB, peak {m['hwm_mb']:.0f} MB"
                    + (
                        f" (process tree {m['tree_rss_mb']:.0f} MB, {len(m['pids'])} processes)"
                        if len(m["pids"]) > 1
                        else ""
                    )
                )
            if t.name != "direct":
                diffs = [
                    (p.conc, p.upstream_calls - p.requests)
                    for p in points.get(t.name, [])
                    if not p.failed and p.requests and p.upstream_calls is not None
                ]
                if diffs:
                    bits.append(
                        "upstream calls minus client requests "
                        + " / ".join(f"{d:+d}" for _, d in diffs)
                        + " (c="
                        + "/".join(str(c) for c, _ in diffs)
                        + "; up to c extra is normal: requests still in flight when wrk stops)"
                    )
            bits.extend(t.notes)
            out.append(head + (": " + "; ".join(bits) if bits else ""))
    return "\n".join(out)


def load_warning(points: dict[str, list[Point]], meta: dict[str, Any]) -> list[str]:
    other = [
        p.other_cpu_pct
        for pts in points.values()
        for p in pts
        if p.other_cpu_pct is not None
    ]
    worst = max(other, default=0.0)
    out = [
        (
            f"Load average at start: {meta['loadavg']}; other processes' CPU during the points: "
            f"up to {worst:.0f}% of a core."
        )
    ]
    if worst > 15.0:
        out[0] = (
            "**Warning:** "
            + out[0]
            + " Something else was busy on this machine, so these numbers are low; re-run on an idle machine."
        )
    return [out[0], ""]


def write_results(path: Path, section: str) -> None:
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmark results\n\nWritten by the scripts under bench/; see bench/README.md.\n"
    )
    pattern = re.compile(
        r"^## gateway_overhead\b.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE
    )
    if pattern.search(text):
        text = pattern.sub(lambda _m: section.rstrip() + "\n\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text.rstrip() + "\n")


def machine_note() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Linux {platform.release()}, Python {platform.python_version()}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Gateway overhead benchmark: direct vs Shipyard vs LiteLLM."
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds measured per point (default 10)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of warm-up per point, discarded (default 2)",
    )
    ap.add_argument(
        "--concurrency",
        default="1,10,50",
        help="comma-separated connection counts (default 1,10,50)",
    )
    ap.add_argument(
        "--skip-litellm", action="store_true", help="do not run the LiteLLM leg"
    )
    ap.add_argument(
        "--skip-shipyard", action="store_true", help="do not run the Shipyard legs"
    )
    ap.add_argument(
        "--shadow-sample",
        type=float,
        default=0.1,
        help="also run Shipyard with shadow traffic mirroring this share of calls to a "
        "candidate on the mock (0 = skip that leg; default 0.1)",
    )
    ap.add_argument(
        "--litellm-venv",
        default=os.environ.get("LITELLM_VENV", "/tmp/litellm-venv"),
        help=f"virtualenv holding litellm[proxy]=={LITELLM_VERSION} (default /tmp/litellm-venv)",
    )
    ap.add_argument(
        "--no-install-litellm",
        action="store_true",
        help="do not run setup_litellm.sh when LiteLLM is missing (mark it unavailable)",
    )
    ap.add_argument(
        "--shipyard-bin",
        default="",
        help="command that runs shipyard (default: `shipyard` beside this python)",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for mock, gateways and wrk, e.g. -10 (root) to keep other load on a "
        "shared machine from skewing the numbers (default 0)",
    )
    ap.add_argument("--wrk", default="wrk", help="wrk binary (default: wrk on PATH)")
    ap.add_argument(
        "--start-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for Shipyard's /health",
    )
    ap.add_argument(
        "--litellm-start-timeout",
        type=float,
        default=180.0,
        help="seconds to wait for LiteLLM",
    )
    ap.add_argument(
        "--out",
        default=str(REPO / "bench" / "RESULTS.md"),
        help="results file to update (default bench/RESULTS.md)",
    )
    ap.add_argument(
        "--no-write", action="store_true", help="print only; do not update --out"
    )
    ap.add_argument(
        "--json", default="", help="also write the raw results as JSON here"
    )
    ap.add_argument(
        "--keep-tmp",
        action="store_true",
        help="keep the temp dir (configs, logs, SQLite store)",
    )
    args = ap.parse_args(argv)
    try:
        args.concurrency = [
            int(x) for x in str(args.concurrency).split(",") if x.strip()
        ]
    except ValueError:
        ap.error("--concurrency must be comma-separated integers")
    if (
        not args.concurrency
        or min(args.concurrency) < 1
        or max(args.concurrency) > 1000
    ):
        ap.error("--concurrency values must be in 1..1000")
    if not (-20 <= args.nice <= 19):
        ap.error("--nice must be in -20..19")
    if not (1 <= args.duration <= 600) or not (0 <= args.warmup <= 120):
        ap.error("--duration must be in 1..600 s and --warmup in 0..120 s")
    return args


def main(argv: list[str] | None = None) -> int:
    global NICE
    args = parse_args(argv)
    NICE = args.nice
    command = "python " + shlex.join(
        [
            os.path.relpath(sys.argv[0], REPO)
            if argv is None
            else "bench/gateway_overhead/run.py"
        ]
        + (sys.argv[1:] if argv is None else argv)
    )
    wrk = shutil.which(args.wrk)
    if not wrk:
        print(
            "wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr
        )
        return 2
    wrk_v = subprocess.run(
        [wrk, "-v"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    m = re.search(r"wrk\s+(?:\S*/)?(\d+\.\d+\.\d+)", wrk_v)
    wrk_version = [f"wrk {m.group(1)}"] if m else ["wrk"]
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(CHILDREN.stop_all)
    try:
        loadavg0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        loadavg0 = "?"
    if loadavg0 != "?" and float(loadavg0.split()[0]) > 0.5:
        log(
            f"warning: load average is {loadavg0}: something else is using the CPU, results will be noisy"
        )
    workdir = Path(tempfile.mkdtemp(prefix="shipyard-bench-"))
    started = _dt.datetime.now(_dt.UTC)
    targets: list[Target] = []
    points: dict[str, list[Point]] = {}
    log(
        f"gateway_overhead: duration {args.duration:g} s + warm-up {args.warmup:g} s per point, "
        f"concurrency {args.concurrency}; temp dir {workdir}"
    )
    try:
        # Mock upstream, in its own process.
        mock_port = free_port()
        mock_log = workdir / "mock.log"
        mock = CHILDREN.start(
            "mock",
            [sys.executable, str(MOCK), "--host", HOST, "--port", str(mock_port)],
            log_path=mock_log,
            env=_child_env(),
        )
        wait_http_ok(f"http://{HOST}:{mock_port}/health", mock, 20.0)
        log(f"mock upstream on {HOST}:{mock_port} (pid {mock.pid})")

        direct = Target(
            "direct",
            f"http://{HOST}:{mock_port}/v1/chat/completions",
            UPSTREAM_MODEL,
            "sk-bench",
        )
        preflight(direct)
        targets.append(direct)
        log("direct ...")
        points["direct"] = measure(direct, args, wrk, workdir, mock, mock_port)

        legs: list[tuple[str, float | None]] = []
        if not args.skip_shipyard:
            legs.append(("shipyard", None))
            if args.shadow_sample > 0:
                legs.append(("shipyard+shadow", args.shadow_sample))
        for name, sample in legs:
            log(f"{name}: starting ...")
            ship = start_shipyard(args, workdir, mock_port, name, sample)
            targets.append(ship)
            if ship.status == "ok":
                log(f"{name} ready in {ship.startup_s:.1f} s (pid {ship.proc.pid})")
                points[name] = measure(ship, args, wrk, workdir, mock, mock_port)
                if ship.proc.poll() is None:
                    ship.memory = memory_report(ship.proc.pid)
                    log(
                        f"{name} RSS {ship.memory['rss_mb']:.1f} MB, peak {ship.memory['hwm_mb']:.1f} MB"
                    )
                rc = CHILDREN.stop(ship.proc, timeout=20.0)
                rows = store_rows(workdir / f"{name}.db")
                shown = {
                    k: v for k, v in rows.items() if k in ("traces", "spans", "shadow_results")
                } or rows
                if rows:
                    rows = shown
                    ship.notes.append(
                        "recorded rows in the SQLite store: "
                        + ", ".join(f"{k}={v:,}" for k, v in sorted(rows.items()))
                    )
                else:
                    ship.notes.append("SQLite store empty or missing after the run")
                if rc not in (0, None, -signal.SIGTERM):
                    ship.notes.append(f"exit code {rc} on SIGTERM")
            else:
                log(f"{name} {ship.status}: {ship.reason}")

        if not args.skip_litellm:
            log("litellm: starting ...")
            lite = start_litellm(args, workdir, mock_port)
            targets.append(lite)
            if lite.status == "ok":
                log(f"litellm ready in {lite.startup_s:.1f} s (pid {lite.proc.pid})")
                points["litellm"] = measure(lite, args, wrk, workdir, mock, mock_port)
                if lite.proc.poll() is None:
                    lite.memory = memory_report(lite.proc.pid)
                CHILDREN.stop(lite.proc)
            else:
                log(f"litellm {lite.status}: {lite.reason}")
        CHILDREN.stop(mock)
    except KeyboardInterrupt:
        log("interrupted: stopping child processes")
        CHILDREN.stop_all()
        return 130
    finally:
        CHILDREN.stop_all()
        if not args.keep_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")

    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": machine_note(),
        "wrk": wrk_version[0] if wrk_version else "wrk",
        "loadavg": loadavg0,
    }
    table, summary = build_report(targets, points, meta)
    notes = notes_block(targets, points)
    wrk_flags = " / ".join(f"`-t{threads_for(c)} -c{c}`" for c in args.concurrency)
    section = "\n".join(
        [
            "## gateway_overhead",
            "",
            f"Date: {meta['date']}  ",
            f"Command: `{command}`  ",
            (
                f"Machine: {meta['machine']}. **The load generator ({meta['wrk']}), the mock upstream and the gateway "
                "all share these 2 cores**, so a gateway never has a core to itself: its throughput is what is left "
                "beside wrk and the mock (see the CPU columns), and a dedicated box would do better."
            ),
            "",
            (
                f"Method: each point is wrk {wrk_flags} for {args.duration:g} s after a "
                f"{args.warmup:g} s warm-up, POSTing a small non-streaming chat completion over "
                "keep-alive connections on loopback. The mock upstream "
                "(`bench/gateway_overhead/mock_upstream.py`, raw asyncio protocol on uvloop, own "
                "process) returns a fixed response with usage. Latency percentiles are per request "
                "(wrk's 1 µs histogram with its coordinated-omission correction undone); added = "
                "gateway minus direct at the same concurrency. At c=10 and c=50 a saturated "
                "gateway's latency is mostly queueing (≈ c / throughput). CPU columns are % of one "
                "core over the measured window (other = the rest of the machine); gateway RSS is "
                "VmRSS right after the point. Shipyard: one worker, recording ON to SQLite in a "
                "temp dir; shipyard+shadow is the same with the alias mirroring "
                f"{args.shadow_sample:g} of its calls to a candidate model on the mock in the "
                f"background (0 = leg skipped). LiteLLM: `litellm[proxy]=={LITELLM_VERSION}`, `--num_workers 1`, no "
                "database, LITELLM_LOG=ERROR, telemetry off. Each gateway runs alone while it is "
                "measured."
            ),
            "",
            table,
            "",
            *load_warning(points, meta),
            notes,
            "",
        ]
    )
    print()
    print(section)
    if not args.no_write:
        out = Path(args.out)
        write_results(out, section)
        log(f"updated {out}")
    if args.json:
        raw = {
            "meta": meta,
            "summary": summary,
            "targets": [
                {k: v for k, v in t.__dict__.items() if k != "proc"} for t in targets
            ],
            "points": {k: [p.__dict__ for p in v] for k, v in points.items()},
        }
        Path(args.json).write_text(json.dumps(raw, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
