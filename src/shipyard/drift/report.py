"""The drift report as HTML: self-contained (inline CSS and SVG plots, no script, nothing
fetched from anywhere), from the JSON summary of analyze.py. Every recorded text is
escaped. ``render_body`` gives the part the web UI embeds in its own page."""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any

from .analyze import label

REF_COLOR = "#64748b"
CUR_COLOR = "#ea580c"

CSS = """
.drift { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2933;
  font-size: 14px; line-height: 1.45; }
.drift h1 { font-size: 20px; margin: 0 0 6px; } .drift h2 { font-size: 16px; margin: 22px 0 8px; }
.drift h3 { font-size: 13px; margin: 14px 0 6px; text-transform: uppercase; letter-spacing: .04em; color: #6b7280; }
.drift .muted { color: #6b7280; } .drift .small { font-size: 12px; }
.drift .verdict { display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 700; font-size: 12px; }
.drift .v-drift { background: #fdecec; color: #b91c1c; } .drift .v-ok { background: #e7f6ec; color: #15803d; }
.drift .v-na { background: #eef0f3; color: #374151; } .drift .v-warn { background: #fff4e0; color: #b45309; }
.drift table.checks { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #e2e5ea; }
.drift table.checks th, .drift table.checks td { padding: 6px 8px; border-bottom: 1px solid #e2e5ea; text-align: left;
  vertical-align: middle; }
.drift table.checks th { background: #f9fafb; font-size: 12px; color: #6b7280; font-weight: 600; }
.drift tr.is-drift td:first-child { box-shadow: inset 3px 0 0 #b91c1c; }
.drift .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.drift .legend span { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 4px 0 10px;
  vertical-align: -1px; }
.drift .cards { display: flex; flex-wrap: wrap; gap: 10px; }
.drift .card { background: #fff; border: 1px solid #e2e5ea; border-radius: 10px; padding: 10px 14px; min-width: 180px; }
.drift .card .big { font-size: 20px; font-weight: 700; }
.drift .cluster { background: #fff; border: 1px solid #e2e5ea; border-radius: 10px; padding: 10px 14px; margin: 8px 0; }
.drift .cluster.st-new, .drift .cluster.st-grown { border-color: #f5b5b5; box-shadow: inset 4px 0 0 #ea580c; }
.drift .cluster ul { margin: 6px 0; padding-left: 18px; } .drift .cluster li { margin: 2px 0; white-space: pre-wrap;
  word-break: break-word; }
.drift .kw { display: inline-block; background: #eef0f3; border-radius: 6px; padding: 0 6px; margin: 0 4px 2px 0;
  font-size: 12px; }
.drift details summary { cursor: pointer; color: #2563eb; }
.drift .notes li { margin: 2px 0; }
"""


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "—"
        if v != 0 and (abs(v) < 10 ** -digits or abs(v) >= 1e6):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return esc(v)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100.0 * v:.1f}%"


def verdict_badge(v: str | None) -> str:
    cls = {"drift": "v-drift", "no drift": "v-ok", "stable": "v-ok", "nondeterministic": "v-warn"}.get(v or "", "v-na")
    return f'<span class="verdict {cls}">{esc(v or "—")}</span>'


def when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---- plots (inline SVG) ----------------------------------------------------------------
def svg_hist(h: dict[str, Any] | None, w: int = 220, hgt: int = 54) -> str:
    if not h:
        return ""
    ref, cur = h["reference"], h["current"]
    top = max(max(ref, default=0), max(cur, default=0)) or 1.0
    n = len(ref)
    bw = w / n

    def path(vals: list[float]) -> str:
        pts = [f"M0,{hgt}"]
        for i, v in enumerate(vals):
            y = hgt - 2 - (hgt - 6) * v / top
            pts.append(f"L{i * bw:.1f},{y:.1f}L{(i + 1) * bw:.1f},{y:.1f}")
        pts.append(f"L{w},{hgt}")
        return "".join(pts)

    lo, hi = h["edges"][0], h["edges"][-1]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt + 12}" role="img" '
            f'aria-label="distribution, reference vs current">'
            f'<path d="{path(ref)}" fill="{REF_COLOR}" fill-opacity="0.35" stroke="{REF_COLOR}" stroke-width="1"/>'
            f'<path d="{path(cur)}" fill="{CUR_COLOR}" fill-opacity="0.30" stroke="{CUR_COLOR}" stroke-width="1.2"/>'
            f'<text x="0" y="{hgt + 11}" font-size="9" fill="#6b7280">{fmt(lo, 3)}</text>'
            f'<text x="{w}" y="{hgt + 11}" font-size="9" fill="#6b7280" text-anchor="end">{fmt(hi, 3)}</text></svg>')


def svg_shares(shares: dict[str, dict[str, float]], w: int = 220, limit: int = 6) -> str:
    items = list(shares.items())[:limit]
    if not items:
        return ""
    row = 15
    hgt = row * len(items)
    lab_w = 70
    bar_w = w - lab_w - 34
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{hgt}" role="img" '
             f'aria-label="category shares, reference vs current">']
    for i, (cat, s) in enumerate(items):
        y = i * row
        r, c = s.get("reference") or 0.0, s.get("current") or 0.0
        parts.append(f'<text x="0" y="{y + 10}" font-size="9.5" fill="#374151">{esc(str(cat)[:12])}</text>'
                     f'<rect x="{lab_w}" y="{y + 1}" width="{max(0.5, bar_w * r):.1f}" height="6" fill="{REF_COLOR}"/>'
                     f'<rect x="{lab_w}" y="{y + 7}" width="{max(0.5, bar_w * c):.1f}" height="6" fill="{CUR_COLOR}"/>'
                     f'<text x="{w}" y="{y + 11}" font-size="9" fill="#6b7280" text-anchor="end">{pct(c)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_auc(auc: float | None, threshold: float, w: int = 260) -> str:
    if auc is None:
        return ""
    x = lambda v: 10 + (w - 20) * (v - 0.5) / 0.5  # noqa: E731  (0.5 .. 1.0)
    color = CUR_COLOR if auc > threshold else REF_COLOR
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="34" role="img" aria-label="ROC AUC {auc:.3f}">'
            f'<rect x="10" y="10" width="{w - 20}" height="8" rx="4" fill="#eef0f3"/>'
            f'<rect x="10" y="10" width="{max(0.0, x(max(auc, 0.5)) - 10):.1f}" height="8" rx="4" fill="{color}"/>'
            f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="5" y2="23" stroke="#b91c1c" stroke-width="1.5"/>'
            f'<text x="10" y="32" font-size="9" fill="#6b7280">0.5 (alike)</text>'
            f'<text x="{w - 10}" y="32" font-size="9" fill="#6b7280" text-anchor="end">1.0 (separable)</text></svg>')


def svg_cluster(sr: float, sc: float, w: int = 200) -> str:
    top = max(sr, sc, 0.01)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="26" role="img" '
            f'aria-label="share: reference {pct(sr)}, current {pct(sc)}">'
            f'<rect x="0" y="2" width="{max(0.5, (w - 50) * sr / top):.1f}" height="9" fill="{REF_COLOR}"/>'
            f'<text x="{w}" y="10" font-size="9.5" fill="#374151" text-anchor="end">{pct(sr)}</text>'
            f'<rect x="0" y="14" width="{max(0.5, (w - 50) * sc / top):.1f}" height="9" fill="{CUR_COLOR}"/>'
            f'<text x="{w}" y="22" font-size="9.5" fill="#374151" text-anchor="end">{pct(sc)}</text></svg>')


LEGEND = (f'<span class="legend small muted"><span style="background:{REF_COLOR}"></span>reference'
          f'<span style="background:{CUR_COLOR}"></span>current</span>')


# ---- sections ----------------------------------------------------------------------------
def _summary_cell(c: dict[str, Any]) -> str:
    if c["kind"] == "numeric":
        r, cur = c.get("reference") or {}, c.get("current") or {}
        return (f'<span class="small">median {fmt(r.get("p50"))} → {fmt(cur.get("p50"))}<br>'
                f'mean {fmt(r.get("mean"))} → {fmt(cur.get("mean"))}</span>')
    shares = c.get("shares") or {}
    if set(shares) <= {"true", "false"}:
        t = shares.get("true") or {}
        return f'<span class="small">rate {pct(t.get("reference", 0.0))} → {pct(t.get("current", 0.0))}</span>'
    top = list(shares.items())[:2]
    return '<span class="small">' + "<br>".join(
        f'{esc(k)}: {pct(v.get("reference"))} → {pct(v.get("current"))}' for k, v in top) + "</span>"


def checks_table(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return '<p class="muted">No values on either side.</p>'
    rows = []
    for c in checks:
        plot = svg_hist(c.get("hist")) if c["kind"] == "numeric" else svg_shares(c.get("shares") or {})
        test = {"ks": "KS", "chi2": "chi²", "wasserstein": "Wasserstein (σ)", "jensen_shannon": "Jensen-Shannon"}.get(
            c.get("test") or "", "—")
        if c.get("test") in ("ks", "chi2"):
            value = f'p = {fmt(c.get("p_value"))}'
            limit = f'p &lt; {fmt(c.get("threshold"))}'
        else:
            value = fmt(c.get("statistic"))
            limit = f'&gt; {fmt(c.get("threshold"))}' if c.get("threshold") is not None else "—"
        reason = f'<div class="small muted">{esc(c["reason"])}</div>' if c.get("reason") else ""
        rows.append(
            f'<tr class="{"is-drift" if c.get("verdict") == "drift" else ""}" data-check="{esc(c["side"])}.{esc(c["name"])}">'
            f'<td>{esc(c.get("label") or label(c["name"]))}{reason}</td>'
            f'<td class="num">{c.get("n_reference", 0)} / {c.get("n_current", 0)}</td>'
            f'<td>{_summary_cell(c)}</td><td>{plot}</td><td>{test}</td><td class="num">{value}</td>'
            f'<td class="num">{limit}</td><td>{verdict_badge(c.get("verdict"))}</td></tr>')
    return ('<table class="checks"><thead><tr><th>descriptor</th><th class="num">n (ref / cur)</th>'
            '<th>reference → current</th><th>distribution ' + LEGEND + '</th><th>test</th><th class="num">value</th>'
            '<th class="num">drift when</th><th>verdict</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")


def semantic_section(sem: dict[str, Any]) -> str:
    if sem.get("verdict") == "skipped" or not sem.get("embedder"):
        return '<p class="muted">Semantic analysis was not run.</p>'
    out = [f'<p class="small muted">Embedder <strong>{esc(sem["embedder"])}</strong>; '
           f'sampled {sem["sampled"]["reference"]} reference and {sem["sampled"]["current"]} current records '
           f'(at most {sem["cap_per_window"]} per window, uniformly at random).</p>']
    for side in ("input", "output"):
        block = sem.get(side)
        if not block:
            continue
        out.append(f'<h3>{side}s {verdict_badge(block.get("verdict"))}</h3>')
        if block.get("reason"):
            out.append(f'<p class="muted">{esc(block["reason"])}</p>')
            continue
        dc = block["domain_classifier"]
        out.append('<div class="cards"><div class="card"><div class="small muted">domain classifier ROC AUC</div>'
                   f'<div class="big">{fmt(dc.get("statistic"), 3)}</div>{svg_auc(dc.get("statistic"), dc["threshold"])}'
                   f'<div class="small muted">drift when &gt; {fmt(dc["threshold"])}'
                   f'{" (noise floor " + fmt(dc.get("noise_floor"), 3) + ")" if dc.get("noise_floor") else ""}'
                   f' {verdict_badge(dc.get("verdict"))}</div></div></div>')
        if dc.get("examples"):
            out.append('<details><summary>current records the classifier finds most unlike the reference</summary><ul>'
                       + "".join(f'<li>{esc(e["text"])} <span class="muted small">({e["score"]})</span></li>'
                                 for e in dc["examples"]) + "</ul></details>")
        topics = block["topics"]
        flagged = [c for c in topics.get("clusters", []) if c["status"] in ("new", "grown")]
        out.append(f'<p class="small">{topics.get("k", 0)} topics in the current window; '
                   f'{len(flagged)} new or grown (new topics hold {pct(topics.get("new_share"))} of current traffic; '
                   f'drift when a topic grows by ≥ {pct(topics.get("threshold"))} or new ones hold ≥ '
                   f'{pct(topics.get("new_threshold"))}) '
                   f'{verdict_badge(topics.get("verdict"))} {LEGEND}</p>')
        for c in topics.get("clusters", []):
            if c["status"] not in ("new", "grown"):
                continue
            out.append(_cluster(c, open_=True))
        rest = [c for c in topics.get("clusters", []) if c["status"] not in ("new", "grown")]
        if rest:
            out.append(f'<details><summary>the other {len(rest)} topics</summary>'
                       + "".join(_cluster(c) for c in rest) + "</details>")
    return "".join(out)


def _cluster(c: dict[str, Any], open_: bool = False) -> str:
    kws = "".join(f'<span class="kw">{esc(k)}</span>' for k in c.get("keywords", []))
    ex = "".join(f"<li>{esc(e)}</li>" for e in c.get("examples", []))
    ref = "".join(f"<li>{esc(e)}</li>" for e in c.get("reference_examples", []))
    return (f'<div class="cluster st-{esc(c["status"])}" data-status="{esc(c["status"])}">'
            f'<div><strong>{esc(c["status"])}</strong> topic #{c["id"]} {kws}</div>'
            f'{svg_cluster(c["reference_share"], c["current_share"])}'
            f'<div class="small muted">{c["reference_count"]} reference / {c["current_count"]} current records; '
            f'share {pct(c["reference_share"])} → {pct(c["current_share"])} (p = {fmt(c.get("p_value"), 3)})</div>'
            f'<details {"open" if open_ else ""}><summary>examples from the current window</summary><ul>{ex}</ul></details>'
            + (f'<details><summary>nearest reference records</summary><ul>{ref}</ul></details>' if ref else "")
            + "</div>")


def quality_section(q: dict[str, Any]) -> str:
    out = []
    for key, title in (("judge_scores", "judge scores"), ("feedback", "feedback")):
        block = q.get(key) or {}
        out.append(f'<h3>{title} {verdict_badge(block.get("verdict"))}</h3>')
        if block.get("reason"):
            out.append(f'<p class="muted small">{esc(block["reason"])}</p>')
        if block.get("checks"):
            out.append(checks_table(block["checks"]))
    return "".join(out)


def probe_section(p: dict[str, Any] | None) -> str:
    if not p:
        return ('<p class="muted small">Not run (<code>shipyard drift report --probe N</code> re-runs N production '
                'inputs through the gateway).</p>')
    out = [f'<p>{p["probed"]} inputs re-run {p["repeats"]} times each: outputs changed for '
           f'<strong>{pct(p.get("changed_rate"))}</strong> of them; differ from the recorded output for '
           f'{pct(p.get("differs_from_recorded_rate"))}; mean pairwise similarity {fmt(p.get("mean_similarity"), 3)} '
           f'{verdict_badge(p.get("verdict"))}</p>']
    changed = [r for r in p.get("results", []) if r.get("changed")][:5]
    if changed:
        out.append("<details><summary>inputs whose outputs changed</summary><ul>" + "".join(
            f'<li>{esc(r["input"])}<ul>' + "".join(f"<li>{esc(o)}</li>" for o in r["outputs"]) + "</ul></li>"
            for r in changed) + "</ul></details>")
    return "".join(out)


def render_body(s: dict[str, Any]) -> str:
    ref, cur = s["reference"], s["current"]
    drifted = s.get("drifted") or []
    out = [
        '<div class="drift">',
        f'<h1>Drift report {verdict_badge(s["verdict"])}</h1>',
        f'<p><strong>reference</strong> {esc(ref["description"])} — {ref["records"]} records<br>'
        f'<strong>current</strong> {esc(cur["description"])}'
        f'{" (alias " + esc(cur["alias"]) + ")" if cur.get("alias") else ""} — {cur["records"]} records<br>'
        f'<span class="muted small">generated {when(s.get("generated_at"))}; took {fmt(s["timings"].get("total_s"), 3)} s</span></p>',
    ]
    if s.get("reason"):
        out.append(f'<p class="verdict v-na">{esc(s["reason"])}</p>')
    if drifted:
        out.append('<p><strong>Drifted:</strong> ' + ", ".join(f"<code>{esc(d)}</code>" for d in drifted) + "</p>")
    if s.get("notes"):
        out.append('<ul class="notes small muted">' + "".join(f"<li>{esc(n)}</li>" for n in s["notes"]) + "</ul>")
    st = s["structural"]
    out.append("<h2>Structure</h2>")
    if s.get("schema"):
        out.append(f'<p class="small muted">Schema adherence: outputs are held to the schema their request asked for, '
                   f'else to {esc(s["schema"])}.</p>')
    for side, title in (("input", "inputs (last user message)"), ("output", "outputs"), ("call", "calls")):
        out.append(f"<h3>{title}</h3>")
        out.append(checks_table(st.get(side) or []))
    out.append("<h2>Topics and meaning</h2>")
    out.append(semantic_section(s["semantic"]))
    out.append("<h2>Quality signals</h2>")
    out.append(quality_section(s.get("quality") or {}))
    out.append("<h2>Nondeterminism probe</h2>")
    out.append(probe_section(s.get("probe")))
    out.append("</div>")
    return "\n".join(out)


def render_html(s: dict[str, Any]) -> str:
    title = f"Shipyard drift report: {s['verdict']}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>body {{ margin: 0; padding: 20px 28px; background: #f6f7f9; }}"
            f"{CSS}</style></head><body>\n{render_body(s)}\n</body></html>\n")
