"""Comparing a candidate's answer with production's: exact match, JSON equality, a light
similarity score, and an optional judge (another alias asked to grade the candidate)."""

from __future__ import annotations

import re
from typing import Any

import orjson

from .embed import similarity

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

JUDGE_SYSTEM = (
    "You grade a CANDIDATE answer against a REFERENCE answer to the same request. "
    "Reply with one number from 0 to 10 and nothing else: 10 means the candidate is as good as "
    "or better than the reference, 0 means it is wrong or useless."
)


def answer_text(resp: dict[str, Any] | None) -> str:
    """The first choice's text (tool calls as JSON), '' when there is none."""
    if not resp:
        return ""
    choices = resp.get("choices") or []
    if not choices:
        return ""
    msg = choices[0].get("message") or {}
    content = msg.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content:
        return str(content)
    if msg.get("tool_calls"):
        return orjson.dumps([{"name": (c.get("function") or {}).get("name"),
                              "arguments": (c.get("function") or {}).get("arguments")}
                             for c in msg["tool_calls"]]).decode()
    return ""


def parse_json(text: str) -> tuple[bool, Any]:
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    try:
        return True, orjson.loads(text)
    except orjson.JSONDecodeError:
        return False, None


def exact(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def json_equal(prod: str, cand: str) -> bool | None:
    """None when production's answer is not JSON (the comparison does not apply)."""
    ok_p, vp = parse_json(prod)
    if not ok_p:
        return None
    ok_c, vc = parse_json(cand)
    return ok_c and vc == vp


def compare(prod: str, cand: str, which: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"exact_match": None, "json_equal": None, "similarity": None}
    if "exact" in which:
        out["exact_match"] = exact(prod, cand)
    if "json" in which:
        out["json_equal"] = json_equal(prod, cand)
    if "similarity" in which:
        out["similarity"] = round(similarity(prod, cand), 4)
    return out


def judge_messages(request_messages: list[dict[str, Any]], prod: str, cand: str) -> list[dict[str, Any]]:
    convo = []
    for m in request_messages[-6:]:
        c = m.get("content")
        if isinstance(c, list):
            c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
        convo.append(f"{m.get('role')}: {str(c or '')[:2000]}")
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": "REQUEST:\n" + "\n".join(convo) + f"\n\nREFERENCE:\n{prod[:6000]}\n\n"
                                    f"CANDIDATE:\n{cand[:6000]}\n\nScore (0-10):"},
    ]


def judge_score(text: str) -> float | None:
    m = _NUMBER.search(text or "")
    if not m:
        return None
    return max(0.0, min(10.0, float(m.group(0)))) / 10.0
