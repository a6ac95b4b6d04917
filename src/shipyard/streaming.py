"""Reassemble a streamed completion into one response, for recording."""

from __future__ import annotations

from typing import Any


class StreamAccumulator:
    """Collects content, tool calls and finish reasons per choice from chunk dicts."""

    __slots__ = ("choices", "id", "model", "usage")

    def __init__(self) -> None:
        self.choices: dict[int, dict[str, Any]] = {}
        self.id: str | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if self.id is None:
            self.id = chunk.get("id")
            self.model = chunk.get("model")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            idx = c.get("index", 0)
            acc = self.choices.get(idx)
            if acc is None:
                acc = self.choices[idx] = {"content": [], "tool_calls": {}, "finish_reason": None}
            delta = c.get("delta") or {}
            text = delta.get("content")
            if text:
                acc["content"].append(text)
            for tc in delta.get("tool_calls") or ():
                slot = acc["tool_calls"].setdefault(
                    tc.get("index", 0), {"id": None, "type": "function", "name": "", "arguments": []}
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["name"] += fn["name"]
                if fn.get("arguments"):
                    slot["arguments"].append(fn["arguments"])
            if c.get("finish_reason"):
                acc["finish_reason"] = c["finish_reason"]

    def text(self, index: int = 0) -> str:
        acc = self.choices.get(index)
        return "".join(acc["content"]) if acc else ""

    def response(self) -> dict[str, Any]:
        """The equivalent non-streamed chat.completion body."""
        choices = []
        for idx in sorted(self.choices):
            acc = self.choices[idx]
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(acc["content"]) or None}
            if acc["tool_calls"]:
                msg["tool_calls"] = [
                    {"id": s["id"], "type": "function",
                     "function": {"name": s["name"], "arguments": "".join(s["arguments"])}}
                    for _, s in sorted(acc["tool_calls"].items())
                ]
            choices.append({"index": idx, "message": msg, "finish_reason": acc["finish_reason"]})
        out: dict[str, Any] = {"id": self.id, "object": "chat.completion", "model": self.model, "choices": choices}
        if self.usage:
            out["usage"] = self.usage
        return out
