"""The web UI in real headless Chromium (Debian's package, driven by Playwright).

A real `shipyard serve` with a fake upstream records calls (ok, error, streamed, tool call,
multimodal, a <script> payload, a nested chain with a guard); the browser then uses the
pages like a person would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    sync_playwright,  # the 'test' extra; its driver, not its browsers
)
from services import ensure_apt_package
from test_api_traces import XSS_PROMPT, XSS_REPLY, gateway_config, populate

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MINI, BIG = "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = ensure_apt_package("chromium", "chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A browser tab on the gateway that fails the test on any JS error or CSP violation."""

    def __init__(self, browser: Any, base: str, javascript: bool = True) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, java_script_enabled=javascript)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.base = base
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("console", self._console)
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and "status of 4" not in msg.text:
            self.problems.append(f"console: {msg.text}")

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def gateway(serve, fake_openai):
    server = serve(gateway_config(fake_openai))
    return server, populate(server, fake_openai)


@pytest.fixture
def tab(browser, gateway) -> Iterator[Page]:
    server, _ = gateway
    t = Page(browser, server.url)
    yield t
    t.close()
    assert not t.problems, t.problems
    assert not t.dialogs, t.dialogs


def assert_not_blank(png: Path) -> None:
    from PIL import Image, ImageStat

    assert png.stat().st_size > 5_000, f"{png} is suspiciously small"
    with Image.open(png) as img:
        gray = img.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10, f"{png} looks blank"
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50, f"{png} has too few colours"


def rows(page: Any) -> list[str]:
    return page.locator("#traces tbody tr.trace-row").evaluate_all("els => els.map(e => e.dataset.traceId)")


# ---- trace list --------------------------------------------------------------------------

def test_trace_list_shows_every_call_and_filters_narrow_it(tab, gateway, tmp_path):
    _, ids = gateway
    page = tab.page
    tab.goto("/ui")
    assert set(rows(page)) == set(ids.values())
    err_row = page.locator(f"tr[data-trace-id='{ids['error']}']")
    assert err_row.locator(".badge.status-error").inner_text() == "error"
    ok_row = page.locator(f"tr[data-trace-id='{ids['ok']}']")
    cells = ok_row.locator("td").all_inner_texts()
    assert cells[1:5] == ["ok", "chat", MINI, "alice"]
    assert cells[6] == "11 → 7" and cells[7].startswith("$0.0000")
    page.screenshot(path=str(tmp_path / "traces.png"), full_page=True)
    assert_not_blank(tmp_path / "traces.png")

    page.select_option("#f-status", "error")
    page.click("#apply")
    page.wait_for_url(re.compile(r"status=error"))
    assert rows(page) == [ids["error"]]
    assert "alias=" not in page.url  # empty fields stay out of the URL

    page.select_option("#f-status", "")
    page.fill("#f-user", "alice")
    page.click("#apply")
    page.wait_for_url(re.compile(r"user=alice"))
    assert set(rows(page)) == {ids["ok"], ids["stream"]}

    page.fill("#f-user", "")
    page.fill("#f-alias", "smart")
    page.click("#apply")
    page.wait_for_url(re.compile(r"alias=smart"))
    assert rows(page) == [ids["big"]]


def test_cost_latency_and_text_filters_in_the_form(tab, gateway):
    _, ids = gateway
    page = tab.page
    tab.goto("/ui")
    page.fill("#f-min-cost", "0.01")
    page.click("#apply")
    page.wait_for_url(re.compile(r"min_cost=0.01"))
    assert rows(page) == [ids["big"]]
    tab.goto("/ui")
    page.fill("#f-min-lat", "350")
    page.click("#apply")
    page.wait_for_url(re.compile(r"min_latency_ms=350"))
    assert ids["slow"] in rows(page) and ids["ok"] not in rows(page)
    tab.goto("/ui")
    page.fill("#f-q", "Write an essay")
    page.click("#apply")
    page.wait_for_url(re.compile(r"q=Write"))
    assert rows(page) == [ids["big"]]


def test_time_range_presets_and_custom_range(tab, gateway):
    _, ids = gateway
    page = tab.page
    tab.goto("/ui")
    assert page.locator("#f-since").input_value() == "7d"
    assert page.locator("#custom-range").is_hidden()
    page.select_option("#f-since", "1h")
    page.click("#apply")
    page.wait_for_url(re.compile(r"since=1h"))
    assert set(rows(page)) == set(ids.values())
    assert "start=" not in page.url

    page.select_option("#f-since", "custom")
    assert page.locator("#custom-range").is_visible()
    page.fill("input[name=start]", "2001-01-01T00:00")
    page.fill("input[name=end]", "2001-01-02T00:00")
    page.click("#apply")
    page.wait_for_url(re.compile(r"since=custom"))
    assert rows(page) == []
    assert "No traces" in page.locator("#traces tbody").inner_text()
    assert page.locator("#f-since").input_value() == "custom"


def test_load_more_appends_the_next_page(tab, gateway):
    _, ids = gateway
    page = tab.page
    tab.goto("/ui?limit=3")
    assert len(rows(page)) == 3
    for expected in (6, 8):
        page.click("#load-more")
        page.locator("#traces tr.trace-row").nth(expected - 1).wait_for()
    assert page.locator("#load-more").count() == 0
    shown = rows(page)
    assert len(shown) == len(set(shown)) == 8 and set(shown) == set(ids.values())
    assert page.locator("#row-count").inner_text() == "8"
    # appended rows open their trace too
    page.locator("#traces tr.trace-row").nth(7).locator("td").nth(3).click()
    page.wait_for_url(re.compile(r"/ui/traces/" + shown[7]))


def test_bad_filter_value_shows_the_error(tab, gateway):
    resp = tab.goto("/ui?min_cost=cheap")
    assert resp.status == 400
    assert "min_cost" in tab.page.locator("#page-error").inner_text()
    assert tab.page.locator("#filters").is_visible()


# ---- one trace ---------------------------------------------------------------------------

def test_clicking_a_row_opens_the_trace_with_messages_and_tool_calls(tab, gateway, tmp_path):
    _, ids = gateway
    page = tab.page
    tab.goto("/ui")
    page.locator(f"tr[data-trace-id='{ids['tool']}'] td").nth(3).click()  # not on the link
    page.wait_for_url(re.compile(r"/ui/traces/" + ids["tool"]))
    assert page.locator("#trace-id").inner_text() == ids["tool"]
    assert page.locator("#span-tree .span-node").count() == 1
    detail = page.locator(".span-detail:visible")
    assert detail.count() == 1
    roles = detail.locator("article.msg .role").all_inner_texts()
    assert [r.lower() for r in roles] == ["system", "user", "assistant"]
    user = detail.locator("article.msg.role-user")
    assert "Weather where this photo was taken?" in user.inner_text()
    assert user.locator("img").count() == 1  # the inline image part, shown
    call = detail.locator(".tool-call")
    assert "get_weather" in call.inner_text()
    assert '"city": "Paris"' in call.locator("pre").inner_text()
    assert "finish: tool_calls" in detail.locator("article.msg.role-assistant").inner_text()
    lineage = detail.locator("table.lineage").inner_text()
    assert "chat" in lineage and "fake" in lineage and MINI in lineage and "config hash" in lineage
    attempts = detail.locator("table.attempts tbody tr")
    assert attempts.count() == 1 and "ok" in attempts.inner_text()
    # raw JSON is pretty-printed and collapsible
    raw_output = detail.locator("details.json", has_text="output")
    assert not raw_output.evaluate("d => d.open")
    raw_output.locator("summary").click()
    assert '"finish_reason": "tool_calls"' in raw_output.locator("pre").inner_text()
    page.screenshot(path=str(tmp_path / "trace-tool.png"), full_page=True)
    assert_not_blank(tmp_path / "trace-tool.png")


def test_nested_trace_tree_with_waterfall_guard_decisions_and_lineage(tab, gateway, tmp_path):
    _, ids = gateway
    page = tab.page
    tab.goto(f"/ui/traces/{ids['nested']}")
    nodes = page.locator("#span-tree .span-node")
    assert nodes.count() == 4
    depths = nodes.evaluate_all("els => els.map(e => +e.dataset.depth)")
    kinds = nodes.locator(".badge.kind").all_inner_texts()
    assert depths == [0, 1, 1, 1]
    assert kinds[0] == "chain" and sorted(kinds[1:]) == ["guard", "llm", "retrieval"]
    # waterfall: the root spans the whole trace, children are shorter bars
    widths = nodes.locator(".bar").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert widths[0] == max(widths) and all(w > 0 for w in widths)

    # root selected first: prompt lineage
    detail = page.locator(".span-detail:visible")
    assert "weather-answer v3 (production)" in detail.locator("table.lineage").inner_text()

    nodes.filter(has_text="pii input guard").click()
    detail = page.locator(".span-detail:visible")
    assert page.locator(".span-detail:visible").count() == 1
    assert "pii input guard" in detail.locator("h2").inner_text()
    box = detail.locator(".guard-box.tripped")
    assert box.is_visible()
    tripped = box.locator("tr.tripped")
    assert tripped.count() == 1 and "redact" in tripped.inner_text() and "email address found" in tripped.inner_text()
    assert "#span-" in page.url
    page.screenshot(path=str(tmp_path / "trace-guard.png"), full_page=True)
    assert_not_blank(tmp_path / "trace-guard.png")

    nodes.filter(has_text="search docs").click()
    detail = page.locator(".span-detail:visible")
    assert "doc-17, doc-42" in detail.locator("table.lineage").inner_text()

    nodes.filter(has_text="chat chat").click()
    detail = page.locator(".span-detail:visible")
    assert "Paris is sunny." in detail.locator("article.msg.role-assistant").inner_text()

    # a reload keeps the selected span
    page.reload()
    assert "Paris is sunny." in page.locator(".span-detail:visible").inner_text()


def test_error_trace_shows_the_error_in_red_with_every_attempt(tab, gateway):
    _, ids = gateway
    page = tab.page
    tab.goto(f"/ui/traces/{ids['error']}")
    err = page.locator(".span-detail:visible .span-error")
    assert err.is_visible() and "503" in err.inner_text()
    red = err.evaluate("e => getComputedStyle(e).color")
    assert red == "rgb(185, 28, 28)"
    attempts = page.locator(".span-detail:visible table.attempts tbody tr")
    assert attempts.count() == 2
    assert all("http_503" in t for t in attempts.all_inner_texts())
    assert page.locator("#span-tree .span-node.is-error").count() == 1


def test_streamed_call_shows_the_reassembled_reply(tab, gateway):
    _, ids = gateway
    tab.goto(f"/ui/traces/{ids['stream']}")
    detail = tab.page.locator(".span-detail:visible")
    assert "one two three four" in detail.locator("article.msg.role-assistant").inner_text()
    assert "streamed" in detail.locator("table.lineage").inner_text()


def test_script_in_messages_is_shown_as_text_and_never_runs(tab, gateway):
    _, ids = gateway
    page = tab.page
    tab.goto("/ui")
    tab.goto(f"/ui/traces/{ids['xss']}")
    detail = page.locator(".span-detail:visible")
    assert detail.locator("article.msg.role-user .content").inner_text() == XSS_PROMPT
    assert detail.locator("article.msg.role-assistant .content").inner_text() == XSS_REPLY
    assert detail.locator("article.msg img").count() == 0
    assert page.locator("script:not([src])").count() == 0
    assert page.evaluate("window.__xss") is None
    # and through the JS that appends rows ("load more") as well
    tab.goto("/ui?limit=1&q=")
    while page.locator("#load-more").count():
        before = len(rows(page))
        page.click("#load-more")
        page.locator("#traces tr.trace-row").nth(before).wait_for()
    assert page.evaluate("window.__xss") is None


def test_unknown_trace_page_is_a_404(tab, gateway):
    resp = tab.goto("/ui/traces/00000000000000000000000000000000")
    assert resp.status == 404
    assert "No trace with id" in tab.page.locator("#page-error").inner_text()


# ---- dashboard ---------------------------------------------------------------------------

def test_dashboard_draws_svg_charts_per_model(tab, gateway, tmp_path):
    page = tab.page
    tab.goto("/ui/dashboard?since=24h")
    page.wait_for_selector("#charts svg")
    figures = page.locator("figure.chart")
    assert figures.count() == 5
    captions = figures.locator("figcaption").all_inner_texts()
    assert captions[0] == "Requests" and any("Latency" in c for c in captions) and "Error rate" in captions
    assert any("Cost" in c for c in captions) and any("Tokens" in c for c in captions)
    for fig in figures.all():
        legend = fig.locator(".legend").inner_text()
        assert MINI in legend and BIG in legend
    assert page.locator("#chart-latency circle.pt").count() >= 2
    assert page.locator("#chart-requests rect.pt").count() >= 2
    assert page.locator(f"#chart-requests rect.pt[data-model='{BIG}']").count() == 1
    assert page.locator(f"#chart-cost rect.pt[data-model='{BIG}'] title").text_content().endswith("$0.7500")
    totals = page.locator("#totals").inner_text()
    assert MINI in totals and BIG in totals
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert_not_blank(tmp_path / "dashboard.png")

    page.select_option("#f-since", "1h")
    page.select_option("#f-bucket", "300")
    page.click("#apply")
    page.wait_for_url(re.compile(r"since=1h"))
    page.wait_for_selector("#charts svg")
    assert "bucket 300 s" in page.locator(".summary").inner_text()
    assert page.locator("#chart-requests rect.pt").count() >= 2


# ---- without JavaScript --------------------------------------------------------------------

def test_list_filters_and_trace_details_work_without_javascript(browser, gateway):
    server, ids = gateway
    t = Page(browser, server.url, javascript=False)
    try:
        page = t.page
        t.goto("/ui")
        assert set(rows(page)) == set(ids.values())
        page.select_option("#f-status", "error")
        page.click("#apply")
        page.wait_for_url(re.compile(r"status=error"))
        assert rows(page) == [ids["error"]]
        page.locator(f"tr[data-trace-id='{ids['error']}'] a").click()
        page.wait_for_url(re.compile(r"/ui/traces/"))
        assert page.locator(".span-error").is_visible()
        t.goto(f"/ui/traces/{ids['nested']}")
        assert page.locator(".span-detail:visible").count() == 4  # all shown, one after another
        t.goto("/ui?limit=3")
        first = rows(page)
        page.click("#load-more")  # a plain link to the next page
        page.wait_for_url(re.compile(r"cursor="))
        assert len(rows(page)) == 3 and not set(rows(page)) & set(first)  # the next three
    finally:
        t.close()


# ---- rendering helpers (no browser) ----------------------------------------------------------

def test_guard_decision_with_passed_flag_is_not_tripped_by_its_configured_action():
    from shipyard.server.ui import _decision_view

    ok = _decision_view({"guard": "pii", "stage": "input", "action": "block", "passed": True, "score": 0.1})
    assert ok["action"] == "pass" and not ok["tripped"] and "action on failure" in ok["extra"]
    bad = _decision_view({"guard": "pii", "action": "block", "passed": False, "reason": "email"})
    assert bad["action"] == "block" and bad["tripped"] and bad["reason"] == "email"
    assert _decision_view({"name": "topics", "decision": "flag"})["tripped"]


def test_untrusted_urls_and_script_json_cannot_inject():
    from shipyard.server.ui import message_view, script_json

    m = message_view({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "javascript:alert(1)"}},
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.png"}},
    ]})
    assert [p.get("href") for p in m["parts"]] == [None, None, "https://example.test/cat.png"]
    assert not any(p.get("src") for p in m["parts"])  # only raster data: URLs are shown inline
    text = str(script_json({"model": "</script><script>alert(1)</script>", "q": "a & 'b'"}))
    assert "<" not in text and ">" not in text and "&" not in text and "'" not in text
    import json

    assert json.loads(text)["model"] == "</script><script>alert(1)</script>"
