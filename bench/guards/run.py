"""Guard quality and latency benchmark on the project's own labelled data.

    python bench/guards/run.py            # prints the table, rewrites "## guards" in bench/RESULTS.md
    python bench/guards/run.py --no-write

Per guard: precision, recall, F1 on its labelled set and p50/p99 latency of one check.
The injection set is split in two (data_injection.py): *dev* was used while writing the
patterns, *test* was held out; both are reported. The PII texts are generated: seed 11 is
*dev* (used to fix the patterns), seed 7 is *test*. Latency is wall time on a shared
2-core machine (the load average is printed with the figures).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data_injection  # noqa: E402
import data_misc  # noqa: E402
import data_pii  # noqa: E402

from shipyard.guards.base import GuardContext  # noqa: E402
from shipyard.guards.normalize import deobfuscate, plain  # noqa: E402
from shipyard.guards.registry import build_guard  # noqa: E402

RESULTS = HERE.parent / "RESULTS.md"


def clear_caches() -> None:
    """Guards share a normalisation cache per message; a repeat must not hit it."""
    plain.cache_clear()
    deobfuscate.cache_clear()


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[Any, list[float]]:
    out, times = None, []
    for _ in range(repeat):
        clear_caches()
        t0 = time.perf_counter_ns()
        out = fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return out, times


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


class Row:
    def __init__(self, name: str, data: str, tp: int, fp: int, fn: int, tn: int | None, lat: list[float],
                 note: str = "") -> None:
        self.name, self.data, self.tp, self.fp, self.fn, self.tn, self.lat, self.note = \
            name, data, tp, fp, fn, tn, lat, note

    def cells(self) -> list[str]:
        p, r, f = prf(self.tp, self.fp, self.fn)
        fpr = f"{self.fp / (self.fp + self.tn):.3f}" if self.tn is not None and self.fp + self.tn else "–"
        n = self.tp + self.fn + (self.fp + (self.tn or 0))
        return [self.name, self.data, str(n), f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", fpr,
                f"{pct(self.lat, 50):.3f}", f"{pct(self.lat, 99):.3f}", self.note]


def bench_injection(rows: list[Row], detail: list[str]) -> None:
    g = build_guard({"name": "prompt_injection"}, "input", "bench")
    for part in ("dev", "test"):
        data = data_injection.labelled(part)
        tp = fp = fn = tn = 0
        lat: list[float] = []
        misses: dict[str, list[int]] = {}
        for cat, role, text, label in data:
            v, ts = timed(lambda: g.check(text, None, role))
            lat += ts
            hit = not v.passed
            c = misses.setdefault(("attack:" if label else "benign:") + cat, [0, 0])
            c[1] += 1
            if label and hit:
                tp += 1
            elif label:
                fn += 1
                c[0] += 1
            elif hit:
                fp += 1
                c[0] += 1
            else:
                tn += 1
        rows.append(Row("prompt_injection", f"injection/{part}", tp, fp, fn, tn, lat))
        detail.append(f"- injection/{part}, errors per category (missed attacks / false alarms): " + ", ".join(
            f"{k} {e}/{n}" for k, (e, n) in sorted(misses.items()) if e) + ("" if any(e for e, _ in misses.values())
                                                                             else "none"))


def bench_pii(rows: list[Row], detail: list[str], part: str) -> None:
    g = build_guard({"name": "pii"}, "input", "bench")
    samples = data_pii.samples(seed=data_pii.SEEDS[part])
    per: dict[str, list[int]] = {k: [0, 0, 0] for k in data_pii.GENERATORS}  # tp, fp, fn
    lat: list[float] = []
    exact = total = 0
    for text, gold in samples:
        found, ts = timed(lambda: g.find(text))
        lat += ts
        used: set[int] = set()
        for s, e, k in gold:
            total += 1
            match = next((i for i, f in enumerate(found) if i not in used and f.entity == k
                          and f.start < e and s < f.end), None)
            if match is None:
                per[k][2] += 1
            else:
                used.add(match)
                per[k][0] += 1
                exact += found[match].start == s and found[match].end == e
        for i, f in enumerate(found):
            if i not in used:
                per[f.entity][1] += 1
    tp = sum(v[0] for v in per.values())
    fp = sum(v[1] for v in per.values())
    fn = sum(v[2] for v in per.values())
    rows.append(Row("pii", f"pii/{part} ({len(samples)} texts, {total} entities)", tp, fp, fn, None, lat,
                    f"exact spans {exact}/{tp}"))
    detail.append(f"- pii/{part} per entity (precision / recall): " + ", ".join(
        f"{k} {prf(*v)[0]:.2f}/{prf(*v)[1]:.2f}" for k, v in sorted(per.items())))


def bench_binary(rows: list[Row], name: str, spec: dict[str, Any], pos: list[str], neg: list[str],
                 note: str = "") -> None:
    g = build_guard(spec, "input", "bench")
    tp = fp = fn = tn = 0
    lat: list[float] = []
    for label, texts in ((1, pos), (0, neg)):
        for t in texts:
            v, ts = timed(lambda: g.check(t, None, "user"))
            lat += ts
            hit = not v.passed
            tp += label and hit
            fn += label and not hit
            fp += (not label) and hit
            tn += (not label) and not hit
    rows.append(Row(spec["name"] + ("" if "backend" not in spec else f" ({spec['backend']})"), name,
                    tp, fp, fn, tn, lat, note))


def bench_groundedness(rows: list[Row]) -> None:
    g = build_guard({"name": "groundedness"}, "output", "bench")
    tp = fp = fn = tn = 0
    lat: list[float] = []
    for context, answer, label in data_misc.GROUNDEDNESS:
        ctx = GuardContext(stage="output", alias="bench", body={"messages": []}, metadata={},
                           action="flag", context_docs=[context])
        v, ts = timed(lambda: g.check(answer, ctx, "assistant"))
        lat += ts
        hit = not v.passed
        tp += label and hit
        fn += label and not hit
        fp += (not label) and hit
        tn += (not label) and not hit
    rows.append(Row("groundedness", "groundedness (20 pairs)", tp, fp, fn, tn, lat))


def bench_combined(detail: list[str]) -> tuple[float, float, float, float]:
    """All heuristic input guards on one message, as the request path runs them."""
    guards = [build_guard(s, "input", "bench") for s in (
        {"name": "prompt_injection"}, {"name": "pii"}, {"name": "banned_topics", "topics": ["gambling", "weapons"]},
        {"name": "max_tokens", "limit": 4000}, {"name": "toxicity"})]
    ctx = GuardContext(stage="input", alias="bench", body={"messages": []}, metadata={}, action="block")
    prompts = [t for _, _, t, _ in data_injection.labelled("all")] + [t for t, _ in data_pii.samples(seed=7)]
    ordinary = data_injection.ORDINARY + data_injection.SECURITY_EDUCATION + data_injection.TRICKY_BENIGN
    longs = []
    for i in range(40):  # 1,500-2,000 character prompts built from ordinary ones
        parts, n = [], 0
        j = i
        while n < 1500 + (i * 12):
            p = ordinary[j % len(ordinary)]
            parts.append(p)
            n += len(p) + 1
            j += 7
        longs.append(" ".join(parts)[:1999])
    for g in guards:  # warm up
        g.check_messages([{"role": "user", "content": "warm up"}], ctx)

    def run(texts: list[str]) -> tuple[list[float], list[float], dict[str, list[float]]]:
        wall, cpu = [], []
        per: dict[str, list[float]] = {g.name: [] for g in guards}
        for t in texts:
            msgs = [{"role": "user", "content": t}]
            for _ in range(3):
                clear_caches()
                t0, c0 = time.perf_counter_ns(), time.process_time_ns()
                for g in guards:
                    g0 = time.perf_counter_ns()
                    g.check_messages(msgs, ctx)
                    per[g.name].append((time.perf_counter_ns() - g0) / 1e6)
                wall.append((time.perf_counter_ns() - t0) / 1e6)
                cpu.append((time.process_time_ns() - c0) / 1e6)
        return wall, cpu, per

    short, short_cpu, _ = run([p for p in prompts if len(p) < 2000])
    long, long_cpu, per = run(longs)
    detail.append(f"- all five heuristic input guards together (injection, pii, banned_topics, max_tokens, "
                  f"toxicity) on one message: {len(short) // 3} benchmark prompts p50 {pct(short, 50):.3f} ms / "
                  f"p99 {pct(short, 99):.3f} ms wall (CPU p50 {pct(short_cpu, 50):.3f} ms); {len(longs)} prompts "
                  f"of 1,500-2,000 characters p50 {pct(long, 50):.3f} ms / p99 {pct(long, 99):.3f} ms wall "
                  f"(CPU p50 {pct(long_cpu, 50):.3f} ms; per guard p50: "
                  + ", ".join(f"{k} {pct(v, 50):.2f}" for k, v in per.items()) + "). Target: p50 < 5 ms.")
    return pct(short, 50), pct(short, 99), pct(long, 50), pct(long, 99)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows: list[Row] = []
    detail: list[str] = []
    bench_injection(rows, detail)
    bench_pii(rows, detail, "dev")
    bench_pii(rows, detail, "test")
    bench_binary(rows, "toxicity (30+30)", {"name": "toxicity"}, data_misc.TOXIC, data_misc.NOT_TOXIC)
    try:
        import profanity_check  # noqa: F401

        bench_binary(rows, "toxicity (30+30)", {"name": "toxicity", "backend": "ml"}, data_misc.TOXIC,
                     data_misc.NOT_TOXIC, "alt-profanity-check")
    except ImportError:
        detail.append("- toxicity (ml): alt-profanity-check not installed, skipped")
    bench_binary(rows, "topics (20+20)", data_misc.TOPICS_CONFIG, data_misc.TOPIC_HITS, data_misc.TOPIC_MISSES)
    bench_groundedness(rows)
    bench_combined(detail)

    head = ["guard", "data", "n", "precision", "recall", "F1", "FPR", "p50 ms", "p99 ms", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = "\n".join(lines) + "\n\n" + "\n".join(detail) + "\n"
    print(text)
    print(f"load average during the run: {load}")
    if args.no_write:
        return
    section = (
        "## guards\n\n"
        "`python bench/guards/run.py` — heuristic guards on the project's own labelled data "
        "(bench/guards/data_*.py); threshold 0.5 unless noted. Latency is one check (wall time, "
        f"Python {sys.version.split()[0]}, shared 2-core machine, load average {load}).\n\n"
        "Read these as a regression baseline: the data were written by the people who wrote the "
        "detectors. injection/dev was used while writing the patterns, injection/test was held out "
        "(its misses were left unfixed). pii/test is the same generator as pii/dev with another seed: "
        "new values, not new formats. Targets: injection recall >= 0.90 at FPR <= 0.05; PII recall "
        ">= 0.95 on structured identifiers; the heuristic input guards together p50 < 5 ms below "
        "2,000 characters.\n\n"
        + text
    )
    write_section(RESULTS, "guards", section)
    print(f"wrote the '## guards' section of {RESULTS}")


def write_section(path: Path, name: str, section: str) -> None:
    """Replace '## name' (up to the next '## ' heading) in ``path``, or append it."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"## {name}"), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + section + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new.rstrip("\n") + "\n")


if __name__ == "__main__":
    statistics  # noqa: B018 - keep the import for readers extending the script
    main()
