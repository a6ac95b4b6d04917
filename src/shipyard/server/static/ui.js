/* Shipyard web UI: small progressive enhancements. Pages work without this file.
   Everything from the API is untrusted: it only ever reaches the page via textContent. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // ---- formatting (mirrors ui.py) ----------------------------------------------------
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtTime(ts) {
    if (ts == null) return "—";
    var d = new Date(ts * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  function fmtMs(ms) {
    if (ms == null) return "—";
    if (ms >= 10000) return (ms / 1000).toFixed(1) + " s";
    if (ms >= 1000) return (ms / 1000).toFixed(2) + " s";
    return ms >= 10 ? Math.round(ms) + " ms" : ms.toFixed(1) + " ms";
  }
  function fmtCost(usd) {
    if (usd == null) return "—";
    if (usd === 0) return "$0";
    return usd < 0.01 ? "$" + usd.toFixed(6).replace(/0+$/, "") : "$" + usd.toFixed(4);
  }
  function fmtTokens(i, o) {
    if (i == null && o == null) return "—";
    return (i || 0) + " → " + (o || 0);
  }
  window.Shipyard = { fmtTime: fmtTime, fmtMs: fmtMs, fmtCost: fmtCost };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }

  // ---- time range: show the custom inputs only for "custom" ---------------------------
  var since = document.getElementById("f-since");
  var custom = document.getElementById("custom-range");
  if (since && custom) {
    var sync = function () { custom.hidden = since.value !== "custom"; };
    since.addEventListener("change", sync);
    sync();
  }
  // empty fields are left out of the URL, so shared links stay short
  Array.prototype.forEach.call(document.querySelectorAll("form.filters"), function (form) {
    form.addEventListener("submit", function () {
      Array.prototype.forEach.call(form.elements, function (f) {
        if (f.name && !f.value) f.disabled = true;
      });
      if (since && since.value !== "custom") {
        Array.prototype.forEach.call(custom ? custom.querySelectorAll("input") : [], function (f) { f.disabled = true; });
      }
    });
  });

  window.addEventListener("pageshow", function () {  // back/forward cache keeps disabled fields
    Array.prototype.forEach.call(document.querySelectorAll("form.filters [disabled]"), function (f) { f.disabled = false; });
  });

  // ---- trace list: click a row to open it; "load more" appends -----------------------
  var table = document.getElementById("traces");
  if (table && table.dataset.api !== undefined) {
    table.addEventListener("click", function (ev) {
      var row = ev.target.closest("tr[data-href]");
      if (!row || ev.target.closest("a") || (window.getSelection && String(window.getSelection()))) return;
      if (ev.ctrlKey || ev.metaKey) { window.open(row.dataset.href, "_blank"); return; }
      window.location.href = row.dataset.href;
    });
  }

  function traceRow(r) {
    var tr = el("tr", "trace-row" + (r.status === "error" ? " is-error" : ""));
    var href = "/ui/traces/" + encodeURIComponent(r.trace_id);
    tr.dataset.href = href;
    tr.dataset.traceId = r.trace_id;
    var td = el("td", "nowrap"), a = el("a", null, fmtTime(r.start_time));
    a.href = href;
    td.appendChild(a);
    tr.appendChild(td);
    td = el("td");
    td.appendChild(el("span", "badge status-" + (r.status === "error" ? "error" : "ok"), r.status || "?"));
    tr.appendChild(td);
    tr.appendChild(el("td", null, r.alias || "—"));
    tr.appendChild(el("td", null, r.model || "—"));
    tr.appendChild(el("td", null, r.user_id || "—"));
    tr.appendChild(el("td", "num", fmtMs(r.duration_ms)));
    tr.appendChild(el("td", "num", fmtTokens(r.input_tokens, r.output_tokens)));
    tr.appendChild(el("td", "num", fmtCost(r.cost_usd)));
    td = el("td", "name", r.name || "");
    if (r.span_count > 1) { td.appendChild(document.createTextNode(" ")); td.appendChild(el("span", "muted small", "(" + r.span_count + " spans)")); }
    tr.appendChild(td);
    return tr;
  }

  var more = document.getElementById("load-more");
  if (more && table && table.dataset.api) {
    more.addEventListener("click", function (ev) {
      ev.preventDefault();
      if (more.getAttribute("aria-busy") === "true") return;
      more.setAttribute("aria-busy", "true");
      var url = table.dataset.api + "&cursor=" + encodeURIComponent(more.dataset.cursor);
      fetch(url, { headers: { accept: "application/json" } })
        .then(function (resp) {
          return resp.json().then(function (body) {
            if (!resp.ok) throw new Error((body.error && body.error.message) || resp.statusText);
            return body;
          });
        })
        .then(function (body) {
          var tbody = table.tBodies[0];
          body.data.forEach(function (r) { tbody.appendChild(traceRow(r)); });
          var count = document.getElementById("row-count");
          if (count) count.textContent = String(tbody.querySelectorAll("tr.trace-row").length);
          if (body.next_cursor) {
            more.dataset.cursor = body.next_cursor;
            more.removeAttribute("aria-busy");
          } else {
            more.parentNode.removeChild(more);
          }
        })
        .catch(function (err) {
          more.removeAttribute("aria-busy");
          more.textContent = "Load more (failed: " + err.message + "; retry)";
        });
    });
  }

  // ---- trace page: select a span to show its details ---------------------------------
  var tree = document.getElementById("span-tree");
  if (tree) {
    var nodes = tree.querySelectorAll(".span-node");
    var details = document.querySelectorAll(".span-detail");
    var select = function (id, push) {
      var found = false;
      Array.prototype.forEach.call(details, function (d) {
        var on = d.dataset.spanId === id;
        d.hidden = !on;
        found = found || on;
      });
      if (!found) return false;
      Array.prototype.forEach.call(nodes, function (n) {
        var on = n.dataset.spanId === id;
        n.classList.toggle("selected", on);
        n.querySelector("a").setAttribute("aria-current", on ? "true" : "false");
      });
      if (push && window.history.replaceState) window.history.replaceState(null, "", "#span-" + id);
      return true;
    };
    tree.addEventListener("click", function (ev) {
      var node = ev.target.closest(".span-node");
      if (!node) return;
      ev.preventDefault();
      select(node.dataset.spanId, true);
    });
    tree.addEventListener("keydown", function (ev) {
      if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
      var list = Array.prototype.slice.call(nodes);
      var i = list.findIndex(function (n) { return n.classList.contains("selected"); });
      var next = list[ev.key === "ArrowDown" ? Math.min(list.length - 1, i + 1) : Math.max(0, i - 1)];
      if (next) { ev.preventDefault(); select(next.dataset.spanId, true); next.querySelector("a").focus(); }
    });
    var fromHash = window.location.hash.indexOf("#span-") === 0 && select(window.location.hash.slice(6), false);
    if (!fromHash && nodes.length) select(nodes[0].dataset.spanId, false);
  }
})();
