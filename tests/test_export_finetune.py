"""`shipyard export finetune` on traffic recorded by a real gateway, with feedback sent through
POST /api/feedback: what is included and why, PII redaction, de-duplication, the
deterministic split, and every line round-tripping through its format's parser (the openai
SDK's message types for OpenAI; strict schemas for Anthropic and ShareGPT)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from conftest import client_for
from fakes import Fault
from test_feedback_api import KEY, config

from shipyard.cli import main
from shipyard.export import validate_anthropic, validate_openai, validate_sharegpt

SYSTEM = "You are the support bot."
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order": {"type": "string"}}}}}]

ANTHROPIC_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["system", "messages"],
    "properties": {
        "system": {"type": "string"},
        "messages": {"type": "array", "minItems": 2, "items": {
            "type": "object", "additionalProperties": False, "required": ["role", "content"],
            "properties": {"role": {"enum": ["user", "assistant"]}, "content": {"type": "string", "minLength": 1}}}},
    },
}
SHAREGPT_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["conversations"],
    "properties": {"conversations": {"type": "array", "minItems": 2, "items": {
        "type": "object", "additionalProperties": False, "required": ["from", "value"],
        "properties": {"from": {"enum": ["system", "human", "gpt"]}, "value": {"type": "string"}}}}},
}


def _call(client: Any, up: Any, content: str, reply: str | None = None, model: str = "chat",
          **kw: Any) -> tuple[str, str]:
    if reply is not None:
        up.reply_queue.append(reply)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}], **kw)
    return raw.headers["x-shipyard-trace-id"], raw.parse().id


def _fb(server: Any, **body: Any) -> None:
    r = httpx.post(server.url + "/api/feedback", json=body, timeout=10, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 201, r.text


@pytest.fixture
def recorded(serve, fake_openai, tmp_path):
    """Traffic with every kind of signal; returns (store URL, {name: trace id})."""
    server = serve(config(fake_openai) | {"store": f"sqlite:///{tmp_path}/ft.db"})
    up, client = fake_openai, client_for(server)
    ids: dict[str, str] = {}
    ids["accepted"], _ = _call(client, up, "How do I reset my password?", "Use the reset link on the login page.")
    _fb(server, trace_id=ids["accepted"], kind="accepted")
    ids["thumbs_up"], _ = _call(client, up, "What are your hours?", "We are open 9 to 5.")
    _fb(server, trace_id=ids["thumbs_up"], kind="thumbs", value="up")
    ids["corrected"], cid = _call(client, up, "Email me the invoice at jane.doe@example.com",
                                  "Sent to jane.doe@example.com.")
    _fb(server, completion_id=cid, kind="correction", text="I have emailed it. Call +44 20 7946 0958 if it is missing.",
        source="annotator")
    ids["edited"], _ = _call(client, up, "Summarise my plan", "You are on plan B.")
    _fb(server, trace_id=ids["edited"], kind="edited", text="You are on the Basic plan.")
    ids["down"], _ = _call(client, up, "Can I get a refund?", "No.")
    _fb(server, trace_id=ids["down"], kind="thumbs", value="down")
    ids["mixed"], _ = _call(client, up, "Tell me a joke", "Knock knock.")
    _fb(server, trace_id=ids["mixed"], kind="thumbs", value="up")
    _fb(server, trace_id=ids["mixed"], kind="regenerated")
    up.fail_next(Fault("status", status=503))
    with pytest.raises(openai.APIStatusError) as exc:
        _call(client, up, "This one fails")
    ids["error"] = exc.value.response.headers["x-shipyard-trace-id"]
    _fb(server, trace_id=ids["error"], kind="accepted")
    ids["duplicate"], _ = _call(client, up, "How do I reset my password?", "Use the reset link on the login page.")
    _fb(server, trace_id=ids["duplicate"], kind="copied")
    ids["comment"], _ = _call(client, up, "Hello", "Hi!")
    _fb(server, trace_id=ids["comment"], kind="comment", text="meh")
    ids["empty"], _ = _call(client, up, "Say nothing", "")
    _fb(server, trace_id=ids["empty"], kind="accepted")
    up.reply_tool_calls = [{"name": "lookup_order", "arguments": {"order": "A-17"}}]
    ids["tool"], _ = _call(client, up, "Where is order A-17?", tools=TOOLS)
    up.reply_tool_calls = None
    _fb(server, trace_id=ids["tool"], kind="accepted")
    ids["smart"], _ = _call(client, up, "Explain tiers", "Three tiers.", model="smart")
    _fb(server, trace_id=ids["smart"], kind="thumbs", value="up")
    ids["reviewed"], _ = _call(client, up, "Do you ship abroad?", "Yes, to 40 countries.")
    server.flush()
    r = httpx.post(server.url + "/api/review/labels", json={"trace_id": ids["reviewed"], "verdict": "pass"}, timeout=10)
    assert r.status_code == 200, r.text
    ids["unlabelled"], _ = _call(client, up, "Nobody said anything about this", "ok")
    server.flush()
    return f"sqlite:///{tmp_path}/ft.db", ids


def export(url: str, out: Path, *args: str) -> int:
    return main(["export", "finetune", "--store", url, "--out", str(out), *args])


def read_lines(out: Path) -> list[dict[str, Any]]:
    lines = []
    for name in ("train.jsonl", "validation.jsonl"):
        if (out / name).exists():
            lines += [json.loads(x) for x in (out / name).read_text().splitlines()]
    return lines


def test_openai_export_includes_accepted_and_corrected_and_says_why(recorded, tmp_path, capsys):
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
    from pydantic import TypeAdapter

    url, ids = recorded
    out = tmp_path / "openai"
    assert export(url, out, "--format", "openai", "--val-fraction", "0.3") == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["included"] == {"corrected": 2, "accepted": 2, "thumbs_up": 2, "reviewed_pass": 1}
    assert summary["excluded"]["negative_feedback"] == 2
    assert summary["excluded"]["error"] == 1 and summary["excluded"]["duplicate"] == 1
    assert summary["excluded"]["no_positive_signal"] == 1 and summary["excluded"]["no_output"] == 1
    assert summary["examples"] == 7 == summary["train"] + summary["validation"] and summary["candidates"] == 13
    assert summary["pii_redacted"] == {"email": 1, "phone": 1}
    assert "7 examples from 13 candidate calls" in printed and "excluded: negative_feedback 2" in printed
    lines = read_lines(out)
    assert len(lines) == 7
    messages_type = TypeAdapter(list[ChatCompletionMessageParam])
    tools_type = TypeAdapter(list[ChatCompletionToolParam])
    for line in lines:
        validate_openai(line)
        messages_type.validate_python(line["messages"], strict=True)
        if "tools" in line:
            tools_type.validate_python(line["tools"])
        assert line["messages"][0] == {"role": "system", "content": SYSTEM}
    by_question = {ln["messages"][1]["content"]: ln for ln in lines}
    corrected = by_question["Email me the invoice at [EMAIL]"]
    assert corrected["messages"][-1] == {"role": "assistant",
                                         "content": "I have emailed it. Call [PHONE] if it is missing."}
    assert by_question["Summarise my plan"]["messages"][-1]["content"] == "You are on the Basic plan."
    tool = by_question["Where is order A-17?"]
    assert tool["messages"][-1]["tool_calls"][0]["function"]["name"] == "lookup_order" and tool["tools"] == TOOLS
    assert "Tell me a joke" not in by_question and "Can I get a refund?" not in by_question
    text = (out / "train.jsonl").read_text() + ((out / "validation.jsonl").read_text()
                                                 if (out / "validation.jsonl").exists() else "")
    assert "example.com" not in text and "7946" not in text
    prov = [json.loads(x) for x in (out / "provenance.jsonl").read_text().splitlines()]
    assert {p["trace_id"] for p in prov} == {ids[k] for k in ("accepted", "thumbs_up", "corrected", "edited", "tool",
                                                               "smart", "reviewed")}


def test_split_is_deterministic_and_stale_files_are_replaced(recorded, tmp_path, capsys):
    url, _ = recorded
    a, b = tmp_path / "a", tmp_path / "b"
    assert export(url, a, "--val-fraction", "0.5") == 0
    assert export(url, b, "--val-fraction", "0.5") == 0
    for name in ("train.jsonl", "validation.jsonl"):
        assert (a / name).read_text() == (b / name).read_text()
    assert export(url, a, "--val-fraction", "0") == 0
    assert not (a / "validation.jsonl").exists() and len(read_lines(a)) == 7


@pytest.mark.parametrize("fmt", ["anthropic", "sharegpt"])
def test_text_formats_round_trip_through_their_schema(recorded, tmp_path, capsys, fmt):
    url, _ = recorded
    out = tmp_path / fmt
    assert export(url, out, "--format", fmt, "--val-fraction", "0") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["excluded"]["unsupported_content"] == 1  # the tool call: text-only formats
    lines = read_lines(out)
    assert len(lines) == 6
    for line in lines:
        if fmt == "anthropic":
            jsonschema.validate(line, ANTHROPIC_SCHEMA)
            validate_anthropic(line)
            assert line["system"] == SYSTEM
            assert [m["role"] for m in line["messages"]] == ["user", "assistant"]
        else:
            jsonschema.validate(line, SHAREGPT_SCHEMA)
            validate_sharegpt(line)
            assert [m["from"] for m in line["conversations"]] == ["system", "human", "gpt"]
    answers = {ln["messages"][-1]["content"] if fmt == "anthropic" else ln["conversations"][-1]["value"]
               for ln in lines}
    assert "I have emailed it. Call [PHONE] if it is missing." in answers


def test_where_filters_and_no_matching_rows_writes_nothing(recorded, tmp_path, capsys):
    url, ids = recorded
    out = tmp_path / "smart"
    assert export(url, out, "--where", "alias=smart", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 1 and summary["included"]["thumbs_up"] == 1 and summary["candidates"] == 1
    only = tmp_path / "only-corrected"
    assert export(url, only, "--reasons", "corrected") == 0
    assert len(read_lines(only)) == 2
    capsys.readouterr()
    nothing = tmp_path / "nothing"
    assert export(url, nothing, "--where", "alias=nope") == 1
    captured = capsys.readouterr()
    assert "no matching rows: nothing written" in captured.err and "0 examples" in captured.out
    assert not nothing.exists()
    assert export(url, nothing, "--where", "since=1h,until=30m") == 1  # a window with no calls
    assert not nothing.exists()
    assert export(url, nothing, "--where", "colour=red") == 2
    assert "unknown key 'colour'" in capsys.readouterr().err


def test_validators_reject_malformed_lines():
    with pytest.raises(ValueError):
        validate_openai({"messages": [{"role": "user", "content": "hi"}]})  # no assistant turn
    with pytest.raises(ValueError):
        validate_openai({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                         "extra": 1})
    with pytest.raises(ValueError):
        validate_anthropic({"system": "", "messages": [{"role": "assistant", "content": "x"},
                                                       {"role": "user", "content": "y"}]})
    with pytest.raises(ValueError):
        validate_sharegpt({"conversations": [{"from": "human", "value": "x"}, {"from": "user", "value": "y"}]})
