"""Eval runner throughput and memory: N cases x 2 variants against a loopback mock upstream.

    python bench/evals/run.py                       # 10,000 cases x 2 variants at concurrency 64
    python bench/evals/run.py --cases 2000 --sizes 500 --no-write
    python bench/evals/run.py --sizes 1000,100000   # the memory-flatness check at 100k cases

What it does, in a temp dir: starts bench/gateway_overhead/mock_upstream.py (its own
process, fixed answer with usage), imports a JSONL dataset of N cases with
``shipyard datasets import``, then runs ``shipyard eval run`` (in-process gateway,
recording every case's trace to SQLite, five code assertions per case, results streamed
to the same SQLite store) and measures wall time, the runner's own time and the run's
peak RSS (``ru_maxrss`` of that process, from ``wait4``). The same run at the smaller
``--sizes`` shows whether memory stays flat as the dataset grows.

Then the same cases through promptfoo and DeepEval, if they can be installed here:
promptfoo with ``npm i promptfoo`` into ``--promptfoo-dir`` (default /tmp/bench-promptfoo),
DeepEval with ``pip install deepeval`` into a throwaway venv (``--deepeval-venv``, default
/tmp/bench-deepeval-venv). Each is run on the same mock, the same prompts, the same
assertion (answer contains the expected text) and concurrency; when one cannot be
installed or run offline the results say so. Writes the "## evals" section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MOCK = REPO / "bench" / "gateway_overhead" / "mock_upstream.py"
ANSWER = "Hello! This is a fixed benchmark reply."
MODEL = "gpt-4o-mini-2024-07-18"


def start_mock() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(MOCK), "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.match(r"READY (\d+)", line or "")
    if not m:
        proc.kill()
        raise RuntimeError(f"mock upstream did not start: {line!r}")
    return proc, int(m.group(1))


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run a command; wall time, exit code, peak RSS (MiB) of that process, output."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_f = tempfile.TemporaryFile("w+")
    err_f = tempfile.TemporaryFile("w+")
    import threading

    def pump(src, dst):
        for chunk in iter(lambda: src.read(65536), ""):
            dst.write(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out_f)),
               threading.Thread(target=pump, args=(proc.stderr, err_f))]
    for t in threads:
        t.start()
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in threads:
        t.join()
    out_f.seek(0)
    err_f.seek(0)
    return {"wall_s": wall, "rc": proc.returncode, "peak_rss_mib": usage.ru_maxrss / 1024,
            "stdout": out_f.read(), "stderr": err_f.read()}


def shipyard_env() -> dict:
    env = {**os.environ}
    env.pop("SHIPYARD_CONFIG", None)
    return env


def bench_shipyard(tmp: Path, port: int, n: int, concurrency: int) -> dict:
    import yaml

    work = tmp / f"shipyard-{n}"
    work.mkdir()
    (work / "shipyard.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:///shipyard.db",
        "providers": {"mock": {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key": "k"}},
        "models": {"mock": {"targets": [{"provider": "mock", "model": MODEL}], "retries": 0}},
        "prices": {MODEL: {"input": 0.15, "output": 0.6}},
    }))
    with open(work / "cases.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"case{i:06}", "variables": {"topic": f"topic number {i}"},
                                "expected": "fixed benchmark reply"}) + "\n")
    (work / "eval.yaml").write_text(yaml.safe_dump({
        "name": "bench", "config": "shipyard.yaml", "dataset": "bench",
        "prompts": {"plain": {"prompt": "Say hello about {{ topic }}."},
                    "system": {"system": "You are terse.", "prompt": "Greet me; the topic is {{ topic }}."}},
        "models": ["mock"], "concurrency": concurrency,
        "evaluators": [{"type": "contains"}, {"type": "regex", "pattern": "^Hello"},
                       {"type": "length", "max": 200}, {"type": "latency", "max_ms": 10000},
                       {"type": "cost", "max_usd": 0.01}],
    }))
    cli = [sys.executable, "-m", "shipyard.cli"]
    imp = run_measured([*cli, "datasets", "import", "bench", "cases.jsonl", "-c", "shipyard.yaml"], work,
                       shipyard_env())
    if imp["rc"] != 0:
        raise RuntimeError("dataset import failed: " + imp["stderr"][-2000:])
    r = run_measured([*cli, "eval", "run", "eval.yaml", "--no-progress", "--json", "report.json"], work,
                     shipyard_env())
    if r["rc"] != 0:
        raise RuntimeError(f"eval run failed ({r['rc']}): " + r["stderr"][-3000:])
    m = re.search(r"(\d+) run now in ([\d.]+) s", r["stderr"])
    ran, inner = (int(m.group(1)), float(m.group(2))) if m else (2 * n, r["wall_s"])
    report = json.loads((work / "report.json").read_text())
    passed = sum(v["passed"] for v in report["variants"])
    import sqlite3

    con = sqlite3.connect(work / "shipyard.db")
    spans = con.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    con.close()
    return {"tool": "shipyard", "cases": n, "calls": ran, "wall_s": r["wall_s"], "run_s": inner,
            "cases_per_s": ran / inner, "cases_per_s_wall": ran / r["wall_s"], "peak_rss_mib": r["peak_rss_mib"],
            "passed": passed, "import_s": imp["wall_s"], "spans": spans,
            "db_mib": (work / "shipyard.db").stat().st_size / 2**20}


# ---- promptfoo -------------------------------------------------------------------------------

def ensure_promptfoo(dirpath: Path) -> tuple[Path | None, str]:
    binary = dirpath / "node_modules" / ".bin" / "promptfoo"
    if binary.exists():
        return binary, ""
    if not shutil.which("npm"):
        return None, "npm is not installed"
    dirpath.mkdir(parents=True, exist_ok=True)
    if not (dirpath / "package.json").exists():
        subprocess.run(["npm", "init", "-y"], cwd=dirpath, capture_output=True)
    r = subprocess.run(["npm", "i", "promptfoo"], cwd=dirpath, capture_output=True, text=True, timeout=1500)
    if r.returncode != 0 or not binary.exists():
        return None, "npm i promptfoo failed: " + (r.stderr or r.stdout)[-300:].strip()
    return binary, ""


def bench_promptfoo(binary: Path, tmp: Path, port: int, n: int, concurrency: int) -> dict:
    import yaml

    work = tmp / f"promptfoo-{n}"
    work.mkdir()
    with open(work / "tests.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"vars": {"topic": f"topic number {i}"},
                                "assert": [{"type": "contains", "value": "fixed benchmark reply"}]}) + "\n")
    (work / "promptfooconfig.yaml").write_text(yaml.safe_dump({
        "description": "bench",
        "prompts": ["Say hello about {{ topic }}.", "Greet me; the topic is {{ topic }}."],
        "providers": [{"id": f"openai:chat:{MODEL}",
                       "config": {"apiBaseUrl": f"http://127.0.0.1:{port}/v1", "apiKey": "k"}}],
        "tests": "file://tests.jsonl",
    }))
    env = {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
           "PROMPTFOO_DISABLE_SHARING": "1", "PROMPTFOO_CONFIG_DIR": str(work / ".promptfoo"),
           "OPENAI_API_KEY": "k", "PROMPTFOO_DISABLE_REDTEAM_REMOTE_GENERATION": "1"}
    r = run_measured([str(binary), "eval", "-c", "promptfooconfig.yaml", "--no-cache", "--no-progress-bar",
                      "-j", str(concurrency), "-o", "out.json", "--no-table", "--no-write"], work, env, timeout=3600)
    if not (work / "out.json").exists():
        raise RuntimeError(f"promptfoo exited {r['rc']}: " + (r["stderr"] or r["stdout"])[-600:].strip())
    data = json.loads((work / "out.json").read_text())
    stats = (data.get("results") or {}).get("stats") or {}
    calls = (stats.get("successes") or 0) + (stats.get("failures") or 0) + (stats.get("errors") or 0)
    return {"tool": "promptfoo", "cases": n, "calls": calls, "wall_s": r["wall_s"], "run_s": r["wall_s"],
            "cases_per_s": calls / r["wall_s"], "cases_per_s_wall": calls / r["wall_s"],
            "peak_rss_mib": r["peak_rss_mib"], "passed": stats.get("successes"), "rc": r["rc"]}


# ---- DeepEval --------------------------------------------------------------------------------

DEEPEVAL_SCRIPT = r'''
import asyncio, json, sys, time, os
from openai import AsyncOpenAI
from deepeval import evaluate
from deepeval.metrics import BaseMetric
from deepeval.test_case import LLMTestCase

port, n, conc = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
PROMPTS = ["Say hello about {topic}.", "Greet me; the topic is {topic}."]


class Contains(BaseMetric):
    def __init__(self, value):
        self.value, self.threshold = value, 0.5

    def measure(self, test_case, *a, **k):
        self.success = self.value in (test_case.actual_output or "")
        self.score = 1.0 if self.success else 0.0
        return self.score

    async def a_measure(self, test_case, *a, **k):
        return self.measure(test_case)

    def is_successful(self):
        return self.success

    @property
    def __name__(self):
        return "Contains"


async def generate():
    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    sem = asyncio.Semaphore(conc)

    async def one(i, p):
        async with sem:
            prompt = PROMPTS[p].format(topic=f"topic number {i}")
            r = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
            return LLMTestCase(input=prompt, actual_output=r.choices[0].message.content,
                               expected_output="fixed benchmark reply")

    return await asyncio.gather(*(one(i, p) for i in range(n) for p in range(2)))


t0 = time.monotonic()
cases = asyncio.run(generate())
t1 = time.monotonic()
kwargs = {}
try:
    from deepeval.evaluate.configs import AsyncConfig, DisplayConfig, CacheConfig
    kwargs = {"async_config": AsyncConfig(max_concurrent=conc), "display_config": DisplayConfig(show_indicator=False,
              print_results=False), "cache_config": CacheConfig(write_cache=False, use_cache=False)}
except Exception:
    kwargs = {"max_concurrent": conc, "show_indicator": False, "print_results": False}
res = evaluate(test_cases=cases, metrics=[Contains("fixed benchmark reply")], **kwargs)
t2 = time.monotonic()
passed = sum(1 for r in res.test_results if r.success)
print(json.dumps({"calls": len(cases), "generate_s": t1 - t0, "evaluate_s": t2 - t1, "passed": passed}))
'''


def ensure_deepeval(venv: Path) -> tuple[Path | None, str]:
    py = venv / "bin" / "python"
    # (importing deepeval creates a .deepeval folder in the working directory: not in the repo)
    if py.exists() and subprocess.run([str(py), "-c", "import deepeval"], capture_output=True,
                                      cwd=tempfile.gettempdir()).returncode == 0:
        return py, ""
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode != 0:
        return None, "venv failed: " + r.stderr[-300:]
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "deepeval"], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        return None, "pip install deepeval failed: " + r.stderr[-300:].strip()
    return py, ""


def bench_deepeval(py: Path, tmp: Path, port: int, n: int, concurrency: int) -> dict:
    work = tmp / f"deepeval-{n}"
    work.mkdir()
    (work / "bench_deepeval.py").write_text(DEEPEVAL_SCRIPT)
    env = {**os.environ, "DEEPEVAL_TELEMETRY_OPT_OUT": "YES", "DEEPEVAL_UPDATE_WARNING_OPT_IN": "NO",
           "ERROR_REPORTING": "NO", "OPENAI_API_KEY": "k", "HOME": str(work)}
    r = run_measured([str(py), "bench_deepeval.py", str(port), str(n), str(concurrency)], work, env, timeout=3600)
    line = next((ln for ln in reversed(r["stdout"].splitlines()) if ln.startswith("{")), None)
    if r["rc"] != 0 or line is None:
        raise RuntimeError(f"deepeval exited {r['rc']}: " + (r["stderr"] or r["stdout"])[-600:].strip())
    d = json.loads(line)
    inner = d["generate_s"] + d["evaluate_s"]
    return {"tool": "deepeval", "cases": n, "calls": d["calls"], "wall_s": r["wall_s"], "run_s": inner,
            "cases_per_s": d["calls"] / inner, "cases_per_s_wall": d["calls"] / r["wall_s"],
            "peak_rss_mib": r["peak_rss_mib"], "passed": d["passed"], "generate_s": d["generate_s"],
            "evaluate_s": d["evaluate_s"]}


# ---- report ----------------------------------------------------------------------------------

def machine_note() -> str:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 2**20:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}), {mem}, Linux {platform.release()}, Python {platform.python_version()}"


def section(cmd: str, rows: list[dict], notes: list[str], load: str) -> str:
    out = ["## evals", "",
           f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
           f"Command: `{cmd}`  ",
           f"Machine: {machine_note()}. The mock upstream, the runner and (for promptfoo) node share these cores. "
           f"Load average when the run started: {load}.", "",
           "Method: each case is a real call through the tool to `bench/gateway_overhead/mock_upstream.py` on "
           "loopback (fixed answer, own process), 2 prompt variants per case, concurrency as given. Shipyard: "
           "`shipyard eval run` with the in-process gateway, every case recorded as a trace (root span, llm span, "
           "one evaluator span holding the assertions' results) and its results streamed to SQLite, 5 code assertions per case "
           "(contains, regex, length, latency, cost). promptfoo: `promptfoo eval -j CONC --no-cache --no-write`, "
           "one `contains` assertion. DeepEval: it does not call the model itself, so the harness generates with "
           "the openai SDK (AsyncOpenAI, same concurrency) and then runs `deepeval.evaluate` with a code metric "
           "(contains). cases/s (run) = calls / the tool's own run time (Shipyard: the runner's time without "
           "process start-up; DeepEval: generation + evaluate; promptfoo: no separate figure, so its wall time); "
           "cases/s (wall) = calls / the whole process's wall time, start-up included. Peak RSS is the maxrss of "
           "the measured process (for promptfoo, the node process).", "",
           "| tool | dataset cases | calls (cases x variants) | cases/s (run) | cases/s (wall) | wall s | "
           "peak RSS MiB | passed | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        note = r.get("note", "")
        out.append(f"| {r['tool']} | {r['cases']:,} | {r['calls']:,} | {r['cases_per_s']:,.0f} | "
                   f"{r['cases_per_s_wall']:,.0f} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                   f"{r.get('passed', '-')} | {note} |")
    out.append("")
    for n in notes:
        out.append(f"- {n}")
    return "\n".join(out) + "\n"


def write_results(path: Path, text: str) -> None:
    cur = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts under bench/; see bench/README.md.\n"
    pattern = re.compile(r"^## evals\b.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(cur):
        cur = pattern.sub(lambda _m: text.rstrip() + "\n\n", cur, count=1)
    else:
        cur = cur.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(cur.rstrip() + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--sizes", default="1000", help="extra (smaller or larger) dataset sizes for the memory check")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--skip-promptfoo", action="store_true")
    ap.add_argument("--skip-deepeval", action="store_true")
    ap.add_argument("--promptfoo-dir", default="/tmp/bench-promptfoo")
    ap.add_argument("--deepeval-venv", default="/tmp/bench-deepeval-venv")
    ap.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    cmd = "python bench/evals/run.py " + " ".join(sys.argv[1:])
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    tmp = Path(tempfile.mkdtemp(prefix="bench-evals-"))
    mock, port = start_mock()
    rows: list[dict] = []
    notes: list[str] = []
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else []
        for n in sorted(set(sizes + [args.cases])):
            print(f"shipyard: {n} cases x 2 variants ...", file=sys.stderr, flush=True)
            r = bench_shipyard(tmp, port, n, args.concurrency)
            r["note"] = f"{r['spans']:,} spans recorded, store {r['db_mib']:.0f} MiB; import {r['import_s']:.1f} s"
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "note"}), file=sys.stderr, flush=True)
        if not args.skip_promptfoo:
            binary, why = ensure_promptfoo(Path(args.promptfoo_dir))
            if binary is None:
                notes.append(f"promptfoo: not measured — {why}")
            else:
                try:
                    r = bench_promptfoo(binary, tmp, port, args.cases, args.concurrency)
                    ver = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.strip()
                    r["note"] = f"promptfoo {ver}"
                    rows.append(r)
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    notes.append(f"promptfoo: installed but did not run here — {exc}")
        if not args.skip_deepeval:
            py, why = ensure_deepeval(Path(args.deepeval_venv))
            if py is None:
                notes.append(f"DeepEval: not measured — {why}")
            else:
                try:
                    r = bench_deepeval(py, tmp, port, args.cases, args.concurrency)
                    ver = subprocess.run([str(py), "-c", "import deepeval; print(deepeval.__version__)"],
                                         capture_output=True, text=True, cwd=tmp).stdout.strip()
                    r["note"] = (f"deepeval {ver}; generate {r['generate_s']:.1f} s + evaluate "
                                 f"{r['evaluate_s']:.1f} s; no traces or stored results")
                    rows.append(r)
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"DeepEval: installed but did not run here — {exc}")
    finally:
        mock.terminate()
        mock.wait(10)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    ship = [r for r in rows if r["tool"] == "shipyard"]
    if len(ship) > 1:
        lo, hi = ship[0], ship[-1]
        notes.append(f"Memory flatness: peak RSS {lo['peak_rss_mib']:.0f} MiB at {lo['cases']:,} cases vs "
                     f"{hi['peak_rss_mib']:.0f} MiB at {hi['cases']:,} cases ({hi['cases'] // max(1, lo['cases'])}x "
                     "the cases).")
    text = section(cmd, rows, notes, load)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "notes": notes}, indent=2, default=str))
    if not args.no_write:
        write_results(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
