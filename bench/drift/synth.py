"""Synthetic support-bot traffic with shifts that can be switched on, for the drift tests
and benchmark. Deterministic for a given seed.

Base traffic: customer questions on five topics (billing, shipping, returns, account,
product), answered with a JSON object {"answer", "category", "confidence"}. Shifts:

- ``new_topic``: a share of questions about a topic the reference never saw (crypto
  investment advice)
- ``output_format``: "json" (default), "markdown" (prose with a heading instead of JSON)
- ``length_factor``: multiplies the length of answers
"""

from __future__ import annotations

import random
import time
from typing import Any

import orjson

TOPICS: dict[str, dict[str, list[str]]] = {
    "billing": {
        "q": ["Why was I charged {amt} twice on my {card} card?", "Can you explain the {amt} fee on my last invoice?",
              "I need a copy of my invoice for {month}.", "My payment of {amt} failed, what should I do?",
              "How do I update the billing address on my account?", "Why did my subscription price go up in {month}?"],
        "a": ["I have checked your invoice from {month}. The {amt} charge is your monthly subscription fee.",
              "Your payment method ending in {num} was declined; please update it under Billing settings.",
              "A refund of {amt} for the duplicate charge has been issued and will appear within five days."],
    },
    "shipping": {
        "q": ["Where is my order {order}? It was supposed to arrive {day}.", "Can I change the delivery address for order {order}?",
              "How long does express shipping to {city} take?", "My package shows delivered but I never received it.",
              "Do you ship to {city}?", "The tracking number for {order} does not work."],
        "a": ["Your order {order} left our warehouse and should arrive in {city} by {day}.",
              "Express shipping to {city} usually takes two business days.",
              "I have opened an investigation with the carrier for order {order}."],
    },
    "returns": {
        "q": ["How do I return the {item} I bought in {month}?", "Can I exchange my {item} for a different size?",
              "The {item} arrived damaged, can I get a replacement?", "When will I get my refund for the returned {item}?",
              "Is there a fee for returning a {item}?"],
        "a": ["You can return the {item} within thirty days using the prepaid label in your account.",
              "Refunds for returned items are processed within five business days after we receive the {item}.",
              "We will send a replacement {item} at no cost; no need to return the damaged one."],
    },
    "account": {
        "q": ["I forgot my password and the reset email never arrives.", "How do I enable two factor authentication?",
              "Can I change the email address on my account to {email}?", "My account was locked after too many attempts.",
              "How do I delete my account and all my data?"],
        "a": ["I have sent a new password reset link to {email}; it expires in one hour.",
              "Two factor authentication can be enabled under Security settings in your profile.",
              "Your account has been unlocked; please sign in again with your current password."],
    },
    "product": {
        "q": ["Is the {item} waterproof?", "What is the battery life of the {item}?", "Does the {item} come in {color}?",
              "What is the difference between the {item} and the {item} pro?", "Is the {item} compatible with my phone?"],
        "a": ["The {item} is rated for splashes but should not be submerged.",
              "The {item} is available in {color}, black and white.",
              "The battery of the {item} lasts about ten hours of normal use."],
    },
}
NEW_TOPIC = {
    "q": ["Should I move my savings into {coin} before the halving?", "Which altcoin will outperform {coin} next year?",
          "Is staking {coin} on an exchange safe for my retirement fund?", "How much leverage should I use when trading {coin} futures?",
          "Can you predict the price of {coin} for next month?"],
    "a": ["I cannot give financial advice about {coin}; consider speaking with a licensed adviser.",
          "Cryptocurrency prices such as {coin} are volatile and impossible to predict reliably."],
}
SLOTS = {
    "amt": ["$9.99", "$19.00", "$49.50", "$120.00", "$5.25"], "card": ["visa", "mastercard", "amex"],
    "month": ["January", "March", "June", "September", "November"], "num": ["4242", "1881", "0005", "7310"],
    "order": ["A1001", "B2077", "C3140", "D4410", "E5923"], "day": ["Monday", "Friday", "yesterday", "last week"],
    "city": ["Berlin", "Austin", "Lyon", "Osaka", "Toronto"], "item": ["jacket", "headphones", "backpack", "kettle", "lamp"],
    "email": ["sam@example.com", "lee@example.org"], "color": ["red", "navy", "green"],
    "coin": ["bitcoin", "ethereum", "solana", "dogecoin"],
}
PREFIXES = ["", "", "Hi, ", "Hello, ", "Quick question: ", "Please help. "]
SYSTEM = "You are a helpful support assistant for an online store. Answer in JSON."


def _fill(rng: random.Random, template: str) -> str:
    out = template
    for key, values in SLOTS.items():
        while "{" + key + "}" in out:
            out = out.replace("{" + key + "}", rng.choice(values), 1)
    return out


def make_records(n: int, seed: int = 0, *, new_topic: float = 0.0, output_format: str = "json",
                 length_factor: float = 1.0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = list(TOPICS)
    out = []
    for _ in range(n):
        if rng.random() < new_topic:
            topic, spec = "crypto", NEW_TOPIC
        else:
            topic = rng.choice(names)
            spec = TOPICS[topic]
        question = rng.choice(PREFIXES) + _fill(rng, rng.choice(spec["q"]))
        answer = _fill(rng, rng.choice(spec["a"]))
        reps = max(1, int(round(length_factor * rng.uniform(0.8, 1.2))))
        if length_factor != 1.0:
            answer = " ".join([answer] + [_fill(rng, rng.choice(spec["a"])) for _ in range(reps - 1)])
        if output_format == "json":
            text = orjson.dumps({"answer": answer, "category": topic, "confidence": round(rng.uniform(0.6, 0.99), 2)}).decode()
        else:
            text = f"## {topic.title()}\n\n{answer}\n\n*Confidence: {rng.randint(60, 99)}%*"
        tokens_in = len(question) // 4 + 30
        tokens_out = len(text) // 4
        out.append({
            "topic": topic, "question": question, "output": text,
            "latency_ms": round(rng.lognormvariate(6.0, 0.3), 2),
            "input_tokens": tokens_in, "output_tokens": tokens_out,
            "cost_usd": round(tokens_in * 1.5e-7 + tokens_out * 6e-7, 9),
        })
    return out


def request_body(question: str, model: str = "support") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}


def completion(text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"id": "chatcmpl-synth", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "finish_reason": "stop"}]}


def spans(records: list[dict[str, Any]], start: float, end: float, alias: str = "support") -> list[Any]:
    """llm spans spread evenly over [start, end)."""
    from shipyard.tracing.span import Span, new_span_id, new_trace_id

    out = []
    step = (end - start) / max(1, len(records))
    for i, r in enumerate(records):
        t = start + i * step
        out.append(Span(
            trace_id=new_trace_id(), span_id=new_span_id(), name=f"chat {alias}", kind="llm", start_time=t,
            end_time=t + r["latency_ms"] / 1000.0, input=request_body(r["question"], alias),
            output=completion(r["output"]), alias=alias, provider="openai", model="gpt-4o-mini",
            response_model="gpt-4o-mini", input_tokens=r["input_tokens"], output_tokens=r["output_tokens"],
            cost_usd=r["cost_usd"], attributes={"config_hash": "synth"},
        ))
    return out


def dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def write_window(store: Any, records: list[dict[str, Any]], start: float, end: float, alias: str = "support",
                 batch: int = 5000) -> None:
    for i in range(0, len(records), batch):
        store.write_spans(spans(records[i:i + batch], start + (end - start) * i / len(records),
                                start + (end - start) * min(len(records), i + batch) / len(records), alias), dump)


def dataset_items(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items in the shape shipyard.evals.datasets accepts (the answer as ``expected``)."""
    return [{"id": f"item-{i}", "input": {"messages": [{"role": "system", "content": SYSTEM},
                                                       {"role": "user", "content": r["question"]}]},
             "expected": r["output"], "metadata": {"topic": r["topic"], "latency_ms": r["latency_ms"],
                                                   "cost_usd": r["cost_usd"]}}
            for i, r in enumerate(records)]


DAY = 86400.0


def now() -> float:
    return time.time()
