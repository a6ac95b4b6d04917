"""The nondeterminism probe: re-run a sample of recorded production inputs N times
through the gateway and report how often the outputs change.

Each re-run is a real gateway call (same alias, same request body, not streamed), recorded
like any other but marked ``metadata.drift_probe`` so drift windows leave it out. Outputs
are compared as text (whitespace-normalised; tool calls by name and arguments).
"""

from __future__ import annotations

import asyncio
import difflib
import random
import re
from typing import Any

from .descriptors import input_text, output_parts
from .records import PROBE_MARK, Item, window_items

MAX_CONCURRENCY = 4
_WS = re.compile(r"\s+")


def _norm_output(resp: Any) -> str:
    if isinstance(resp, dict):
        choices = resp.get("choices") or []
        msg = (choices[0].get("message") if choices and isinstance(choices[0], dict) else None) or {}
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        if calls:
            return "tools:" + ";".join(
                f"{(c.get('function') or {}).get('name')}({(c.get('function') or {}).get('arguments')})"
                for c in calls if isinstance(c, dict))
    parts = output_parts(resp)
    return _WS.sub(" ", (parts[0] if parts else "")).strip()


def sample_inputs(store: Any, start: float, end: float, n: int, alias: str | None = None,
                  seed: int = 0) -> list[Item]:
    """A uniform sample (reservoir) of up to ``n`` replayable llm calls of the window."""
    rng = random.Random(seed)
    out: list[Item] = []
    seen = 0
    for item in window_items(store, start, end, alias=alias):
        body = item.input
        if not (isinstance(body, dict) and isinstance(body.get("messages"), list) and body.get("model")):
            continue
        seen += 1
        if len(out) < n:
            out.append(item)
        else:
            j = rng.randrange(seen)
            if j < n:
                out[j] = item
    return out


async def run_probe(engine: Any, items: list[Item], repeats: int = 3,
                    threshold: float = 0.5) -> dict[str, Any]:
    """Re-run each item ``repeats`` times through ``engine`` (started by the caller)."""
    from ..errors import GatewayError
    from ..types import parse_chat_request

    sem = asyncio.Semaphore(MAX_CONCURRENCY)

    async def once(body: dict[str, Any]) -> str | None:
        async with sem:
            req = parse_chat_request(body)
            span = engine.new_span("llm", "drift probe " + str(body.get("model")), metadata={PROBE_MARK: True})
            try:
                resp = await engine.complete(req, span)
            except GatewayError:
                return None
            return _norm_output(resp)

    results = []
    for item in items:
        body = {k: v for k, v in item.input.items() if k not in ("stream", "stream_options")}
        outs = await asyncio.gather(*(once(body) for _ in range(repeats)))
        ok = [o for o in outs if o is not None]
        recorded = _norm_output(item.output) if item.output is not None else None
        distinct = len(set(ok))
        sims = [difflib.SequenceMatcher(None, a[:2000], b[:2000]).ratio()
                for i, a in enumerate(ok) for b in ok[i + 1:]]
        results.append({
            "span_id": item.id, "trace_id": item.trace_id, "alias": body.get("model"),
            "input": (input_text(item.input) or "")[:300], "runs": len(ok), "errors": len(outs) - len(ok),
            "distinct_outputs": distinct, "changed": distinct > 1,
            "differs_from_recorded": recorded is not None and any(o != recorded for o in ok),
            "mean_similarity": round(sum(sims) / len(sims), 4) if sims else None,
            "outputs": [o[:300] for o in dict.fromkeys(ok)][:repeats],
        })
    probed = [r for r in results if r["runs"] >= 2]
    changed = sum(1 for r in probed if r["changed"])
    rate = changed / len(probed) if probed else None
    sims = [r["mean_similarity"] for r in probed if r["mean_similarity"] is not None]
    if rate is None:
        verdict, reason = "not enough data", "no input could be re-run at least twice"
    else:
        verdict = "nondeterministic" if rate > threshold else "stable"
        reason = None
    return {
        "inputs": len(items), "repeats": repeats, "probed": len(probed), "changed": changed,
        "changed_rate": None if rate is None else round(rate, 4),
        "differs_from_recorded_rate": (round(sum(1 for r in probed if r["differs_from_recorded"]) / len(probed), 4)
                                       if probed else None),
        "mean_similarity": round(sum(sims) / len(sims), 4) if sims else None,
        "threshold": threshold, "verdict": verdict, "reason": reason, "results": results,
    }
