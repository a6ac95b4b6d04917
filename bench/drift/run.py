"""Drift benchmark: 100,000 production records against a 5,000-item reference dataset.

Populates a SQLite store (in a temp dir) once through the real store API: the reference as
an eval dataset (shipyard.evals.datasets), production as llm spans (store.write_spans) over
the last 7 days with a 5% new topic injected. Then runs `run_analysis` once per
configuration, each in a fresh subprocess, and reports wall time per phase and the
process's peak RSS (plus its RSS after imports, so the analysis's own share is visible).

    python bench/drift/run.py                      # light @2000, light @10000, minilm @2000
    python bench/drift/run.py --records 20000 --reference 2000 --configs light:2000
    python bench/drift/run.py --no-write --json /tmp/drift-bench.json

The semantic part works on a uniform sample of at most N records per window (the cap);
structural descriptors always use every record. MiniLM needs the 'embeddings' extra; when
it is missing its row says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
DAY = 86400.0


def populate(url: str, n_cur: int, n_ref: int, new_topic: float) -> dict[str, float]:
    sys.path.insert(0, str(HERE))
    import synth

    from shipyard.evals.datasets import Datasets
    from shipyard.store import open_store

    store = open_store(url)
    now = time.time()
    t0 = time.perf_counter()
    Datasets(store).create("support", synth.dataset_items(synth.make_records(n_ref, seed=1)))
    t1 = time.perf_counter()
    step = 10_000
    for i in range(0, n_cur, step):
        chunk = synth.make_records(min(step, n_cur - i), seed=1000 + i, new_topic=new_topic)
        lo = now - 7 * DAY + 60 + (7 * DAY - 120) * i / n_cur
        hi = now - 7 * DAY + 60 + (7 * DAY - 120) * (i + len(chunk)) / n_cur
        synth.write_window(store, chunk, lo, hi)
    t2 = time.perf_counter()
    store.close()
    return {"dataset_s": round(t1 - t0, 1), "spans_s": round(t2 - t1, 1)}


CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy, scipy, sklearn
from shipyard.drift import run_analysis
from shipyard.drift.embedders import get_embedder
url, embedder, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
from shipyard.store import open_store
store = open_store(url)
emb = get_embedder(embedder)
if embedder == "minilm":
    emb.embed(["warm up"])
base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.perf_counter()
s = run_analysis(store, "dataset:support", "8d", embedder=emb, max_semantic=cap)  # 8d: all spans, however long the run
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
new = [c for c in s["semantic"]["input"]["topics"]["clusters"] if c["status"] == "new"]
print(json.dumps({
    "load_s": round(t1 - t0, 2), "analysis_s": round(t2 - t1, 2), "timings": s["timings"],
    "base_rss_mb": round(base_rss / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
    "verdict": s["verdict"], "drifted": s["drifted"], "records": [s["reference"]["records"], s["current"]["records"]],
    "new_topic_share": s["semantic"]["input"]["topics"].get("new_share"),
    "new_examples": [c["examples"][0] for c in new if c["examples"]][:2],
    "auc_input": s["semantic"]["input"]["domain_classifier"].get("statistic"),
}))
"""


def run_config(url: str, embedder: str, cap: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", CHILD, url, embedder, str(cap)], capture_output=True, text=True,
                          env=env, timeout=3600)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"error": err[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[tuple[str, int, dict]]) -> str:
    out = ["| embedder | semantic cap / window | read + structural (s) | semantic (s) | analysis total (s) | "
           "peak RSS (MB) | RSS before analysis (MB) | verdict | new-topic share found |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for emb, cap, r in rows:
        if "error" in r:
            out.append(f"| {emb} | {cap} | – | – | – | – | – | unavailable: {r['error']} | – |")
            continue
        t = r["timings"]
        structural = t["read_reference_s"] + t["read_current_s"] + t["structural_s"]
        out.append(f"| {emb} | {cap:,} | {structural:.1f} | {t['semantic_s']:.1f} | {r['analysis_s']:.1f} | "
                   f"{r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} | {r['verdict']} | "
                   f"{(r['new_topic_share'] or 0) * 100:.1f}% |")
    return "\n".join(out)


def write_section(text: str, path: Path) -> None:
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## drift\n.*?(?=^## |\Z)", re.S | re.M)
    section = text.rstrip() + "\n\n"
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    path.write_text(new)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000, help="production records (default 100000)")
    ap.add_argument("--reference", type=int, default=5_000, help="reference dataset items (default 5000)")
    ap.add_argument("--new-topic", type=float, default=0.05, help="share of a new topic in production (0.05)")
    ap.add_argument("--configs", default="light:2000,light:10000,minilm:2000",
                    help="embedder:cap,... (default light:2000,light:10000,minilm:2000)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    url = f"sqlite:///{tmp}/bench.db"
    print(f"populating {url}: {args.reference} reference items, {args.records} production spans ...", flush=True)
    pop = populate(url, args.records, args.reference, args.new_topic)
    size_mb = (tmp / "bench.db").stat().st_size / 2 ** 20
    print(f"  done: dataset {pop['dataset_s']} s, spans {pop['spans_s']} s, store {size_mb:.0f} MB", flush=True)
    rows = []
    load = [os.getloadavg()[0]]
    for spec in args.configs.split(","):
        emb, _, cap = spec.partition(":")
        print(f"running {emb} (semantic cap {cap}) ...", flush=True)
        r = run_config(url, emb, int(cap or 2000))
        print("  " + json.dumps(r)[:600], flush=True)
        rows.append((emb, int(cap or 2000), r))
        load.append(os.getloadavg()[0])
    text = table(rows)
    print(text)
    first = next((r for _, _, r in rows if "error" not in r), None)
    cmd = "python bench/drift/run.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    try:
        import numpy  # noqa: F401  (loads BLAS, so threadpoolctl can see it)
        import threadpoolctl

        blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('num_threads')} threads)"
                         for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas")
    except Exception:  # pragma: no cover
        blas = "unknown"
    section = f"""## drift

{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} · `{cmd}` · {platform.machine()}, {os.cpu_count()} cores,
Python {platform.python_version()}, BLAS: {blas}. Machine shared and noisy: compare rows, not absolute times
(1-minute load average during the run: {min(load):.1f}–{max(load):.1f} on {os.cpu_count()} cores).

{args.records:,} production llm spans (last 7 days; {args.new_topic:.0%} of them on a topic the reference never
saw) against a {args.reference:,}-item reference dataset, in SQLite ({size_mb:.0f} MB; populated in
{pop['dataset_s'] + pop['spans_s']:.0f} s through the store API). `shipyard drift report --reference dataset:support
--current 8d` work, one fresh process per row. Structural descriptors (lengths, JSON/schema, casing, language,
non-dictionary words, refusals, empties, tool calls, latency, cost) use **every** record; the semantic part
(domain classifier + topic clusters, inputs and outputs) uses a uniform reservoir sample of at most *cap*
records per window — the product default is 2,000. MiniLM runs on CPU (torch 2.13.0 CPU build), model loaded
before the clock starts.

{text}

Verdict and findings: {', '.join(first['drifted']) if first else 'n/a'}.
"""
    if first and first.get("new_examples"):
        section += "Example inputs of the new topic as listed: " + "; ".join(
            f"“{e}”" for e in first["new_examples"]) + ".\n"
    if args.json:
        Path(args.json).write_text(json.dumps({"populate": pop, "rows": rows}, indent=2))
    if not args.no_write:
        write_section(section, Path(args.out))
        print(f"wrote the drift section of {args.out}")
    if not args.keep_tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
