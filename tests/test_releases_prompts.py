"""The prompt registry: versions, labels, rendering, the cache, the admin API, the UI, the CLI."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import client_for
from test_releases_support import (
    call,
    create_prompt,
    fast_alias,
    http,
    providers,
    spans_by_kind,
    trace_of,
)

from shipyard.errors import InvalidRequest
from shipyard.releases.prompts import (
    PromptVersion,
    parse_ref,
    unified_diff,
    validate_version,
)

SUPPORT = [
    {"role": "system", "content": "You answer for {{ company }}. Tone: {{ tone | default('friendly') }}."},
    {"role": "user", "content": "Customer {{ customer }} asks: {{ question }}"},
]


def config(up: Any, **extra: Any) -> dict[str, Any]:
    return {"providers": providers(up),
            "models": {"chat": fast_alias({"provider": "p", "model": "gpt-4o-mini-2024-07-18"})}, **extra}


# ---- templates ------------------------------------------------------------------------------------
def test_variables_are_found_and_missing_ones_are_listed() -> None:
    fields = validate_version({"model": "chat", "messages": SUPPORT})
    assert fields["variables"] == ["company", "customer", "question", "tone"]
    v = PromptVersion(name="support", version=3, **{k: fields[k] for k in ("model", "messages", "variables")})
    out = v.render({"company": "Acme", "customer": "Ann", "question": "Where is my parcel?"})
    assert out[0]["content"] == "You answer for Acme. Tone: friendly."  # default() makes 'tone' optional
    assert out[1] == {"role": "user", "content": "Customer Ann asks: Where is my parcel?"}
    with pytest.raises(InvalidRequest) as exc:
        v.render({"company": "Acme"})
    assert exc.value.status == 400
    assert "customer, question" in exc.value.message and "tone" not in exc.value.details["missing_variables"]
    assert exc.value.details["missing_variables"] == ["customer", "question"]


def test_the_sandbox_refuses_python_internals() -> None:
    fields = validate_version({"model": "chat", "messages": [
        {"role": "user", "content": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}]})
    v = PromptVersion(name="evil", version=1, **{k: fields[k] for k in ("model", "messages", "variables")})
    with pytest.raises(Exception) as exc:
        v.render({})
    assert getattr(exc.value, "status", None) == 400
    assert "<class" not in exc.value.message  # nothing of Python's internals leaks out


@pytest.mark.parametrize("body, param", [
    ({"model": "chat", "messages": [{"role": "user", "content": "{{ oops"}]}, "messages[0].content"),
    ({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "chat", "messages": []}, "messages"),
    ({"model": "prompt:other", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "params": {"model": "y"}}, "params.model"),
    ({"model": "chat", "messages": [{"role": "user", "content": "x"}], "response_schema": {"type": 7}},
     "response_schema"),
])
def test_bad_versions_are_rejected_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        validate_version(body)
    assert exc.value.param == param


def test_references_and_diffs() -> None:
    assert parse_ref("prompt:support") == parse_ref("support@production")
    assert parse_ref("support@3").version == 3
    assert parse_ref("support@staging").label == "staging"
    with pytest.raises(InvalidRequest):
        parse_ref("prompt:bad name")
    a = PromptVersion(name="s", version=1, model="chat", messages=[{"role": "system", "content": "Be brief."}])
    b = PromptVersion(name="s", version=2, model="chat", messages=[{"role": "system", "content": "Be very brief."}],
                      params={"temperature": 0.2})
    d = unified_diff(a, b)
    assert d.startswith("--- s@1\n+++ s@2")
    assert "-Be brief." in d and "+Be very brief." in d and '+params: {"temperature":0.2}' in d


# ---- through the gateway ----------------------------------------------------------------------------
def test_a_prompt_runs_through_the_gateway_and_the_trace_names_its_version(serve: Any, fake_openai: Any) -> None:
    s = serve(config(fake_openai))
    with http(s) as h:
        create_prompt(h, "support", "chat", SUPPORT, labels=["production"], params={"temperature": 0.1, "seed": 5})
        create_prompt(h, "support", "chat", SUPPORT[:1], labels=["staging"],
                      response_schema={"type": "object", "properties": {"answer": {"type": "string"}}})
    client = client_for(s)
    resp, tid = call(client, model="prompt:support@production", temperature=0.9,
                     messages=[{"role": "user", "content": "and one more thing"}],
                     extra_body={"metadata": {"variables": {"company": "Acme", "customer": "Ann",
                                                            "question": "Where is my parcel?"}}})
    assert resp.choices[0].message.content == "Hello from fake-openai"
    sent = fake_openai.requests[-1]["json"]
    assert sent["model"] == "gpt-4o-mini-2024-07-18"
    assert [m["content"] for m in sent["messages"]] == [
        "You answer for Acme. Tone: friendly.", "Customer Ann asks: Where is my parcel?", "and one more thing"]
    assert sent["temperature"] == 0.9 and sent["seed"] == 5  # the version's params are defaults; the client wins
    trace = trace_of(s, tid)
    (llm,) = spans_by_kind(trace, "llm")
    assert llm["alias"] == "chat"
    assert llm["attributes"]["prompt"] == {"name": "support", "version": 1, "label": "production"}
    (router,) = spans_by_kind(trace, "router")
    assert router["parent_id"] == llm["span_id"]
    assert router["attributes"]["prompt"]["version"] == 1 and router["attributes"]["requested"] == \
        "prompt:support@production"

    # a version by number, and a response schema becoming response_format
    _, tid = call(client, model="prompt:support@2", messages=[{"role": "user", "content": "hi"}],
                  extra_body={"metadata": {"variables": {"company": "Acme"}}})
    sent = fake_openai.requests[-1]["json"]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["properties"]["answer"] == {"type": "string"}
    assert spans_by_kind(trace_of(s, tid), "llm")[0]["attributes"]["prompt"] == {"name": "support", "version": 2,
                                                                                 "label": None}


def test_unknown_names_are_404s_and_missing_variables_a_400(serve: Any, fake_openai: Any) -> None:
    s = serve(config(fake_openai))
    with http(s) as h:
        create_prompt(h, "support", "chat", SUPPORT, labels=["production"])
    client = client_for(s)
    msg = [{"role": "user", "content": "hi"}]
    cases = [
        ("prompt:nope@production", 404, "Prompt 'nope' does not exist"),
        ("prompt:support@canary", 404, "Prompt 'support' has no label 'canary' (labels: production)"),
        ("prompt:support@9", 404, "Prompt 'support' has no version 9 (latest is 1)"),
        ("prompt:support", 400, "missing template variables: company, customer, question"),
    ]
    for model, status, text in cases:
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(model=model, messages=msg)
        assert exc.value.status_code == status, model
        assert text in exc.value.message, exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="prompt:support", messages=msg,
                                       extra_body={"metadata": {"variables": ["not", "a", "mapping"]}})
    assert "metadata.variables" in exc.value.message
    assert len(fake_openai.requests) == 0  # bad input never reaches a provider


async def test_library_calls_use_the_cache_and_survive_a_store_outage(tmp_path: Path, fake_openai: Any) -> None:
    from shipyard import Gateway

    cfg = config(fake_openai, store=f"sqlite:///{tmp_path}/lib.db",
                 prompts={"refresh_s": 0.01, "negative_ttl_s": 0})
    async with Gateway(cfg) as gw:
        reg = gw.engine.releases.registry
        reg.create_version("greet", {"model": "chat", "messages": [{"role": "system", "content": "Greet {{ who }}."}],
                                     "labels": ["production"]}, "test")
        variables = {"metadata": {"variables": {"who": "Bo"}}}
        r = await gw.achat(model="prompt:greet", messages=[{"role": "user", "content": "hi"}], **variables)
        assert r.choices[0].message.content == "Hello from fake-openai"

        rs = gw.engine.releases.prompts.rs

        def down(*a: Any, **k: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        rs.load_prompt = rs.get_versions = rs.get_version = down  # the store goes away
        for _ in range(3):
            await asyncio.sleep(0.02)  # older than refresh_s: each request starts a background refresh
            r = await gw.achat(model="prompt:greet@production", messages=[{"role": "user", "content": "hi"}],
                               **variables)
            assert r.choices[0].message.content == "Hello from fake-openai"
        await asyncio.sleep(0.05)  # let the background refreshes fail
        stats = gw.engine.releases.prompts.stats()
        assert stats["refresh_errors"] >= 1 and "OperationalError" in stats["last_error"]
        from shipyard.errors import GatewayError

        with pytest.raises(GatewayError) as exc:  # a prompt never seen before cannot be served
            await gw.achat(model="prompt:other", messages=[{"role": "user", "content": "hi"}])
        assert exc.value.status == 503 and "unavailable" in exc.value.message
    assert fake_openai.requests[1]["json"]["messages"][0]["content"] == "Greet Bo."


# ---- admin API -------------------------------------------------------------------------------------------
def test_versions_are_immutable_labels_move_and_protected_labels_need_a_gate(serve: Any, fake_openai: Any) -> None:
    s = serve(config(fake_openai))
    with http(s) as h:
        v1 = create_prompt(h, "faq", "chat", [{"role": "system", "content": "Answer briefly."}],
                           labels=["production"], note="first")
        v2 = create_prompt(h, "faq", "chat", [{"role": "system", "content": "Answer very briefly."}],
                           labels=["staging"])
        assert (v1["version"], v2["version"]) == (1, 2)
        info = h.get("/api/prompts/faq").json()
        assert {k: v["version"] for k, v in info["labels"].items()} == {"production": 1, "staging": 2}
        assert [v["version"] for v in info["version_list"]] == [2, 1]
        assert h.get("/api/prompts/faq/versions/staging").json()["messages"][0]["content"] == "Answer very briefly."
        assert h.get("/api/prompts/faq/versions/latest").json()["version"] == 2
        assert h.get("/api/prompts/faq/versions/7").status_code == 404

        diff = h.get("/api/prompts/faq/diff", params={"from": "production", "to": "staging"}).json()
        assert diff["from"] == 1 and diff["to"] == 2
        assert "-Answer briefly." in diff["diff"] and "+Answer very briefly." in diff["diff"]

        r = h.put("/api/prompts/faq/labels/canary", json={"version": 2, "by": "carol"})
        assert r.status_code == 200 and r.json()["actor"] == "carol"
        r = h.put("/api/prompts/faq/labels/production", json={"version": 2})
        assert r.status_code == 409 and r.json()["error"]["code"] == "label_protected"
        assert "shipyard release promote faq --to production" in r.json()["error"]["message"]
        r = h.put("/api/prompts/faq/labels/production", json={"version": 2, "force": True, "by": "dave"})
        assert r.status_code == 200 and r.json()["action"] == "move_label_forced"
        assert h.put("/api/prompts/faq/labels/canary", json={"version": 5}).status_code == 404
        assert h.put("/api/prompts/faq/labels/Bad Label", json={"version": 1}).status_code == 400
        assert h.delete("/api/prompts/faq/labels/canary").status_code == 200
        assert h.delete("/api/prompts/faq/labels/canary").status_code == 404

        audit = h.get("/api/prompts/faq/audit").json()["data"]
        actions = [(a["action"], a["label"], a["from_version"], a["to_version"]) for a in audit]
        assert ("move_label_forced", "production", 1, 2) in actions
        assert ("remove_label", "canary", 2, None) in actions
        assert actions[-1] == ("create_version", None, None, 1)

        listed = h.get("/api/prompts").json()["data"]
        assert listed[0]["name"] == "faq" and listed[0]["latest"] == 2
        rendered = h.post("/api/prompts/faq/render", json={"label": "staging"}).json()
        assert rendered["model"] == "chat" and rendered["prompt"] == {"name": "faq", "version": 2}
        missing = h.post("/api/prompts", json={"name": "x", "model": "nope", "messages": [
            {"role": "user", "content": "x"}]})
        assert missing.status_code == 400 and "unknown model alias 'nope'" in missing.json()["error"]["message"]


def test_writes_need_the_admin_token_when_one_is_set(serve: Any, fake_openai: Any) -> None:
    s = serve(config(fake_openai, releases={"admin_token": "s3cret"}))
    body = {"name": "t", "model": "chat", "messages": [{"role": "user", "content": "x"}]}
    with http(s) as h:
        r = h.post("/api/prompts", json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_token_required"
        assert h.post("/api/prompts", json=body, headers={"authorization": "Bearer wrong"}).status_code == 403
        assert h.post("/api/prompts", json=body, headers={"authorization": "Bearer s3cret"}).status_code == 201
        assert h.get("/api/prompts/t").status_code == 200  # reads are open, like /api/traces


# ---- UI ----------------------------------------------------------------------------------------------------
def test_ui_lists_prompts_versions_labels_and_a_diff(serve: Any, fake_openai: Any) -> None:
    s = serve(config(fake_openai))
    with http(s) as h:
        create_prompt(h, "faq", "chat", [{"role": "system", "content": "Answer <b>briefly</b>.\nThanks."}],
                      labels=["production"])
        create_prompt(h, "faq", "chat", [{"role": "system", "content": "Answer <script>x()</script>.\nThanks."}],
                      labels=["staging"], note="try script")
        page = h.get("/ui/prompts")
        assert page.status_code == 200 and "content-security-policy" in page.headers
        assert 'data-prompt="faq"' in page.text and "production → v1" in page.text
        detail = h.get("/ui/prompts/faq")
        assert detail.status_code == 200
        assert 'data-version="2"' in detail.text and "try script" in detail.text
        assert 'id="version-detail" data-version="1"' in detail.text  # the production version by default
        assert "Answer &lt;b&gt;briefly&lt;/b&gt;." in detail.text
        v2 = h.get("/ui/prompts/faq", params={"version": "2"})
        assert 'id="version-detail" data-version="2"' in v2.text
        assert "&lt;script&gt;x()&lt;/script&gt;" in v2.text and "<script>x()" not in v2.text
        diff = h.get("/ui/prompts/faq/diff", params={"from": "1", "to": "2"})
        assert diff.status_code == 200
        assert '<span class="del">-Answer &lt;b&gt;briefly&lt;/b&gt;.</span>' in diff.text
        assert '<span class="add">+Answer &lt;script&gt;x()&lt;/script&gt;.</span>' in diff.text
        assert '<span class="ctx"> Thanks.</span>' in diff.text
        assert h.get("/ui/prompts/nope").status_code == 404


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_cli_creates_labels_shows_diffs_and_renders(tmp_path: Path, capsys: Any) -> None:
    from shipyard.cli import main

    store = ["--store", f"sqlite:///{tmp_path}/cli.db"]
    f1 = tmp_path / "v1.yaml"
    f1.write_text("model: chat\nmessages:\n  - role: system\n    content: Hello {{ name }}.\nparams: {temperature: 0}\n")
    f2 = tmp_path / "v2.yaml"
    f2.write_text("model: chat\nmessages:\n  - role: system\n    content: Hi {{ name }}!\n")
    assert main(["prompts", "create", "hello", "--file", str(f1), "--label", "production", "--by", "ann", *store]) == 0
    assert "created hello version 1 (production); variables: name" in capsys.readouterr().out
    assert main(["prompts", "create", "hello", "--file", str(f2), "--label", "staging", *store]) == 0
    assert main(["prompts", "label", "hello", "qa", "--version", "2", *store]) == 0
    assert "label qa -> v2" in capsys.readouterr().out
    assert main(["prompts", "label", "hello", "production", "--version", "2", *store]) == 1
    assert "protected" in capsys.readouterr().err
    assert main(["prompts", "diff", "hello", "1", "staging", *store]) == 0
    out = capsys.readouterr().out
    assert "-Hello {{ name }}." in out and "+Hi {{ name }}!" in out
    assert main(["prompts", "show", "hello", *store]) == 0
    out = capsys.readouterr().out
    assert "label production -> v1" in out and "Hello {{ name }}." in out  # the default label's version
    assert main(["prompts", "render", "hello@staging", "--var", "name=Bo", *store]) == 0
    assert '"content": "Hi Bo!"' in capsys.readouterr().out
    assert main(["prompts", "render", "hello", *store]) == 1
    assert "missing template variables: name" in capsys.readouterr().err
    assert main(["prompts", "show", "nope", *store]) == 1
    assert "Prompt 'nope' does not exist" in capsys.readouterr().err
    assert main(["prompts", "list", *store]) == 0
    assert "production=v1, qa=v2, staging=v2" in capsys.readouterr().out
    assert main(["prompts", "history", "hello", *store]) == 0
    out = capsys.readouterr().out
    assert "ann" in out and "create_version" in out


def test_prompt_pages_in_a_real_browser(serve: Any, fake_openai: Any, tmp_path: Path) -> None:
    from test_ui import CHROMIUM_ARGS, Page, assert_not_blank

    from services import ensure_apt_package

    s = serve(config(fake_openai))
    with http(s) as h:
        create_prompt(h, "faq", "chat", [{"role": "system", "content": "Answer briefly.\nBe kind."}],
                      labels=["production"])
        create_prompt(h, "faq", "chat", [{"role": "system",
                                          "content": "Answer <script>window.__xss = 1</script>.\nBe kind."}],
                      labels=["staging"])
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_apt_package("chromium", "chromium"),
                                    args=CHROMIUM_ARGS, headless=True)
        tab = Page(browser, s.url)
        try:
            page = tab.page
            tab.goto("/ui/prompts")
            page.click("#prompts a:text('faq')")
            page.wait_for_url("**/ui/prompts/faq")
            assert page.locator("#labels [data-label='staging']").inner_text() == "staging → v2"
            page.select_option("#f-from", "1")
            page.select_option("#f-to", "2")
            page.click("#show-diff")
            page.wait_for_url("**/ui/prompts/faq/diff?from=1&to=2")
            assert page.locator("#diff .del").all_inner_texts() == ["-Answer briefly."]
            assert page.locator("#diff .add").all_inner_texts() == ["+Answer <script>window.__xss = 1</script>."]
            assert page.evaluate("window.__xss") is None  # shown as text, never run
            page.screenshot(path=str(tmp_path / "diff.png"), full_page=True)
            assert_not_blank(tmp_path / "diff.png")
        finally:
            tab.close()
            browser.close()
        assert not tab.problems, tab.problems
