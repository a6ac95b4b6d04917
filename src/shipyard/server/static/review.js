/* Shipyard review queue, human labels on the trace page, and the dashboard's feedback panel.
   Everything from the API is untrusted: it only reaches the page through textContent.
   Keyboard (review page): j/→ next, k/← previous, p pass, f fail, t tags, n note,
   c corrected output, d add to an eval set, o open the trace, ? shortcuts, Esc leaves a field. */
(function () {
  "use strict";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function fmtTime(ts) {
    if (ts == null) return "—";
    var d = new Date(ts * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
  }
  function pct(v) { return v == null ? "—" : (100 * v).toFixed(v < 0.1 ? 1 : 0) + "%"; }

  function request(method, url, body) {
    var opts = { method: method, headers: { accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.headers["content-type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) {
          var msg = (data && data.error && data.error.message) || (resp.status + " " + resp.statusText);
          var err = new Error(msg);
          err.status = resp.status;
          throw err;
        }
        return data;
      });
    });
  }

  // ---- the review page -------------------------------------------------------------------
  var root = document.getElementById("review-page");
  if (root && root.dataset.traceId) reviewPage(root);

  function reviewPage(root) {
    var form = document.getElementById("label-form");
    var status = document.getElementById("review-status");
    var tags = document.getElementById("tags");
    var note = document.getElementById("note");
    var correction = document.getElementById("correction");
    var correctionBox = document.getElementById("correction-box");
    var reviewer = document.getElementById("reviewer");
    var dsForm = document.getElementById("dataset-form");
    var dsInput = document.getElementById("dataset");
    var dsStatus = document.getElementById("dataset-status");
    var shortcuts = document.getElementById("shortcuts");
    var busy = false;
    var STORE_KEY = "shipyard.reviewer";

    try {
      if (reviewer && !reviewer.value) reviewer.value = window.localStorage.getItem(STORE_KEY) || "";
    } catch (e) { /* storage disabled */ }
    if (reviewer) {
      reviewer.addEventListener("change", function () {
        try { window.localStorage.setItem(STORE_KEY, reviewer.value.trim()); } catch (e) { /* ignore */ }
      });
    }

    function say(node, text, kind) {
      node.textContent = text;
      node.className = "status-line" + (kind ? " " + kind : "");
    }
    function go(url) { if (url) window.location.href = url; }

    function label(verdict) {
      if (busy) return;
      busy = true;
      say(status, "saving…");
      var body = {
        trace_id: root.dataset.traceId, day: root.dataset.day, verdict: verdict,
        tags: tags.value, note: note.value, reviewer: reviewer ? reviewer.value : ""
      };
      if (correction && correction.value.trim()) body.correction = correction.value;
      request("POST", "/api/review/labels", body).then(function (out) {
        say(status, "saved: " + out.verdict + (out.tags.length ? " (" + out.tags.join(", ") + ")" : ""), "ok");
        var item = document.querySelector("#queue li.current");
        if (item) {
          item.dataset.verdict = out.verdict;
          var badge = item.querySelector(".verdict");
          if (badge) { badge.textContent = out.verdict; badge.className = "badge verdict verdict-" + out.verdict; }
        }
        go(root.dataset.nextUrl || root.dataset.selfUrl);
      }).catch(function (err) {
        busy = false;
        say(status, "not saved: " + err.message, "error");
      });
    }

    function addToDataset() {
      var name = dsInput.value.trim();
      if (!name) { dsInput.focus(); say(dsStatus, "type a dataset name first", "error"); return; }
      say(dsStatus, "adding…");
      request("POST", "/api/review/datasets", { trace_id: root.dataset.traceId, dataset: name })
        .then(function (out) {
          say(dsStatus, "added to " + out.dataset + " (version " + out.version + ", " + out.item_count + " items)", "ok");
          dsInput.blur();
        })
        .catch(function (err) { say(dsStatus, "not added: " + err.message, "error"); });
    }

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var verdict = ev.submitter && ev.submitter.value;
      if (verdict === "pass" || verdict === "fail") label(verdict);
    });
    dsForm.addEventListener("submit", function (ev) { ev.preventDefault(); addToDataset(); });
    // Enter in a one-line field must not submit the label form (its first button is "pass")
    [tags, reviewer].forEach(function (input) {
      if (!input) return;
      input.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter") { ev.preventDefault(); input.blur(); }
      });
    });

    function typing(target) {
      var tag = target && target.tagName;
      return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
    }

    document.addEventListener("keydown", function (ev) {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (typing(ev.target)) {
        if (ev.key === "Escape") { ev.preventDefault(); ev.target.blur(); }
        return;
      }
      var focus = function (node) { ev.preventDefault(); node.focus(); if (node.select) node.select(); };
      switch (ev.key) {
        case "j": case "ArrowRight": ev.preventDefault(); go(root.dataset.nextUrl); break;
        case "k": case "ArrowLeft": ev.preventDefault(); go(root.dataset.prevUrl); break;
        case "p": ev.preventDefault(); label("pass"); break;
        case "f": ev.preventDefault(); label("fail"); break;
        case "t": focus(tags); break;
        case "n": focus(note); break;
        case "c": correctionBox.open = true; focus(correction); break;
        case "d": focus(dsInput); break;
        case "o": ev.preventDefault(); go("/ui/traces/" + encodeURIComponent(root.dataset.traceId)); break;
        case "?": ev.preventDefault(); shortcuts.hidden = !shortcuts.hidden; break;
        default: return;
      }
    });
    var current = document.querySelector("#queue li.current");
    if (current && current.scrollIntoView) current.scrollIntoView({ block: "nearest" });
  }

  // ---- the trace page: human labels and feedback -----------------------------------------
  var box = document.getElementById("human-labels");
  if (box && box.dataset.traceId) {
    request("GET", "/api/traces/" + encodeURIComponent(box.dataset.traceId) + "/feedback").then(function (data) {
      var body = box.querySelector(".hl-body");
      body.textContent = "";
      var reviewed = data.labels.filter(function (l) { return l.origin === "review"; });
      if (!reviewed.length && !data.feedback.length && !data.outcomes.length) {
        body.appendChild(el("p", "muted small", "No human labels or feedback yet."));
      }
      if (reviewed.length) {
        var table = el("table", "kv human-labels-table");
        var tb = el("tbody");
        reviewed.forEach(function (l) {
          var tr = el("tr", "hl-row");
          tr.dataset.criterion = l.criterion;
          tr.dataset.label = l.label;
          tr.appendChild(el("th", null, l.criterion));
          var td = el("td");
          td.appendChild(el("span", "badge " + (l.label === "pass" ? "status-ok" : "status-error"), l.label));
          var who = [l.reviewer, fmtTime(l.updated_at)].filter(Boolean).join(" · ");
          td.appendChild(document.createTextNode(" " + who));
          if (l.criterion === "overall" && l.note) td.appendChild(el("div", "small hl-note", l.note));
          tr.appendChild(td);
          tb.appendChild(tr);
        });
        table.appendChild(tb);
        body.appendChild(table);
      }
      if (data.feedback.length) {
        var c = data.counts;
        body.appendChild(el("p", "small hl-feedback", "Feedback: " + data.feedback.length + " event" +
          (data.feedback.length === 1 ? "" : "s") + " (" + c.positive + " positive, " + c.negative + " negative, " +
          c.neutral + " neutral): " + data.feedback.map(function (f) {
            return f.kind + (f.kind === "thumbs" ? (f.value > 0 ? " up" : " down") : f.value != null ? " " + f.value : "");
          }).join(", ")));
      }
      if (data.outcomes.length) {
        body.appendChild(el("p", "small hl-outcomes", "Outcomes of the session: " + data.outcomes.map(function (o) {
          return o.name + " = " + o.value;
        }).join(", ")));
      }
      box.hidden = false;
    }).catch(function () { /* the trace page works without this box */ });
  }

  // ---- the dashboard: feedback rates ------------------------------------------------------
  var panel = document.getElementById("feedback-panel");
  if (panel) {
    var select = document.getElementById("feedback-by");
    var load = function () {
      var params = new URLSearchParams();
      ["since", "start", "end"].forEach(function (k) { if (panel.dataset[k]) params.set(k, panel.dataset[k]); });
      params.set("by", select ? select.value : "alias");
      var out = panel.querySelector(".fb-body");
      request("GET", "/api/feedback/stats?" + params.toString()).then(function (data) {
        out.textContent = "";
        var s = data.summary;
        out.appendChild(el("p", "muted small fb-summary", s.total + " feedback events on " + s.traces + " traces · " +
          pct(s.positive_rate) + " positive, " + pct(s.negative_rate) + " negative" +
          (s.mean_score != null ? " · mean score " + s.mean_score.toFixed(2) : "")));
        if (!data.totals.length) { out.appendChild(el("p", "muted small", "No feedback in this range.")); return; }
        var table = el("table", "traces");
        table.id = "feedback-rates";
        var head = el("tr");
        [data.by.replace("_", " "), "events", "traces", "positive", "negative", "mean score", "positive rate over time"]
          .forEach(function (h, i) { head.appendChild(el("th", i && i < 6 ? "num" : null, h)); });
        var thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
        var tbody = el("tbody");
        data.totals.forEach(function (r) {
          var tr = el("tr", "fb-row");
          tr.dataset.group = r.group;
          tr.appendChild(el("td", null, r.group));
          tr.appendChild(el("td", "num", r.total));
          tr.appendChild(el("td", "num", r.traces));
          tr.appendChild(el("td", "num", pct(r.positive_rate)));
          tr.appendChild(el("td", "num", pct(r.negative_rate)));
          tr.appendChild(el("td", "num", r.mean_score == null ? "—" : r.mean_score.toFixed(2)));
          var td = el("td");
          td.appendChild(sparkline(data, r.group));
          tr.appendChild(td);
          tbody.appendChild(tr);
        });
        table.appendChild(tbody);
        out.appendChild(table);
        if (data.outcomes.length) {
          out.appendChild(el("p", "small fb-outcomes", "Outcomes: " + data.outcomes.map(function (o) {
            return o.name + " @ " + o.group + ": mean " + o.mean + " (" + o.count + ")";
          }).join("; ")));
        }
      }).catch(function (err) {
        out.textContent = "";
        out.appendChild(el("p", "err-text small", "Feedback stats unavailable: " + err.message));
      });
    };
    if (select) select.addEventListener("change", load);
    load();
  }

  function sparkline(data, group) {
    var NS = "http://www.w3.org/2000/svg", W = 160, H = 28;
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("class", "sparkline");
    var pts = data.data.filter(function (r) { return r.group === group && r.positive_rate != null; });
    var span = Math.max(1, data.end - data.start);
    var coords = pts.map(function (r) {
      return [(r.bucket_start + data.bucket_s / 2 - data.start) / span * W, H - 2 - r.positive_rate * (H - 4), r];
    });
    if (coords.length > 1) {
      var path = document.createElementNS(NS, "path");
      path.setAttribute("d", coords.map(function (c, i) { return (i ? "L" : "M") + c[0].toFixed(1) + " " + c[1].toFixed(1); }).join(" "));
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", "#16a34a");
      path.setAttribute("stroke-width", "1.5");
      svg.appendChild(path);
    }
    coords.forEach(function (c) {
      var dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", c[0].toFixed(1));
      dot.setAttribute("cy", c[1].toFixed(1));
      dot.setAttribute("r", "2");
      dot.setAttribute("fill", "#16a34a");
      var t = document.createElementNS(NS, "title");
      t.textContent = fmtTime(c[2].bucket_start) + " · " + pct(c[2].positive_rate) + " positive of " + c[2].total;
      dot.appendChild(t);
      svg.appendChild(dot);
    });
    return svg;
  }
})();
