/* Shipyard dashboard: SVG charts over time, one series per model. No libraries.
   Data comes from <script type="application/json" id="dash-data"> (the /api/dashboard shape);
   model names are untrusted and only ever set with textContent. */
(function () {
  "use strict";
  var source = document.getElementById("dash-data");
  var host = document.getElementById("charts");
  if (!source || !host) return;
  var data = JSON.parse(source.textContent);
  var S = window.Shipyard || {};
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                "#4b5563", "#65a30d"];
  var W = 640, H = 220, M = { l: 58, r: 14, t: 12, b: 30 };
  var PW = W - M.l - M.r, PH = H - M.t - M.b;

  var models = data.models.slice();
  var color = {};
  models.forEach(function (m, i) { color[m] = COLORS[i % COLORS.length]; });
  var rows = data.data.map(function (r) { return Object.assign({}, r, { model: r.model || "" }); });
  var byKey = {};
  rows.forEach(function (r) { byKey[r.bucket_start + "|" + r.model] = r; });
  var buckets = Array.from(new Set(rows.map(function (r) { return r.bucket_start; }))).sort(function (a, b) { return a - b; });

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtTick(ts) {
    var d = new Date(ts * 1000), span = data.end - data.start;
    var hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    var md = pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
    return span <= 86400 ? hm : span <= 7 * 86400 ? md + " " + hm : md;
  }
  function fmtNum(v) {
    if (v == null) return "—";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(v < 1 ? 3 : 1);
  }
  var fmtMs = S.fmtMs || fmtNum, fmtCost = S.fmtCost || fmtNum, fmtTime = S.fmtTime || String;
  function fmtPct(v) { return v == null ? "—" : (v < 10 ? v.toFixed(1) : v.toFixed(0)) + "%"; }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var raw = v / 4, mag = Math.pow(10, Math.floor(Math.log10(raw))), steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * mag >= raw) return steps[i] * mag * 4;
    return 10 * mag * 4;
  }
  function x(t) { return M.l + (t - data.start) / (data.end - data.start) * PW; }

  function svgEl(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function tip(node, text) { svgEl("title", {}, node).textContent = text; }

  function frame(svg, ymax, fmt) {
    var g = svgEl("g", { "class": "axes" }, svg);
    for (var i = 0; i <= 4; i++) {
      var v = ymax * i / 4, y = M.t + PH - PH * i / 4;
      svgEl("line", { x1: M.l, x2: W - M.r, y1: y, y2: y, "class": i ? "grid" : "axis" }, g);
      var t = svgEl("text", { x: M.l - 6, y: y + 4, "text-anchor": "end", "class": "tick" }, g);
      t.textContent = fmt(v);
    }
    for (var j = 0; j <= 4; j++) {
      var ts = data.start + (data.end - data.start) * j / 4, xx = x(ts);
      svgEl("line", { x1: xx, x2: xx, y1: M.t + PH, y2: M.t + PH + 4, "class": "axis" }, g);
      var lab = svgEl("text", { x: xx, y: H - 8, "text-anchor": j === 0 ? "start" : j === 4 ? "end" : "middle", "class": "tick" }, g);
      lab.textContent = fmtTick(ts);
    }
  }

  function legend(parent, extra) {
    var box = document.createElement("div");
    box.className = "legend";
    models.forEach(function (m) {
      var item = document.createElement("span");
      item.className = "legend-item";
      var sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = color[m];
      item.appendChild(sw);
      item.appendChild(document.createTextNode(m || "(unknown)"));
      box.appendChild(item);
    });
    if (extra) {
      var key = document.createElement("span");
      key.className = "legend-item muted";
      key.textContent = extra;
      box.appendChild(key);
    }
    parent.appendChild(box);
  }

  function card(id, title, extra) {
    var fig = document.createElement("figure");
    fig.className = "chart";
    fig.id = "chart-" + id;
    var cap = document.createElement("figcaption");
    cap.textContent = title;
    fig.appendChild(cap);
    legend(fig, extra);
    var svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": title });
    fig.appendChild(svg);
    host.appendChild(fig);
    return svg;
  }

  // Stacked bars: per bucket, one segment per model.
  function bars(id, title, value, fmt) {
    var svg = card(id, title);
    var totals = buckets.map(function (b) {
      return models.reduce(function (s, m) { var r = byKey[b + "|" + m]; return s + (r ? value(r) || 0 : 0); }, 0);
    });
    var ymax = niceMax(Math.max.apply(null, totals.concat([0])));
    frame(svg, ymax, fmt);
    var bw = Math.max(1.5, data.bucket_s / (data.end - data.start) * PW - 1);
    var g = svgEl("g", { "class": "series" }, svg);
    buckets.forEach(function (b) {
      var y0 = M.t + PH;
      models.forEach(function (m) {
        var r = byKey[b + "|" + m];
        var v = r ? value(r) : null;
        if (!v) return;
        var h = v / ymax * PH;
        var rect = svgEl("rect", { x: Math.max(M.l, x(b)), y: y0 - h, width: bw, height: Math.max(h, 0.5),
                                   fill: color[m], "class": "pt", "data-model": m }, g);
        tip(rect, (m || "(unknown)") + " · " + fmtTime(b) + " · " + fmt(v));
        y0 -= h;
      });
    });
  }

  // Lines: one per model (and per key, e.g. p95 solid and p50 dashed), a dot per point.
  function lines(id, title, keys, fmt, extra) {
    var svg = card(id, title, extra);
    var all = [];
    rows.forEach(function (r) { keys.forEach(function (k) { var v = k.value(r); if (v != null) all.push(v); }); });
    var ymax = niceMax(Math.max.apply(null, all.concat([0])));
    frame(svg, ymax, fmt);
    var g = svgEl("g", { "class": "series" }, svg);
    var mid = data.bucket_s / 2;
    models.forEach(function (m) {
      keys.forEach(function (k) {
        var pts = rows.filter(function (r) { return r.model === m && k.value(r) != null; })
          .sort(function (a, b) { return a.bucket_start - b.bucket_start; })
          .map(function (r) { return [x(Math.min(r.bucket_start + mid, data.end)), M.t + PH - k.value(r) / ymax * PH, r]; });
        if (pts.length > 1) {
          svgEl("path", { d: pts.map(function (p, i) { return (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1); }).join(" "),
                          fill: "none", stroke: color[m], "stroke-width": 2, "stroke-dasharray": k.dash ? "5 4" : "none",
                          "class": "line", "data-model": m }, g);
        }
        pts.forEach(function (p) {
          var c = svgEl("circle", { cx: p[0], cy: p[1], r: k.dash ? 2.5 : 3.5, fill: k.dash ? "#fff" : color[m],
                                    stroke: color[m], "stroke-width": 1.5, "class": "pt", "data-model": m }, g);
          tip(c, (m || "(unknown)") + " · " + fmtTime(p[2].bucket_start) + " · " + (k.label ? k.label + " " : "") + fmt(k.value(p[2])));
        });
      });
    });
  }

  function num(key) { return function (r) { return r[key] == null ? null : Number(r[key]); }; }
  bars("requests", "Requests", num("requests"), fmtNum);
  lines("latency", "Latency p95 (solid) and p50 (dashed)",
        [{ value: num("p95_ms"), label: "p95" }, { value: num("p50_ms"), label: "p50", dash: true }],
        fmtMs, "── p95  ┄┄ p50");
  lines("errors", "Error rate", [{ value: function (r) { return r.requests ? 100 * (r.errors || 0) / r.requests : null; } }], fmtPct);
  bars("cost", "Cost (USD)", num("cost_usd"), fmtCost);
  bars("tokens", "Tokens (input + output)", function (r) { return (Number(r.input_tokens) || 0) + (Number(r.output_tokens) || 0); }, fmtNum);
})();
