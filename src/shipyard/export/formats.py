"""Fine-tuning line formats, and strict validators for each.

An example is built as OpenAI-style chat messages (the gateway's canonical shape) ending
with the assistant turn to learn; each format converts from that:

- ``openai``: ``{"messages": [...], "tools"?: [...]}`` — OpenAI's chat fine-tuning format
  (system / user / assistant / tool messages; tool calls kept);
- ``anthropic``: ``{"system": str, "messages": [{"role": "user" | "assistant", "content":
  str}]}`` — the Messages API shape (Bedrock's Claude fine-tuning format): text only,
  roles alternating from user to a final assistant turn;
- ``sharegpt``: ``{"conversations": [{"from": "system" | "human" | "gpt", "value": str}]}``.

A conversation a format cannot express (tool calls, images for the text-only formats) is
:class:`Unsupported` and is left out with that reason.
"""

from __future__ import annotations

from typing import Any, Callable

FORMATS = ("openai", "anthropic", "sharegpt")
OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")


class Unsupported(ValueError):
    """The conversation cannot be written in this format (the message says why)."""


class InvalidLine(ValueError):
    """A line does not follow its format (raised by the validators)."""


def text_of(content: Any) -> str | None:
    """The text of a message's content (a string, or text parts joined); None when it has
    non-text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text") \
                    and isinstance(p.get("text"), str):
                out.append(p["text"])
            else:
                return None
        return "".join(out)
    return None


# ---- conversion -----------------------------------------------------------------------

def to_openai(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> dict[str, Any]:
    out = []
    for m in messages:
        role = m.get("role")
        if role not in OPENAI_ROLES:
            raise Unsupported(f"message role {role!r}")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        content = m.get("content")
        if content is not None:
            msg["content"] = content
        elif role != "assistant":
            msg["content"] = ""
        for k in ("name", "tool_call_id"):
            if isinstance(m.get(k), str) and m[k]:
                msg[k] = m[k]
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                  "function": {"name": (c.get("function") or {}).get("name"),
                                               "arguments": (c.get("function") or {}).get("arguments") or "{}"}}
                                 for c in m["tool_calls"] if isinstance(c, dict)]
        if role == "assistant" and "content" not in msg and "tool_calls" not in msg:
            msg["content"] = ""
        out.append(msg)
    line: dict[str, Any] = {"messages": out}
    if tools:
        line["tools"] = tools
    return line


def _plain(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of text-only conversations; Unsupported otherwise."""
    out = []
    for m in messages:
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise Unsupported("tool calls")
        if role not in ("system", "developer", "user", "assistant"):
            raise Unsupported(f"message role {role!r}")
        text = text_of(m.get("content"))
        if text is None:
            raise Unsupported("non-text content (images, audio or files)")
        out.append(("system" if role == "developer" else role, text))
    return out


def to_anthropic(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> dict[str, Any]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for role, text in _plain(messages):
        if role == "system":
            if turns:
                raise Unsupported("a system message after the conversation started")
            system.append(text)
            continue
        if turns and turns[-1]["role"] == role:  # the Messages API alternates: merge
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if not turns or turns[0]["role"] != "user":
        raise Unsupported("the conversation does not start with a user turn")
    line: dict[str, Any] = {"system": "\n\n".join(system), "messages": turns}
    return line


def to_sharegpt(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> dict[str, Any]:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[role], "value": text} for role, text in _plain(messages)]}


CONVERTERS: dict[str, Callable[[list[dict[str, Any]], list[Any] | None], dict[str, Any]]] = {
    "openai": to_openai, "anthropic": to_anthropic, "sharegpt": to_sharegpt,
}


# ---- validation ------------------------------------------------------------------------

def _need(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidLine(message)


def validate_openai(line: Any) -> None:
    """OpenAI chat fine-tuning: ``messages`` (+ optional ``tools``, ``parallel_tool_calls``),
    roles system/user/assistant/tool, at least one assistant message, the last one an
    assistant message with content or tool calls."""
    _need(isinstance(line, dict), "a line is a JSON object")
    extra = set(line) - {"messages", "tools", "parallel_tool_calls"}
    _need(not extra, f"unknown keys {sorted(extra)}")
    msgs = line.get("messages")
    _need(isinstance(msgs, list) and len(msgs) >= 2, "messages: a list of at least two messages")
    tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        _need(isinstance(m, dict), f"messages[{i}] is an object")
        role = m.get("role")
        _need(role in ("system", "user", "assistant", "tool"), f"messages[{i}].role: {role!r}")
        allowed = {"role", "content", "name"} | ({"tool_calls", "weight"} if role == "assistant" else set()) \
            | ({"tool_call_id"} if role == "tool" else set())
        _need(set(m) <= allowed, f"messages[{i}]: unknown keys {sorted(set(m) - allowed)}")
        c = m.get("content")
        if role == "assistant":
            _need(c is None or isinstance(c, str) or isinstance(c, list), f"messages[{i}].content")
            _need(c not in (None, "") or bool(m.get("tool_calls")), f"messages[{i}]: an assistant message needs "
                                                                     "content or tool_calls")
            for j, call in enumerate(m.get("tool_calls") or []):
                _need(isinstance(call, dict) and call.get("type") == "function" and isinstance(call.get("id"), str)
                      and isinstance((call.get("function") or {}).get("name"), str)
                      and isinstance((call.get("function") or {}).get("arguments"), str),
                      f"messages[{i}].tool_calls[{j}]: id, type function, function.name and .arguments")
                tool_ids.add(call["id"])
        else:
            _need(isinstance(c, (str, list)), f"messages[{i}].content: a string or a list of parts")
            if isinstance(c, list):
                for j, p in enumerate(c):
                    _need(isinstance(p, dict) and isinstance(p.get("type"), str), f"messages[{i}].content[{j}]")
        if role == "tool":
            _need(m.get("tool_call_id") in tool_ids, f"messages[{i}].tool_call_id answers no earlier tool call")
    _need(msgs[-1].get("role") == "assistant", "the last message is the assistant's")
    if "tools" in line:
        _need(isinstance(line["tools"], list), "tools: a list")


def validate_anthropic(line: Any) -> None:
    """``{"system": str, "messages": [...]}``: user/assistant turns alternating, from user to
    a final assistant turn, each a non-empty string."""
    _need(isinstance(line, dict) and set(line) == {"system", "messages"}, "keys: exactly system and messages")
    _need(isinstance(line["system"], str), "system: a string")
    msgs = line["messages"]
    _need(isinstance(msgs, list) and len(msgs) >= 2, "messages: at least a user and an assistant turn")
    for i, m in enumerate(msgs):
        _need(isinstance(m, dict) and set(m) == {"role", "content"}, f"messages[{i}]: exactly role and content")
        want = "user" if i % 2 == 0 else "assistant"
        _need(m["role"] == want, f"messages[{i}].role: expected {want} (turns alternate, from user)")
        _need(isinstance(m["content"], str) and m["content"].strip() != "", f"messages[{i}].content: non-empty text")
    _need(msgs[-1]["role"] == "assistant", "the last turn is the assistant's")


def validate_sharegpt(line: Any) -> None:
    """``{"conversations": [{"from", "value"}]}``: optional leading system, then human / gpt
    alternating, ending with gpt."""
    _need(isinstance(line, dict) and set(line) == {"conversations"}, "keys: exactly conversations")
    conv = line["conversations"]
    _need(isinstance(conv, list) and len(conv) >= 2, "conversations: at least a human and a gpt turn")
    turns = conv
    if conv and isinstance(conv[0], dict) and conv[0].get("from") == "system":
        turns = conv[1:]
    for i, m in enumerate(conv):
        _need(isinstance(m, dict) and set(m) == {"from", "value"}, f"conversations[{i}]: exactly from and value")
        _need(isinstance(m["value"], str), f"conversations[{i}].value: a string")
    for i, m in enumerate(turns):
        _need(m["from"] in ("human", "gpt"), f"turn {i}: from {m['from']!r}")
    _need(len(turns) >= 2 and turns[-1]["from"] == "gpt", "the last turn is gpt's")
    _need(turns[0]["from"] == "human", "the first turn is human")


VALIDATORS: dict[str, Callable[[Any], None]] = {
    "openai": validate_openai, "anthropic": validate_anthropic, "sharegpt": validate_sharegpt,
}
