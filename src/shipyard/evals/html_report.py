"""The HTML report: one self-contained file (inline CSS and SVG plots, no script, no CDN)."""

from __future__ import annotations

import html
import time
from typing import Any

from .report import ci_num, ci_pct, cost_text, money, ms, num, pct, snippet

PALETTE = ("#3b6fd4", "#e07b39", "#3aa17e", "#c2449f", "#8a6d3b", "#5b5ea6", "#d1495b", "#2f9bb3")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e6ec;padding-bottom:4px}
.meta{color:#5c6577}table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{padding:5px 8px;border-bottom:1px solid #eceef2;text-align:right;vertical-align:top}
th{background:#f6f7f9;font-weight:600}td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left}.pass{color:#1f8a4c;font-weight:600}.fail{color:#c0392b;font-weight:600}
.err{color:#b7791f;font-weight:600}.charts{display:flex;flex-wrap:wrap;gap:18px}
.chart{border:1px solid #e3e6ec;border-radius:6px;padding:8px;background:#fff}
.chart h3{font-size:13px;margin:0 0 4px;color:#394150}.small{color:#6b7385;font-size:12px}
.gate-ok{background:#e8f6ee;border:1px solid #9bd3b0;padding:8px 12px;border-radius:6px}
.gate-bad{background:#fdecea;border:1px solid #f0a59c;padding:8px 12px;border-radius:6px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
td.out{max-width:380px;text-align:left;white-space:pre-wrap;word-break:break-word;font-size:12px}
"""


def e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def bar_chart(title: str, rows: list[tuple[str, float | None, tuple[float, float] | None]], *, vmax: float = 1.0,
              fmt: Any = pct, width: int = 560) -> str:
    """Horizontal bars with 95 % CI whiskers; ``rows`` = (label, value, ci)."""
    label_w, bar_h, gap = 170, 18, 8
    plot_w = width - label_w - 70
    height = len(rows) * (bar_h + gap) + 30
    vmax = vmax or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{e(title)}">']
    for t in range(0, 5):  # grid
        x = label_w + plot_w * t / 4
        parts.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 22}" stroke="#eceef2"/>'
                     f'<text x="{x:.1f}" y="{height - 8}" font-size="10" text-anchor="middle" fill="#6b7385">'
                     f'{e(fmt(vmax * t / 4))}</text>')
    for i, (label, value, ci) in enumerate(rows):
        y = 6 + i * (bar_h + gap)
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" font-size="11" text-anchor="end">'
                     f'{e(snippet(label, 26))}</text>')
        if value is None:
            parts.append(f'<text x="{label_w + 4}" y="{y + bar_h * 0.7:.1f}" font-size="11" fill="#6b7385">n/a</text>')
            continue
        w = max(0.0, min(1.0, value / vmax)) * plot_w
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{_colour(i)}" '
                     f'opacity="0.85"><title>{e(label)}: {e(fmt(value))}</title></rect>')
        if ci is not None:
            x0 = label_w + max(0.0, min(1.0, ci[0] / vmax)) * plot_w
            x1 = label_w + max(0.0, min(1.0, ci[1] / vmax)) * plot_w
            yc = y + bar_h / 2
            parts.append(f'<line x1="{x0:.1f}" y1="{yc}" x2="{x1:.1f}" y2="{yc}" stroke="#1d2330" stroke-width="1.5"/>'
                         f'<line x1="{x0:.1f}" y1="{y + 3}" x2="{x0:.1f}" y2="{y + bar_h - 3}" stroke="#1d2330"/>'
                         f'<line x1="{x1:.1f}" y1="{y + 3}" x2="{x1:.1f}" y2="{y + bar_h - 3}" stroke="#1d2330"/>')
        parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + bar_h * 0.7:.1f}" font-size="11">{e(fmt(value))}</text>')
    parts.append("</svg>")
    return f'<div class="chart"><h3>{e(title)}</h3>{"".join(parts)}</div>'


def latency_chart(variants: list[dict[str, Any]], width: int = 560) -> str:
    """p50 (solid) and p95 (light) latency per variant."""
    vals = [v["latency_p95"] for v in variants if v["latency_p95"] is not None]
    vmax = max(vals) * 1.1 if vals else 1.0
    label_w, bar_h, gap = 170, 9, 10
    plot_w = width - label_w - 90
    height = len(variants) * (2 * bar_h + gap) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="latency p50 and p95">']
    for t in range(0, 5):
        x = label_w + plot_w * t / 4
        parts.append(f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - 22}" stroke="#eceef2"/>'
                     f'<text x="{x:.1f}" y="{height - 8}" font-size="10" text-anchor="middle" fill="#6b7385">'
                     f'{e(ms(vmax * t / 4))}</text>')
    for i, v in enumerate(variants):
        y = 6 + i * (2 * bar_h + gap)
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h + 3}" font-size="11" text-anchor="end">'
                     f'{e(snippet(v["variant"], 26))}</text>')
        for j, (key, op) in enumerate((("latency_p50", "0.95"), ("latency_p95", "0.45"))):
            val = v[key]
            if val is None:
                continue
            w = val / vmax * plot_w
            parts.append(f'<rect x="{label_w}" y="{y + j * bar_h}" width="{w:.1f}" height="{bar_h - 1}" '
                         f'fill="{_colour(i)}" opacity="{op}"><title>{e(v["variant"])} {key[-3:]}: {e(ms(val))} ms'
                         f'</title></rect><text x="{label_w + w + 4:.1f}" y="{y + j * bar_h + bar_h - 1}" '
                         f'font-size="9" fill="#394150">{key[-3:]} {e(ms(val))}</text>')
    parts.append("</svg>")
    return ('<div class="chart"><h3>Latency, ms (p50 solid, p95 light)</h3>' + "".join(parts) + "</div>")


def scatter(variants: list[dict[str, Any]], width: int = 560, height: int = 300) -> str:
    """Quality against cost per case: the frontier at a glance (up and left is better)."""
    pts = [(v["variant"], v["cost_per_case"], v["pass_rate"], i) for i, v in enumerate(variants)
           if v["cost_per_case"] is not None and v["pass_rate"] is not None]
    if not pts:
        return ('<div class="chart"><h3>Pass rate vs cost per case</h3><p class="small">No priced calls: add the '
                'models to the price table to see cost.</p></div>')
    left, bottom, top, right = 60, 34, 10, 150
    pw, ph = width - left - right, height - top - bottom
    xmax = max(p[1] for p in pts) * 1.15 or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="pass rate against cost per case">']
    for t in range(0, 5):
        y = top + ph - ph * t / 4
        x = left + pw * t / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eceef2"/>'
                     f'<text x="{left - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end" fill="#6b7385">'
                     f'{25 * t}%</text>'
                     f'<text x="{x:.1f}" y="{height - 18}" font-size="10" text-anchor="middle" fill="#6b7385">'
                     f'{e(money(xmax * t / 4))}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 3}" font-size="11" text-anchor="middle">'
                 'cost per case</text>')
    placed: dict[tuple[int, int], int] = {}  # variants at the same spot get stacked labels
    for label, cost, rate, i in pts:
        x = left + cost / xmax * pw
        y = top + ph - rate * ph
        k = placed[(round(x / 8), round(y / 8))] = placed.get((round(x / 8), round(y / 8)), -1) + 1
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{_colour(i)}" opacity="0.8"><title>{e(label)}: '
                     f'{e(pct(rate))}, {e(money(cost))}/case</title></circle>'
                     f'<text x="{x + 9:.1f}" y="{y + 4 + 13 * k:.1f}" font-size="11" fill="{_colour(i)}">'
                     f'{e(snippet(label, 22))}</text>')
    parts.append("</svg>")
    return '<div class="chart"><h3>Pass rate vs cost per case</h3>' + "".join(parts) + "</div>"


def _verdict(passed: Any, status: str | None) -> str:
    if status == "error":
        return '<span class="err">error</span>'
    if passed is None:
        return '<span class="err">undecided</span>'
    return '<span class="pass">pass</span>' if passed else '<span class="fail">fail</span>'


def render_html(summary: dict[str, Any], diffs: list[dict[str, Any]] | None = None, failures: list[str] | None = None,
                migration: list[dict[str, Any]] | None = None) -> str:
    run = summary["run"]
    variants = summary["variants"]
    out: list[str] = []
    w = out.append
    w(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Eval {e(run['name'])} — {e(run['run_id'])}"
      f"</title><style>{CSS}</style></head><body>")
    w(f"<h1>Eval: {e(run['name'])}</h1><div class=meta>run <code>{e(run['run_id'])}</code> · dataset "
      f"<b>{e(run['dataset'])}</b> v{e(run['dataset_version'])} (split {e(run['split'] or 'all')}) · "
      f"{len(variants)} variant(s) × {e(run['repeats'])} repeat(s) · status {e(run['status'])} · "
      f"started {e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(run['created_at'])))}</div>")
    if failures is not None:
        if failures:
            w('<h2>CI gate</h2><div class="gate-bad"><b>Gate failed</b><ul>'
              + "".join(f"<li>{e(f)}</li>" for f in failures) + "</ul></div>")
        else:
            w('<h2>CI gate</h2><div class="gate-ok"><b>Gate passed</b></div>')
    w("<h2>Variants</h2><table><tr><th>variant</th><th class=l>model</th><th class=l>prompt</th><th>cases</th>"
      "<th>pass rate [95% CI]</th><th>score [95% CI]</th><th>errors (call / eval)</th><th>cost total / per case</th>"
      "<th>tokens in / out</th><th>p50 ms</th><th>p95 ms</th></tr>")
    for v in variants:
        w(f"<tr><td>{e(v['variant'])}</td><td class=l>{e(v.get('model'))}</td><td class=l>{e(v.get('prompt'))}</td>"
          f"<td>{v['n']}</td><td>{pct(v['pass_rate'])} <span class=small>{ci_pct(v['pass_ci'])}</span></td>"
          f"<td>{num(v['score'])} <span class=small>{ci_num(v['score_ci'])}</span></td>"
          f"<td>{v['errors']} / {v['eval_errors']}</td><td>{e(cost_text(v))}</td>"
          f"<td>{v['input_tokens']:,} / {v['output_tokens']:,}</td><td>{ms(v['latency_p50'])}</td>"
          f"<td>{ms(v['latency_p95'])}</td></tr>")
    ci = "bootstrap" if summary.get("ci") == "bootstrap" else "Student t"
    w(f"</table><p class=small>Pass rate over decided cases, 95 % Wilson interval. Score: mean of each case's "
      f"evaluator scores (0–1), 95 % {ci} interval.</p>")
    w('<h2>Quality, cost and latency</h2><div class="charts">')
    w(bar_chart("Pass rate (95% Wilson CI)", [(v["variant"], v["pass_rate"], v["pass_ci"]) for v in variants]))
    w(bar_chart("Score (95% CI)", [(v["variant"], v["score"], v["score_ci"]) for v in variants],
                fmt=lambda x: f"{x:.2f}"))
    w(scatter(variants))
    w(latency_chart(variants))
    w("</div>")
    if summary["evaluators"]:
        names = sorted({x["evaluator"] for x in summary["evaluators"]})
        cell = {(x["variant"], x["evaluator"]): x for x in summary["evaluators"]}
        w("<h2>Evaluators</h2><table><tr><th>evaluator</th>" + "".join(f"<th>{e(v['variant'])}</th>" for v in variants)
          + "</tr>")
        for n in names:
            w(f"<tr><td>{e(n)}</td>")
            for v in variants:
                x = cell.get((v["variant"], n))
                if x is None:
                    w("<td>-</td>")
                    continue
                rate = x["pass_rate"]
                shade = "" if rate is None else f' style="background:hsl({int(120 * rate)},60%,92%)"'
                txt = pct(rate) if rate is not None else num(x["score"])
                extra = f' <span class="err">{x["errors"]} err</span>' if x["errors"] else ""
                w(f"<td{shade}>{txt} <span class=small>{ci_pct(x['pass_ci'])}</span>{extra}</td>")
            w("</tr>")
        w("</table>")
    if any(v.get("repeats") for v in variants):
        w("<h2>Nondeterminism</h2><table><tr><th>variant</th><th>cases</th><th>flip rate</th><th>pass@1</th>"
          "<th>pass@k</th><th>pass^k (all k)</th><th>score variance</th></tr>")
        for v in variants:
            r = v.get("repeats")
            if r:
                k = r["repeats"]
                w(f"<tr><td>{e(v['variant'])}</td><td>{r['cases']}</td><td>{pct(r['flip_rate'])} ({r['flipped']})</td>"
                  f"<td>{pct(r['pass_at'].get(1))}</td><td>{pct(r['pass_at'].get(k))} (k={k})</td>"
                  f"<td>{pct(r['pass_all'])}</td><td>{num(r['score_variance'], '.4f')}</td></tr>")
        w("</table><p class=small>Flip rate: share of cases whose verdict differed between repeats. pass@k: the "
          "chance at least one of k tries passes (unbiased estimator); pass^k: every try passed.</p>")
    if summary["pairwise"]:
        w("<h2>Pairwise preference</h2><table><tr><th>judge</th><th class=l>A (baseline)</th><th class=l>B</th>"
          "<th>A wins</th><th>B wins</th><th>ties</th><th>errors</th><th>B win rate [95% CI]</th></tr>")
        for p in summary["pairwise"]:
            w(f"<tr><td>{e(p['evaluator'])}</td><td class=l>{e(p['a'])}</td><td class=l>{e(p['b'])}</td>"
              f"<td>{p['a_wins']}</td><td>{p['b_wins']}</td><td>{p['ties']}</td><td>{p['errors']}</td>"
              f"<td>{pct(p['b_win_rate'])} <span class=small>{ci_pct(p['b_win_ci'])}</span></td></tr>")
        w("</table>")
    if diffs:
        w(f"<h2>Against baseline run <code>{e(diffs[0]['base_run'])}</code></h2>")
        w('<div class="charts">' + _before_after(diffs) + "</div>")
        w("<table><tr><th>variant</th><th>pass rate before → after</th><th>pass→fail</th><th>fail→pass</th>"
          "<th>McNemar p</th><th>cost/case before → after</th><th>p50 before → after</th></tr>")
        for d in diffs:
            w(f"<tr><td>{e(d['variant'])}</td><td>{pct(d['base_pass_rate'])} → {pct(d['pass_rate'])}</td>"
              f"<td class=fail>{d['regressions']}</td><td class=pass>{d['fixes']}</td><td>{num(d['mcnemar_p'])}</td>"
              f"<td>{e(money(d['base_cost']))} → {e(money(d['cost']))}</td><td>{ms(d['base_p50'])} → {ms(d['p50'])}</td></tr>")
        w("</table>")
        for d in diffs:
            _flips(w, f"{d['variant']}: pass → fail", d["regressed"], d["regressions"])
            _flips(w, f"{d['variant']}: fail → pass", d["fixed"], d["fixes"])
    for m in migration or []:
        _migration(w, m)
    w(f"<p class=small>Generated by shipyard · {e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>"
      "</body></html>")
    return "".join(out)


def _before_after(diffs: list[dict[str, Any]]) -> str:
    rows = []
    for d in diffs:
        rows.append((f"{d['variant']} (baseline)", d["base_pass_rate"], None))
        rows.append((f"{d['variant']} (now)", d["pass_rate"], None))
    return bar_chart("Pass rate: baseline vs now", rows)


def _flips(w: Any, title: str, rows: list[dict[str, Any]], total: int) -> None:
    if not total:
        return
    w(f"<h3>{e(title)}: {total}</h3><table><tr><th>case</th><th class=l>baseline answer</th>"
      "<th class=l>current answer</th></tr>")
    for r in rows:
        w(f"<tr><td class=mono>{e(r['case_id'])}</td><td class=out>{e(snippet(r['before_output'], 400))}</td>"
          f"<td class=out>{e(snippet(r['after_output'], 400))}</td></tr>")
    w("</table>")
    if total > len(rows):
        w(f"<p class=small>… and {total - len(rows)} more.</p>")


def _migration(w: Any, m: dict[str, Any]) -> None:
    a, b, d = m["baseline"] or {}, m["candidate"] or {}, m["diff"]
    w(f"<h2>Model migration: {e(m['baseline_variant'])} → {e(m['candidate_variant'])}</h2>")
    w("<table><tr><th></th><th>baseline</th><th>candidate</th></tr>"
      f"<tr><td>model</td><td>{e(a.get('model'))}</td><td>{e(b.get('model'))}</td></tr>"
      f"<tr><td>pass rate</td><td>{pct(a.get('pass_rate'))} {ci_pct(a.get('pass_ci'))}</td>"
      f"<td>{pct(b.get('pass_rate'))} {ci_pct(b.get('pass_ci'))}</td></tr>"
      f"<tr><td>score</td><td>{num(a.get('score'))}</td><td>{num(b.get('score'))}</td></tr>"
      f"<tr><td>cost / case</td><td>{e(money(a.get('cost_per_case')))}</td><td>{e(money(b.get('cost_per_case')))}</td></tr>"
      f"<tr><td>latency p50 / p95</td><td>{ms(a.get('latency_p50'))} / {ms(a.get('latency_p95'))}</td>"
      f"<td>{ms(b.get('latency_p50'))} / {ms(b.get('latency_p95'))}</td></tr>"
      f"<tr><td>flips</td><td colspan=2><span class=fail>{d['regressions']} pass→fail</span>, "
      f"<span class=pass>{d['fixes']} fail→pass</span> of {d['compared']} cases (McNemar p {num(d['mcnemar_p'])})</td></tr>")
    for p in m["pairwise"]:
        w(f"<tr><td>judge {e(p['evaluator'])}</td><td>{p['a_wins']} wins</td><td>{p['b_wins']} wins, {p['ties']} ties"
          f"</td></tr>")
    w("</table>")
    w(f"<h3>Case by case (first {len(m['cases'])})</h3><table><tr><th>case</th><th>baseline</th>"
      "<th class=l>baseline answer</th><th>candidate</th><th class=l>candidate answer</th><th>Δ cost</th>"
      "<th>Δ ms</th></tr>")
    for c in m["cases"]:
        ra, rb = c["a"], c["b"]
        dc = None if ra["cost_usd"] is None or rb["cost_usd"] is None else rb["cost_usd"] - ra["cost_usd"]
        dl = None if ra["latency_ms"] is None or rb["latency_ms"] is None else rb["latency_ms"] - ra["latency_ms"]
        flip = ' style="background:#fdecea"' if ra["passed"] == 1 and rb["passed"] == 0 else \
            ' style="background:#e8f6ee"' if ra["passed"] == 0 and rb["passed"] == 1 else ""
        rep = f" #{c['rep']}" if c["rep"] else ""
        w(f"<tr{flip}><td class=mono>{e(c['case_id'])}{rep}</td>"
          f"<td>{_verdict(ra['passed'], ra['status'])}</td><td class=out>{e(snippet(ra['output'] or ra['error'], 300))}</td>"
          f"<td>{_verdict(rb['passed'], rb['status'])}</td><td class=out>{e(snippet(rb['output'] or rb['error'], 300))}</td>"
          f"<td>{'-' if dc is None else e(('+' if dc >= 0 else '-') + money(abs(dc)))}</td>"
          f"<td>{'-' if dl is None else f'{dl:+.0f}'}</td></tr>")
    w("</table>")
