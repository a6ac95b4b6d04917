"""The review queue end to end in real headless Chromium.

Traffic goes through a real `shipyard serve` (fake upstream, openai SDK); a user sends a
thumbs-down through POST /api/feedback; a PII guard flags another call. The reviewer then
opens /ui/review (today's queue is built on that first visit), labels with the keyboard
(tags and a note, fail; pass; navigation), adds a trace to an eval dataset, and sees the
labels on the trace page. The labels feed judge alignment (shipyard.evals) unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import client_for, fast_alias
from test_ui import Page, assert_not_blank, browser  # noqa: F401  (the module-scoped Chromium fixture)

KEY = "review-test-key-0123456789"
SORRY = "Sorry, I cannot help with refunds."


def review_config(up: Any) -> dict[str, Any]:
    return {
        "providers": {"fake": {"type": "openai", "base_url": up.base_url, "api_key": "sk-test"}},
        "models": {
            "chat": fast_alias({"provider": "fake", "model": "gpt-4o-mini-2024-07-18"}, retries=0,
                               guards={"input": [{"name": "pii", "action": "flag"}]}),
            "smart": fast_alias({"provider": "fake", "model": "gpt-4o-2024-08-06"}, retries=0),
        },
        "feedback": {"api_keys": [KEY], "review_sample_size": 20},
    }


def replies(body: dict[str, Any]) -> str:
    text = str(body["messages"][-1].get("content"))
    if "refund" in text:
        return SORRY
    if "password" in text:
        return "Sure, I sent a reset link."
    return "Here is a helpful answer about " + text[:30]


def _call(client: Any, model: str, content: str, **kw: Any) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "You are the support bot."},
                               {"role": "user", "content": content}], **kw)
    raw.parse()
    return raw.headers["x-shipyard-trace-id"]


def traffic(server: Any, up: Any) -> dict[str, str]:
    up.reply_fn = replies
    client = client_for(server)
    ids = {
        "sorry": _call(client, "chat", "Can I get a refund for my order?", user="alice"),
        "guard": _call(client, "chat", "My email is jo@example.com, please reset my password", user="bob"),
        "a": _call(client, "chat", "How do I change my plan?", user="carol"),
        "b": _call(client, "chat", "Where is my invoice?", user="dave"),
        "c": _call(client, "smart", "Explain the pricing tiers", user="erin"),
    }
    r = httpx.post(server.url + "/api/feedback", timeout=10, headers={"authorization": f"Bearer {KEY}"},
                   json={"trace_id": ids["sorry"], "kind": "thumbs", "value": "down"})
    assert r.status_code == 201, r.text
    server.flush()
    return ids


@pytest.fixture
def gateway(serve, fake_openai):
    server = serve(review_config(fake_openai))
    return server, traffic(server, fake_openai)


@pytest.fixture
def tab(browser, gateway):  # noqa: F811
    server, _ = gateway
    t = Page(browser, server.url)
    yield t
    t.close()
    assert not t.problems, t.problems
    assert not t.dialogs, t.dialogs


def queue_ids(page: Any) -> list[str]:
    return page.locator("#queue li.q-item").evaluate_all("els => els.map(e => e.dataset.traceId)")


def test_review_flow_keyboard_labels_dataset_and_trace_page(tab, gateway, tmp_path):
    server, ids = gateway
    page = tab.page
    tab.goto("/ui/review")
    # today's queue was built on this first visit: every production call, risky ones first
    shown = queue_ids(page)
    assert set(shown) == set(ids.values())
    assert shown[:2] == [ids["sorry"], ids["guard"]]
    assert page.locator("#queue li.current").get_attribute("data-trace-id") == ids["sorry"]
    assert "negative_feedback" in page.locator("#reasons").inner_text()
    assert SORRY in page.locator("#review-output").inner_text()
    assert "refund" in page.locator("#review-input").inner_text()
    assert "thumbs" in page.locator("#review-feedback").inner_text()
    shortcuts = page.locator("#shortcuts").inner_text()
    for key in ("j", "k", "p", "f", "t", "n", "d", "?"):
        assert re.search(rf"(^|\s){re.escape(key)}(\s|$)", shortcuts), key
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
    assert_not_blank(tmp_path / "review.png")
    # everyone sees the same queue
    api_queue = httpx.get(server.url + "/api/review/queue", timeout=10).json()
    assert [i["trace_id"] for i in api_queue["items"]] == shown

    # label the first with the keyboard: tags, note, fail -> moves on to the next
    page.keyboard.press("t")
    assert page.evaluate("document.activeElement.id") == "tags"
    page.keyboard.type("Too verbose, wrong-facts")  # letters that are shortcuts do nothing while typing
    page.keyboard.press("Escape")
    page.keyboard.press("n")
    page.keyboard.type("refuses a valid refund")
    page.keyboard.press("Escape")
    assert page.url.endswith("/ui/review")
    page.keyboard.press("f")
    page.wait_for_url(re.compile(r"[?&]i=1"))
    assert page.locator("#queue li.current").get_attribute("data-trace-id") == ids["guard"]
    assert page.locator("#queue li.q-item").first.get_attribute("data-verdict") == "fail"
    assert "guard_flagged" in page.locator("#reasons").inner_text()
    assert "pii" in page.locator("#main-guards").inner_text()
    page.keyboard.press("p")
    page.wait_for_url(re.compile(r"[?&]i=2"))
    assert "2 of 5 reviewed" in page.locator("#progress").inner_text()

    # back with k: the first item shows its label
    page.keyboard.press("k")
    page.wait_for_url(re.compile(r"[?&]i=1"))
    assert page.locator("#current-verdict").inner_text() == "pass"
    page.keyboard.press("k")
    page.wait_for_url(re.compile(r"[?&]i=0"))
    assert page.locator("#current-verdict").inner_text() == "fail"
    assert page.locator("#current-tags").inner_text() == "too-verbose, wrong-facts"
    assert page.locator("#tags").input_value() == "too-verbose, wrong-facts"
    page.keyboard.press("j")
    page.wait_for_url(re.compile(r"[?&]i=1"))
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(re.compile(r"[?&]i=0"))

    # add to an eval set: d, a new dataset name, Enter
    page.keyboard.press("d")
    page.keyboard.type("support-regressions")
    page.keyboard.press("Enter")
    page.locator("#dataset-status.ok").wait_for()
    assert "added to support-regressions (version 1, 1 items)" in page.locator("#dataset-status").inner_text()
    page.keyboard.press("d")
    page.keyboard.press("Enter")  # the same trace again: refused, said so
    page.locator("#dataset-status.error").wait_for()
    assert "already in dataset" in page.locator("#dataset-status").inner_text()

    # the trace page shows the human labels (o opens it)
    page.keyboard.press("Escape")
    page.keyboard.press("o")
    page.wait_for_url(re.compile(r"/ui/traces/" + ids["sorry"]))
    box = page.locator("#human-labels")
    box.locator("tr.hl-row").first.wait_for()
    labels = dict(box.locator("tr.hl-row").evaluate_all("els => els.map(e => [e.dataset.criterion, e.dataset.label])"))
    assert labels == {"overall": "fail", "too-verbose": "fail", "wrong-facts": "fail"}
    assert "refuses a valid refund" in box.inner_text()
    assert "1 negative" in box.inner_text()
    page.screenshot(path=str(tmp_path / "trace-labels.png"), full_page=True)
    assert_not_blank(tmp_path / "trace-labels.png")

    # stored as human labels: the passed trace has implied passes for the new criteria
    store = server.engine.store
    from shipyard.feedback import iter_human_labels

    rows = {(r["trace_id"], r["criterion"]): (r["label"], r["origin"]) for r in iter_human_labels(store)}
    assert rows[(ids["sorry"], "overall")] == ("fail", "review")
    assert rows[(ids["guard"], "overall")] == ("pass", "review")
    assert rows[(ids["guard"], "too-verbose")] == ("pass", "implied")
    api_labels = httpx.get(server.url + "/api/review/labels", params={"trace_id": ids["sorry"]}, timeout=10).json()
    assert {r["criterion"] for r in api_labels["data"]} == {"overall", "too-verbose", "wrong-facts"}

    # the dataset item: the failed call's input, no expected answer, the review in the metadata
    from shipyard.evals.datasets import Datasets

    items = list(Datasets(store).iter_items("support-regressions"))
    assert len(items) == 1 and items[0]["trace_id"] == ids["sorry"] and items[0]["expected"] is None
    assert items[0]["input"]["messages"][-1]["content"] == "Can I get a refund for my order?"
    assert items[0]["metadata"]["human_label"] == "fail"
    assert items[0]["metadata"]["failure_modes"] == ["too-verbose", "wrong-facts"]

    # ... and the labels check a judge: a code assertion that fails apologies agrees with both
    from shipyard.evals.alignment import align, labels_from_store
    from shipyard.evals.evaluators import build_evaluator

    judge = build_evaluator({"type": "not_contains", "name": "no-apology", "value": "Sorry",
                             "criterion": "overall"}, "test", Path.cwd())
    labels = [lab for lab in labels_from_store(store) if lab.criterion == "overall"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's loop
        report = pool.submit(asyncio.run, align(store, [judge], labels, source="human_labels")).result()
    crit = report["criteria"][0]
    assert crit["criterion"] == "overall"
    assert crit["selected"] == "no-apology"
    assert crit["judges"][0]["n"] == 2 and crit["judges"][0]["agreement"] == 1.0


def test_review_without_javascript_uses_plain_forms(browser, gateway):  # noqa: F811
    server, ids = gateway
    t = Page(browser, server.url, javascript=False)
    try:
        page = t.page
        t.goto("/ui/review?i=2")
        trace_id = page.locator("#queue li.current").get_attribute("data-trace-id")
        page.fill("#tags", "off-topic")
        page.click("#btn-fail")
        page.wait_for_url(re.compile(r"i=3&saved=label"))
        assert page.locator("#flash").inner_text() == "saved"
        assert page.locator("#queue li.q-item").nth(2).get_attribute("data-verdict") == "fail"
        labels = httpx.get(server.url + "/api/review/labels", params={"trace_id": trace_id}, timeout=10).json()
        assert {(r["criterion"], r["label"]) for r in labels["data"]} == {("overall", "fail"), ("off-topic", "fail")}
        # a day without a queue can be built from the page
        t.goto("/ui/review?day=2001-01-01")
        assert "No review queue was built" in page.locator("#no-queue").inner_text()
        page.click("#build-queue")
        page.wait_for_url(re.compile(r"day=2001-01-01"))
        assert "Nothing to review" in page.locator("#empty-queue").inner_text()
    finally:
        t.close()
    assert not t.problems, t.problems


def test_dashboard_feedback_panel(tab, gateway):
    server, ids = gateway
    page = tab.page
    tab.goto("/ui/dashboard?since=24h")
    page.locator("#feedback-rates tr.fb-row").first.wait_for()
    rows = page.locator("#feedback-rates tr.fb-row").evaluate_all("els => els.map(e => e.dataset.group)")
    assert rows == ["chat"]
    assert "100%" in page.locator("#feedback-rates tr.fb-row").first.inner_text()  # the one event is negative
    assert "1 feedback events on 1 traces" in page.locator(".fb-summary").inner_text()
    page.select_option("#feedback-by", "model")
    page.locator("#feedback-rates tr.fb-row[data-group='gpt-4o-mini-2024-07-18']").wait_for()
    assert page.locator("#chart-requests").count() == 1  # the dashboard's own charts are still there


def test_review_api_rejects_cross_site_writes_and_bad_input(gateway):
    server, ids = gateway
    url = server.url + "/api/review/labels"
    r = httpx.post(url, json={"trace_id": ids["a"], "verdict": "pass"}, headers={"origin": "http://evil.example"},
                   timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    r = httpx.post(url, json={"trace_id": ids["a"], "verdict": "maybe"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "verdict"
    r = httpx.post(url, json={"trace_id": ids["a"], "verdict": "fail", "tags": ["overall"]}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tags"
    r = httpx.post(url, json={"trace_id": "0" * 32, "verdict": "pass"}, timeout=10)
    assert r.status_code == 404
    r = httpx.post(url, json={"trace_id": ids["a"], "verdict": "pass", "rating": 5}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_field"
    r = httpx.post(server.url + "/api/review/datasets", json={"trace_id": ids["a"]}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "dataset"
    r = httpx.get(server.url + "/api/review/queue", params={"day": "2001-01-01"}, timeout=10)
    assert r.status_code == 404 and "shipyard review sample" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/api/review/queue", json={"day": "2999-01-01"}, timeout=10)
    assert r.status_code == 400 and "future" in r.json()["error"]["message"]
    # a label with a corrected output also records annotator feedback (a correction)
    r = httpx.post(url, json={"trace_id": ids["c"], "verdict": "fail", "tags": "too-vague",
                              "correction": "Basic is $10, Pro is $30.", "reviewer": "rita"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["correction"]["kind"] == "correction" and r.json()["correction"]["source"] == "annotator"
    fb = httpx.get(server.url + "/api/feedback", params={"trace_id": ids["c"]}, timeout=10).json()["data"]
    assert [(f["kind"], f["text"]) for f in fb] == [("correction", "Basic is $10, Pro is $30.")]
    # clearing a review
    assert httpx.delete(url, params={"trace_id": ids["c"]}, timeout=10).json()["deleted"] is True
    assert httpx.get(url, params={"trace_id": ids["c"]}, timeout=10).json()["data"] == []
