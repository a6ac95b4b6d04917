"""static/shipyard-feedback.js in real headless Chromium, as a web front end would use it:
from another origin (CORS), with an API key, retries that are never counted twice, copy
tracking and outcomes."""

from __future__ import annotations

import time
from typing import Any

import httpx
from test_feedback_api import KEY, call, config
from test_ui import Page, browser  # noqa: F401  (the module-scoped Chromium fixture)


def stored(server: Any, trace_id: str) -> list[dict[str, Any]]:
    return httpx.get(server.url + "/api/feedback", params={"trace_id": trace_id}, timeout=10).json()["data"]


def test_snippet_sends_feedback_cross_origin_with_retries_and_copy_tracking(browser, serve, fake_openai):  # noqa: F811
    server = serve(config(fake_openai, allow_origins=["*"]))
    trace_id, completion_id = call(server)
    other, _ = call(server, extra_body={"metadata": {"session_id": "web-s1"}})
    port = server.url.rsplit(":", 1)[1]
    t = Page(browser, f"http://localhost:{port}")  # another origin than the endpoint (127.0.0.1)
    try:
        page = t.page
        t.goto("/health")
        page.add_script_tag(url=server.url + "/ui/static/shipyard-feedback.js")
        out = page.evaluate("""async ([endpoint, key, tid, cid]) => {
            const fb = ShipyardFeedback.init({endpoint, apiKey: key, userId: "web-user"});
            const up = await fb.thumbsUp(tid);
            const fixed = await fb.correct(tid, "The corrected answer");
            const byCompletion = await fb.send({completionId: cid, kind: "accepted"});
            const score = await fb.score(tid, 4, {scale: [1, 5]});
            let missing = null;
            try { await fb.accepted("0".repeat(32)); } catch (e) { missing = [e.status, e.message]; }
            return {up, fixed, byCompletion, score, missing};
        }""", [server.url, KEY, trace_id, completion_id])
        assert out["up"]["kind"] == "thumbs" and out["up"]["user_id"] == "web-user"
        assert out["fixed"]["text"] == "The corrected answer" and out["byCompletion"]["trace_id"] == trace_id
        assert out["score"]["score_norm"] == 0.75
        assert out["missing"][0] == 404 and "No trace" in out["missing"][1]

        # a lost response is retried with the same idempotency key: stored once
        dup = page.evaluate("""async ([endpoint, key, tid]) => {
            let calls = 0;
            const flaky = (url, init) => fetch(url, init).then(r => {
                calls += 1;
                return calls === 1 ? new Response("{}", {status: 503}) : r;   // the first answer is lost
            });
            const fb = ShipyardFeedback.init({endpoint, apiKey: key, fetch: flaky, retries: 2});
            const ev = await fb.regenerated(tid);
            return {calls, duplicate: ev.duplicate};
        }""", [server.url, KEY, other])
        assert dup == {"calls": 2, "duplicate": True}
        assert [f["kind"] for f in stored(server, other)] == ["regenerated"]

        # copying the answer sends "copied" once; outcomes per session
        page.evaluate("""async ([endpoint, key, tid]) => {
            const fb = ShipyardFeedback.init({endpoint, apiKey: key, sessionId: "web-s1"});
            const el = document.createElement("div");
            el.textContent = "the answer";
            document.body.appendChild(el);
            fb.trackCopy(el, tid);
            el.dispatchEvent(new Event("copy", {bubbles: true}));
            el.dispatchEvent(new Event("copy", {bubbles: true}));
            await fb.outcome({name: "converted", value: 1});
        }""", [server.url, KEY, other])
        deadline = time.monotonic() + 10
        while not any(f["kind"] == "copied" for f in stored(server, other)) and time.monotonic() < deadline:
            time.sleep(0.05)
        kinds = sorted(f["kind"] for f in stored(server, other))
        assert kinds == ["copied", "regenerated"]
        summary = httpx.get(f"{server.url}/api/traces/{other}/feedback", timeout=10).json()
        assert [(o["name"], o["value"]) for o in summary["outcomes"]] == [("converted", 1.0)]

        # without a key the gateway says why
        err = page.evaluate("""async ([endpoint, tid]) => {
            try { await ShipyardFeedback.init({endpoint, retries: 0}).accepted(tid); return null; }
            catch (e) { return [e.status, e.message]; }
        }""", [server.url, trace_id])
        assert err[0] == 401 and "API key" in err[1]
    finally:
        t.close()
    assert not [p for p in t.problems if "401" not in p and "404" not in p and "503" not in p], t.problems


def test_snippet_is_refused_by_origins_not_allowed(browser, serve, fake_openai):  # noqa: F811
    server = serve(config(fake_openai))  # no allow_origins: browsers on other sites are refused
    trace_id, _ = call(server)
    port = server.url.rsplit(":", 1)[1]
    t = Page(browser, f"http://localhost:{port}")
    try:
        t.goto("/health")
        t.page.add_script_tag(url=server.url + "/ui/static/shipyard-feedback.js")
        err = t.page.evaluate("""async ([endpoint, key, tid]) => {
            try { await ShipyardFeedback.init({endpoint, apiKey: key, retries: 0}).accepted(tid); return null; }
            catch (e) { return e.status; }
        }""", [server.url, KEY, trace_id])
        assert err == 0  # blocked by CORS: a network error to the page
    finally:
        t.close()
    assert stored(server, trace_id) == []
