"""Shared by the eval tests: a rule-based fake model and judge, configs and datasets.

(Named test_evals_* to sit with the eval tests; it holds no tests itself.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Japan": "Tokyo", "Peru": "Lima",
            "Kenya": "Nairobi", "Chile": "Santiago", "Egypt": "Cairo"}
HARD = ("Japan", "Peru", "Kenya")  # m-bad does not know these


def items(n: int) -> list[dict[str, Any]]:
    names = list(CAPITALS)
    return [{"id": f"c{i:03}", "variables": {"country": names[i % len(names)]}, "expected": CAPITALS[names[i % len(names)]]}
            for i in range(n)]


def _text(body: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in body["messages"] if isinstance(m.get("content"), str))


def is_judge(body: dict[str, Any]) -> bool:
    first = body["messages"][0]
    return first.get("role") == "system" and "impartial evaluator" in (first.get("content") or "")


def graded_answer(body: dict[str, Any]) -> str:
    text = _text(body)
    m = re.search(r"Answer to grade:\n<<<\n(.*)\n>>>", text, re.S)
    return m.group(1) if m else ""


def rules(body: dict[str, Any]) -> str:
    """m-good knows every capital; m-bad not the HARD ones; judges pass an answer naming a
    capital (judge-broken replies prose; judge-lenient passes everything)."""
    model = body["model"]
    text = _text(body)
    if is_judge(body):
        if model == "judge-broken":
            return json.dumps({"opinion": "Looks fine to me!"})  # JSON, but no verdict
        if "Answer A:" in text:
            a = re.search(r"Answer A:\n<<<\n(.*?)\n>>>", text, re.S).group(1)
            b = re.search(r"Answer B:\n<<<\n(.*?)\n>>>", text, re.S).group(1)
            ga, gb = (any(c in x for c in CAPITALS.values()) for x in (a, b))
            return json.dumps({"winner": "tie" if ga == gb else ("A" if ga else "B"), "reason": "names the capital"})
        ok = model == "judge-lenient" or any(c in graded_answer(body) for c in CAPITALS.values())
        return json.dumps({"reason": "names a capital" if ok else "no capital", "pass": ok})
    country = next((c for c in CAPITALS if c in text), None)
    if country is None:
        return "Hello."
    if model == "m-bad" and country in HARD:
        return "I am not sure."
    return f"The capital of {country} is {CAPITALS[country]}."


def config(fake: Any, db: Path | str) -> dict[str, Any]:
    def alias(model: str) -> dict[str, Any]:
        return {"targets": [{"provider": "up", "model": model}], "retries": 0, "backoff": {"initial_s": 0.01}}

    return {
        "store": f"sqlite:///{db}",
        "providers": {"up": {"type": "openai", "base_url": fake.base_url, "api_key": "k"}},
        "models": {"good": alias("m-good"), "bad": alias("m-bad"), "judge": alias("m-judge"),
                   "judge-broken": alias("judge-broken"), "judge-lenient": alias("judge-lenient")},
        "prices": {"m-good": {"input": 2.0, "output": 8.0}, "m-bad": {"input": 0.5, "output": 1.0},
                   "m-judge": {"input": 1.0, "output": 1.0}},
    }


def write_config(path: Path, fake: Any, db: Path | str) -> Path:
    path.write_text(yaml.safe_dump(config(fake, db)))
    return path


def spec(config_path: Path | str | None = None, **kw: Any) -> dict[str, Any]:
    s = {
        "name": "capitals",
        "dataset": {"name": "capitals"},
        "prompts": {"terse": {"prompt": "Capital of {{ country }}?"},
                    "polite": {"system": "You are a helpful geography tutor.",
                               "prompt": "Please tell me the capital city of {{ country }}."}},
        "models": ["good", "bad"],
        "evaluators": [{"type": "contains"}, {"type": "judge", "name": "correct", "model": "judge",
                                              "rubric": "The answer names the correct capital city."}],
        "concurrency": 4,
    }
    if config_path is not None:
        s["config"] = str(config_path)
    s.update(kw)
    return s


def chat_requests(fake: Any) -> list[dict[str, Any]]:
    return [r["json"] for r in fake.requests if r["path"] == "/v1/chat/completions"]


def model_requests(fake: Any) -> list[dict[str, Any]]:
    """The cases' own calls (not the judges')."""
    return [b for b in chat_requests(fake) if not is_judge(b)]
