/* shipyard-feedback.js — send user feedback on LLM answers to a Shipyard gateway.
   Served at /ui/static/shipyard-feedback.js; copy it into your front end or load it from there.
   No dependencies. Works as a <script> (window.ShipyardFeedback) or a CommonJS/ES module.

     var fb = ShipyardFeedback.init({
       endpoint: "https://gateway.example.com",   // the gateway's base URL
       apiKey: "<a feedback key>",                // one of feedback.api_keys (browser-visible: use a key
                                                  // that only sends feedback), or omit with allow_anonymous
       userId: "u-123", sessionId: "s-9"          // optional, sent with every event
     });
     // the trace id comes from the chat response's x-shipyard-trace-id header
     fb.thumbsUp(traceId);                 fb.thumbsDown(traceId, { text: "wrong city" });
     fb.score(traceId, 4, { scale: [1, 5] });  fb.label(traceId, "off-topic");
     fb.comment(traceId, "Great answer");  fb.correct(traceId, "The right answer is ...");
     fb.accepted(traceId); fb.edited(traceId, finalText); fb.ignored(traceId);
     fb.regenerated(traceId); fb.copied(traceId);
     fb.trackCopy(element, traceId);       // "copied" when the user copies text from element
     fb.outcome({ sessionId: "s-9", name: "purchase_usd", value: 42.5 });
     fb.send({ completionId: "chatcmpl-...", kind: "accepted" });   // by completion id

   Every call returns a Promise of the stored event. Each event carries an idempotency key,
   so a retry (network error, 5xx, 429: up to `retries` times with back-off) is never
   counted twice; requests use keepalive, so feedback sent while the page unloads arrives. */
(function (root, factory) {
  "use strict";
  var api = factory();
  if (typeof module === "object" && module.exports) module.exports = api;
  if (root) root.ShipyardFeedback = api;
})(typeof window !== "undefined" ? window : typeof self !== "undefined" ? self : this, function () {
  "use strict";

  function uuid() {
    var c = typeof crypto !== "undefined" ? crypto : null;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    return Array.prototype.map.call(b, function (x) { return (x < 16 ? "0" : "") + x.toString(16); }).join("");
  }

  function wait(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  function FeedbackError(message, status, body) {
    var e = new Error(message);
    e.name = "ShipyardFeedbackError";
    e.status = status;
    e.body = body;
    return e;
  }

  function init(options) {
    options = options || {};
    var base = String(options.endpoint || "").replace(/\/+$/, "");
    var retries = options.retries == null ? 3 : options.retries;
    var fetchFn = options.fetch || (typeof fetch !== "undefined" ? fetch.bind(typeof window !== "undefined" ? window : null) : null);
    if (!fetchFn) throw new Error("ShipyardFeedback: no fetch available; pass options.fetch");

    function post(path, body) {
      var headers = { "content-type": "application/json", "idempotency-key": body.idempotency_key };
      if (options.apiKey) headers.authorization = "Bearer " + options.apiKey;
      var attempt = 0;
      function once() {
        return fetchFn(base + path, { method: "POST", headers: headers, body: JSON.stringify(body),
                                      keepalive: true, mode: "cors", credentials: "omit" })
          .then(function (resp) {
            return resp.json().catch(function () { return null; }).then(function (data) {
              if (resp.ok) return data;
              var msg = (data && data.error && data.error.message) || ("HTTP " + resp.status);
              throw FeedbackError(msg, resp.status, data);
            });
          }, function (err) { throw FeedbackError(err && err.message || "network error", 0, null); })
          .catch(function (err) {
            var transient = err.status === 0 || err.status >= 500 || err.status === 429;
            if (!transient || attempt >= retries) throw err;
            attempt += 1;
            return wait(200 * Math.pow(2, attempt - 1) * (0.5 + Math.random())).then(once);
          });
      }
      return once();
    }

    function send(event) {
      event = event || {};
      var body = {
        kind: event.kind,
        source: event.source || options.source || "end_user",
        idempotency_key: event.idempotencyKey || uuid()
      };
      if (event.traceId) body.trace_id = event.traceId;
      if (event.completionId) body.completion_id = event.completionId;
      if (event.spanId) body.span_id = event.spanId;
      if (event.value !== undefined) body.value = event.value;
      if (event.scale) body.scale = event.scale;
      if (event.label !== undefined) body.label = event.label;
      if (event.text !== undefined) body.text = event.text;
      var userId = event.userId || options.userId, sessionId = event.sessionId || options.sessionId;
      if (userId) body.user_id = userId;
      if (sessionId) body.session_id = sessionId;
      if (event.metadata) body.metadata = event.metadata;
      return post("/api/feedback", body);
    }

    function kind(name, extra) {
      return function (traceId, opts) {
        var e = Object.assign({}, opts || {}, { traceId: traceId, kind: name }, extra || {});
        return send(e);
      };
    }

    var client = {
      send: send,
      thumbsUp: kind("thumbs", { value: "up" }),
      thumbsDown: kind("thumbs", { value: "down" }),
      score: function (traceId, value, opts) { return send(Object.assign({}, opts || {}, { traceId: traceId, kind: "score", value: value })); },
      label: function (traceId, label, opts) { return send(Object.assign({}, opts || {}, { traceId: traceId, kind: "label", label: label })); },
      comment: function (traceId, text, opts) { return send(Object.assign({}, opts || {}, { traceId: traceId, kind: "comment", text: text })); },
      correct: function (traceId, text, opts) { return send(Object.assign({}, opts || {}, { traceId: traceId, kind: "correction", text: text })); },
      edited: function (traceId, finalText, opts) { return send(Object.assign({}, opts || {}, { traceId: traceId, kind: "edited", text: finalText })); },
      accepted: kind("accepted"),
      ignored: kind("ignored"),
      regenerated: kind("regenerated"),
      copied: kind("copied"),
      trackCopy: function (element, traceId, opts) {
        var sent = false;
        var handler = function () {
          if (sent) return;
          sent = true;  // one "copied" per answer
          client.copied(traceId, opts).catch(function () { sent = false; });
        };
        element.addEventListener("copy", handler);
        return function () { element.removeEventListener("copy", handler); };
      },
      outcome: function (o) {
        o = o || {};
        var body = { name: o.name, value: o.value, idempotency_key: o.idempotencyKey || uuid() };
        var sessionId = o.sessionId || options.sessionId;
        if (sessionId) body.session_id = sessionId;
        if (o.traceId) body.trace_id = o.traceId;
        if (o.metadata) body.metadata = o.metadata;
        return post("/api/outcomes", body);
      }
    };
    return client;
  }

  return { init: init, version: "1" };
});
