"""Reports of a run: the terminal tables (Rich), the JSON form, the CI gate, the diff
against a baseline run, and the model-migration comparison (baseline vs candidate
model, same prompts, case by case)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import InvalidRequest
from .results import EvalStore

# ---- formatting ------------------------------------------------------------------------------


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def ci_pct(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{100 * max(0.0, ci[0]):.1f}–{100 * min(1.0, ci[1]):.1f}]"


def num(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def ci_num(ci: tuple[float, float] | None, spec: str = ".3f") -> str:
    return "" if ci is None else f"[{format(ci[0], spec)}–{format(ci[1], spec)}]"


def money(x: float | None) -> str:
    if x is None:
        return "unknown"
    if x == 0:
        return "$0"
    if abs(x) >= 1:
        return f"${x:,.2f}"
    digits = max(2, min(8, 2 - int(math.floor(math.log10(abs(x))))))
    return f"${x:.{digits}f}"


def ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")


def snippet(text: str | None, n: int = 70) -> str:
    if text is None:
        return "∅"
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def cost_text(v: dict[str, Any]) -> str:
    if not v["cost_known"]:
        return "unknown"
    answered = v["n"] - v["errors"]
    partial = f" ({v['cost_known']}/{answered} priced)" if v["cost_known"] < answered else ""
    return f"{money(v['cost_usd'])} / {money(v['cost_per_case'])}{partial}"


# ---- gate and baseline -------------------------------------------------------------------------


@dataclass
class Gate:
    fail_under: float | None = None
    max_error_rate: float | None = None
    fail_on_regression: bool = False
    regression_tolerance: float = 0.0

    def check(self, summary: dict[str, Any], diffs: list[dict[str, Any]] | None = None) -> list[str]:
        """The reasons the run fails the gate (empty: it passes)."""
        failures = []
        for v in summary["variants"]:
            name = v["variant"]
            if self.fail_under is not None:
                if v["pass_rate"] is None:
                    failures.append(f"{name}: no case was decided (pass rate unknown), gate {pct(self.fail_under)}")
                elif v["pass_rate"] < self.fail_under:
                    failures.append(f"{name}: pass rate {pct(v['pass_rate'])} is under {pct(self.fail_under)}")
            if self.max_error_rate is not None and v["n"]:
                rate = (v["errors"] + v["eval_errors"]) / v["n"]
                if rate > self.max_error_rate:
                    failures.append(f"{name}: error rate {pct(rate)} is over {pct(self.max_error_rate)}")
        if self.fail_on_regression:
            for d in diffs or []:
                before, after = d.get("base_pass_rate"), d.get("pass_rate")
                if before is not None and after is not None and after < before - self.regression_tolerance:
                    failures.append(f"{d['variant']}: pass rate fell from {pct(before)} to {pct(after)} "
                                    f"({d['regressions']} case(s) flipped pass→fail)")
        return failures


def baseline_diffs(evs: EvalStore, summary: dict[str, Any], base_run: str, *, limit: int = 20) -> list[dict[str, Any]]:
    """Per variant present in both runs: pass rates before/after and the flipped cases."""
    base = evs.summary(base_run)
    base_rates = {v["variant"]: v for v in base["variants"]}
    out = []
    for v in summary["variants"]:
        b = base_rates.get(v["variant"])
        if b is None:
            continue
        d = evs.diff(base_run, v["variant"], summary["run"]["run_id"], v["variant"], limit=limit)
        d.update(base_pass_rate=b["pass_rate"], pass_rate=v["pass_rate"], base_score=b["score"], score=v["score"],
                 base_cost=b["cost_per_case"], cost=v["cost_per_case"], base_p50=b["latency_p50"],
                 p50=v["latency_p50"])
        out.append(d)
    return out


# ---- model migration ---------------------------------------------------------------------------


def migration_pairs(variants: list[dict[str, Any]], baseline: str, candidate: str) -> list[tuple[str, str]]:
    """(baseline variant, candidate variant) pairs: the two named variants, or per prompt
    the variant on the baseline model and the one on the candidate model."""
    names = {v["name"] for v in variants}
    if baseline in names and candidate in names:
        return [(baseline, candidate)]
    pairs = []
    by_prompt: dict[Any, dict[str, str]] = {}
    for v in variants:
        by_prompt.setdefault(v["prompt"], {})[v["model"]] = v["name"]
    for models in by_prompt.values():
        if baseline in models and candidate in models:
            pairs.append((models[baseline], models[candidate]))
    if not pairs:
        raise InvalidRequest(f"no variant pair runs the same prompt on {baseline!r} and {candidate!r} "
                             f"(variants: {', '.join(sorted(names))})")
    return pairs


def migration(evs: EvalStore, summary: dict[str, Any], pairs: list[tuple[str, str]], *,
              cases: int = 200) -> list[dict[str, Any]]:
    """Per pair: both variants' aggregates, the flips, the pairwise preference and the
    first ``cases`` cases side by side."""
    run_id = summary["run"]["run_id"]
    rows = {v["variant"]: v for v in summary["variants"]}
    out = []
    for a, b in pairs:
        d = evs.diff(run_id, a, run_id, b, limit=50)
        pw = [p for p in summary["pairwise"] if {p["a"], p["b"]} == {a, b}]
        side = list(_side_by_side(evs, run_id, a, b, cases))
        out.append({"baseline": rows.get(a), "candidate": rows.get(b), "diff": d, "pairwise": pw, "cases": side,
                    "baseline_variant": a, "candidate_variant": b})
    return out


def _side_by_side(evs: EvalStore, run_id: str, a: str, b: str, limit: int) -> Iterable[dict[str, Any]]:
    ia, ib = evs.iter_cases(run_id, a), evs.iter_cases(run_id, b)
    ra, rb = next(ia, None), next(ib, None)
    n = 0
    while ra is not None and rb is not None and n < limit:
        ka, kb = (ra["case_id"], ra["rep"]), (rb["case_id"], rb["rep"])
        if ka == kb:
            n += 1
            yield {"case_id": ra["case_id"], "rep": ra["rep"], "a": ra, "b": rb}
            ra, rb = next(ia, None), next(ib, None)
        elif ka < kb:
            ra = next(ia, None)
        else:
            rb = next(ib, None)


def iter_case_pairs(evs: EvalStore, run_id: str, a: str, b: str) -> Iterable[dict[str, Any]]:
    """Every case answered by both variants, in key order (streams: for CSV export)."""
    return _side_by_side(evs, run_id, a, b, 1 << 62)


# ---- terminal ----------------------------------------------------------------------------------


def verdict_text(passed: Any, status: str | None = None) -> str:
    if status == "error":
        return "[yellow]error[/]"
    if passed is None:
        return "[yellow]undecided[/]"
    return "[green]pass[/]" if passed else "[red]fail[/]"


@dataclass
class TerminalReport:
    summary: dict[str, Any]
    diffs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] | None = None
    migration: list[dict[str, Any]] | None = None

    def render(self, console: Any) -> None:
        from rich.table import Table

        s = self.summary
        run = s["run"]
        split = run["split"] or "all"
        console.print(f"[bold]{run['name']}[/]  run [cyan]{run['run_id']}[/]  dataset {run['dataset']} "
                      f"v{run['dataset_version']} (split {split})  repeats {run['repeats']}  status {run['status']}")
        t = Table(title="Variants", title_justify="left")
        for col, just in (("variant", "left"), ("model", "left"), ("cases", "right"), ("pass rate [95% CI]", "right"),
                          ("score [95% CI]", "right"), ("errors", "right"), ("cost total / per case", "right"),
                          ("p50 ms", "right"), ("p95 ms", "right")):
            t.add_column(col, justify=just)
        ci_label = "bootstrap" if s.get("ci") == "bootstrap" else "t"
        for v in s["variants"]:
            t.add_row(v["variant"], v.get("model") or "-", str(v["n"]),
                      f"{pct(v['pass_rate'])} {ci_pct(v['pass_ci'])}",
                      f"{num(v['score'])} {ci_num(v['score_ci'])}",
                      _errors(v), cost_text(v), ms(v["latency_p50"]), ms(v["latency_p95"]))
        t.caption = f"pass rate: Wilson interval; score: {ci_label} interval (mean of the case's evaluator scores)"
        console.print(t)
        if s["evaluators"]:
            self._evaluators(console)
        if any(v.get("repeats") for v in s["variants"]):
            self._repeats(console)
        if s["pairwise"]:
            self._pairwise(console)
        if self.diffs:
            self._diffs(console)
        if self.migration:
            self._migration(console)
        if self.failures is not None:
            if self.failures:
                console.print("[bold red]GATE FAILED[/]")
                for f in self.failures:
                    console.print(f"  [red]✗[/] {f}")
            else:
                console.print("[bold green]gate passed[/]")

    def _evaluators(self, console: Any) -> None:
        from rich.table import Table

        s = self.summary
        variants = [v["variant"] for v in s["variants"]]
        names = sorted({e["evaluator"] for e in s["evaluators"]})
        cell = {(e["variant"], e["evaluator"]): e for e in s["evaluators"]}
        t = Table(title="Evaluators (pass rate, errors)", title_justify="left")
        t.add_column("evaluator")
        for v in variants:
            t.add_column(v, justify="right")
        for n in names:
            row = [n]
            for v in variants:
                e = cell.get((v, n))
                if e is None:
                    row.append("-")
                    continue
                txt = pct(e["pass_rate"]) if e["pass_rate"] is not None else (num(e["score"]) if e["score"] is not None else "-")
                if e["errors"]:
                    txt += f" [yellow]({e['errors']} err)[/]"
                row.append(txt)
            t.add_row(*row)
        console.print(t)

    def _repeats(self, console: Any) -> None:
        from rich.table import Table

        t = Table(title="Nondeterminism (each case run several times)", title_justify="left")
        for col in ("variant", "cases", "flip rate", "pass@1", "pass@k", "pass^k (all k)", "score variance"):
            t.add_column(col, justify="left" if col == "variant" else "right")
        for v in self.summary["variants"]:
            r = v.get("repeats")
            if not r:
                continue
            k = r["repeats"]
            t.add_row(v["variant"], str(r["cases"]), f"{pct(r['flip_rate'])} ({r['flipped']})",
                      pct(r["pass_at"].get(1)), f"{pct(r['pass_at'].get(k))} (k={k})", pct(r["pass_all"]),
                      num(r["score_variance"], ".4f"))
        console.print(t)

    def _pairwise(self, console: Any) -> None:
        from rich.table import Table

        t = Table(title="Pairwise (judge preference)", title_justify="left")
        for col in ("judge", "A (baseline)", "B", "A wins", "B wins", "ties", "errors", "B win rate [95% CI]"):
            t.add_column(col)
        for p in self.summary["pairwise"]:
            t.add_row(p["evaluator"], p["a"], p["b"], str(p["a_wins"]), str(p["b_wins"]), str(p["ties"]),
                      str(p["errors"]), f"{pct(p['b_win_rate'])} {ci_pct(p['b_win_ci'])}")
        console.print(t)

    def _diffs(self, console: Any) -> None:
        from rich.table import Table

        base = self.diffs[0]["base_run"]
        t = Table(title=f"Against baseline run {base}", title_justify="left")
        for col in ("variant", "pass rate before → after", "Δ", "pass→fail", "fail→pass", "McNemar p",
                    "cost/case before → after", "p50 ms before → after"):
            t.add_column(col)
        for d in self.diffs:
            delta = None if d["base_pass_rate"] is None or d["pass_rate"] is None else d["pass_rate"] - d["base_pass_rate"]
            style = "red" if delta is not None and delta < 0 else "green" if delta else ""
            t.add_row(d["variant"], f"{pct(d['base_pass_rate'])} → {pct(d['pass_rate'])}",
                      f"[{style}]{'-' if delta is None else f'{100 * delta:+.1f} pts'}[/]" if style else
                      ("-" if delta is None else f"{100 * delta:+.1f} pts"),
                      str(d["regressions"]), str(d["fixes"]), num(d["mcnemar_p"], ".3f"),
                      f"{money(d['base_cost'])} → {money(d['cost'])}", f"{ms(d['base_p50'])} → {ms(d['p50'])}")
        console.print(t)
        for d in self.diffs:
            _flip_list(console, f"{d['variant']}: flipped pass → fail", d["regressed"], d["regressions"], "red")
            _flip_list(console, f"{d['variant']}: flipped fail → pass", d["fixed"], d["fixes"], "green")

    def _migration(self, console: Any) -> None:
        from rich.table import Table

        for m in self.migration or []:
            a, b = m["baseline"] or {}, m["candidate"] or {}
            t = Table(title=f"Model migration: {m['baseline_variant']} → {m['candidate_variant']}", title_justify="left")
            for col in ("", "baseline", "candidate"):
                t.add_column(col, justify="left" if not col else "right")
            t.add_row("model", str(a.get("model")), str(b.get("model")))
            t.add_row("pass rate", f"{pct(a.get('pass_rate'))} {ci_pct(a.get('pass_ci'))}",
                      f"{pct(b.get('pass_rate'))} {ci_pct(b.get('pass_ci'))}")
            t.add_row("score", num(a.get("score")), num(b.get("score")))
            t.add_row("cost / case", money(a.get("cost_per_case")), money(b.get("cost_per_case")))
            t.add_row("latency p50 / p95 ms", f"{ms(a.get('latency_p50'))} / {ms(a.get('latency_p95'))}",
                      f"{ms(b.get('latency_p50'))} / {ms(b.get('latency_p95'))}")
            d = m["diff"]
            t.add_row("cases compared", str(d["compared"]), "")
            t.add_row("flips", "", f"[red]{d['regressions']} pass→fail[/], [green]{d['fixes']} fail→pass[/] "
                                   f"(McNemar p {num(d['mcnemar_p'])})")
            for p in m["pairwise"]:
                t.add_row(f"judge {p['evaluator']}", f"{p['a_wins']} wins", f"{p['b_wins']} wins, {p['ties']} ties")
            console.print(t)
            _flip_list(console, "regressions (baseline passed, candidate failed)", d["regressed"], d["regressions"], "red")
            _flip_list(console, "improvements (baseline failed, candidate passed)", d["fixed"], d["fixes"], "green")


def _errors(v: dict[str, Any]) -> str:
    parts = []
    if v["errors"]:
        parts.append(f"{v['errors']} call")
    if v["eval_errors"]:
        parts.append(f"{v['eval_errors']} eval")
    return ", ".join(parts) if parts else "0"


def _flip_list(console: Any, title: str, rows: list[dict[str, Any]], total: int, colour: str, show: int = 10) -> None:
    if not total:
        return
    console.print(f"[bold {colour}]{title}: {total}[/]")
    for r in rows[:show]:
        console.print(f"  {r['case_id']}  before: {snippet(r['before_output'], 50)!r}  after: {snippet(r['after_output'], 50)!r}")
    if total > show:
        console.print(f"  … and {total - show} more (see --json or the HTML report)")


# ---- JSON --------------------------------------------------------------------------------------


def as_json(summary: dict[str, Any], diffs: list[dict[str, Any]], failures: list[str] | None,
            migration: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    run = dict(summary["run"])
    run.pop("spec", None)
    return {"run": run, "variants": summary["variants"], "evaluators": summary["evaluators"],
            "pairwise": summary["pairwise"], "baseline": diffs, "migration": migration,
            "gate": None if failures is None else {"passed": not failures, "failures": failures}}
