"""Eval assertions for your own test suite (pytest or any runner).

    from shipyard.testing import assert_contains, assert_judge, check

    def test_capital(shipyard_gateway):
        resp = shipyard_gateway.chat(model="chat", messages=[{"role": "user", "content": "Capital of France?"}])
        assert_contains(resp, "Paris")
        assert_judge(resp, "States the capital correctly and nothing false", model="judge",
                     gateway=shipyard_gateway, input="Capital of France?")

Every helper runs one of the eval evaluators (the same code as ``shipyard eval run``) and
raises ``AssertionError`` with a readable message: which check, why, what was expected
and what the answer was. ``output`` may be a string, an OpenAI SDK ``ChatCompletion`` (or
its dict form). ``check`` runs several evaluator specs at once and reports every failure
together. In async tests use ``await acheck(...)`` / ``await aassert_judge(...)``.

With the pytest plugin (installed with shipyard), ``@pytest.mark.shipyard_dataset("name")``
runs a test once per dataset item (the ``case`` argument), and the fixture
``shipyard_gateway`` is a ``Gateway`` for ``--shipyard-config``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

from .evals.evaluators import Case, EvalContext, Outcome, build_evaluator

__all__ = [
    "EvalAssertionError", "acheck", "aassert_judge", "assert_contains", "assert_cost", "assert_equals",
    "assert_json", "assert_judge", "assert_latency", "assert_length", "assert_matches", "assert_not_contains",
    "assert_schema", "assert_similar", "check", "evaluate", "output_text",
]

# counters read by the pytest plugin's terminal summary
STATS = {"checks": 0, "passed": 0, "failed": 0, "errors": 0}
_lock = threading.Lock()


class EvalAssertionError(AssertionError):
    """An eval check failed; ``outcomes`` holds (evaluator name, Outcome) pairs."""

    def __init__(self, message: str, outcomes: list[tuple[str, Outcome]]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


def output_text(output: Any) -> str | None:
    """The answer text of a string, a ChatCompletion, or its dict form."""
    if output is None or isinstance(output, str):
        return output
    if isinstance(output, dict):
        from .evals.calls import answer_text

        return answer_text(output)
    choices = getattr(output, "choices", None)
    if choices:
        msg = choices[0].message
        if msg.content is not None:
            return msg.content
        if getattr(msg, "tool_calls", None):
            import json

            return json.dumps([tc.model_dump() for tc in msg.tool_calls])
    return str(output)


def _short(v: Any, n: int = 300) -> str:
    s = v if isinstance(v, str) else repr(v)
    if len(s) > n:
        s = s[:n] + "…"
    return repr(s) if isinstance(v, str) else s


def _caller(gateway: Any, base_url: str | None) -> Any:
    if base_url is not None:
        from .evals.calls import HttpCaller

        return HttpCaller(base_url)
    if gateway is not None:
        from .evals.calls import EngineCaller

        return EngineCaller(getattr(gateway, "engine", gateway))
    return None


def _case(output: Any, *, expected: Any, input: Any, cost_usd: float | None, latency_ms: float | None,
          metadata: dict[str, Any] | None) -> Case:
    inp: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    if isinstance(input, str):
        messages = [{"role": "user", "content": input}]
        inp = {"messages": messages}
    elif isinstance(input, list):
        messages, inp = input, {"messages": input}
    elif isinstance(input, dict):
        inp = input if ("messages" in input or "variables" in input) else {"variables": input}
        messages = inp.get("messages") or []
    item = {"id": "test", "input": inp, "expected": expected, "metadata": metadata or {}}
    return Case(item=item, output=output_text(output), messages=messages, latency_ms=latency_ms, cost_usd=cost_usd)


async def acheck(output: Any, *specs: Any, expected: Any = None, input: Any = None, case: dict[str, Any] | None = None,
                 gateway: Any = None, base_url: str | None = None, cost_usd: float | None = None,
                 latency_ms: float | None = None, base_dir: str | Path | None = None) -> list[Outcome]:
    """Run evaluator specs (dicts as in EVAL.yaml, or type names) on ``output``; raise
    EvalAssertionError listing every failed or errored check. ``case``: a dataset item
    (its input and expected output are used)."""
    if case is not None:
        expected = case.get("expected") if expected is None else expected
        input = case.get("input") if input is None else input
    c = _case(output, expected=expected, input=input, cost_usd=cost_usd, latency_ms=latency_ms,
              metadata=(case or {}).get("metadata"))
    base = Path(base_dir) if base_dir else Path.cwd()
    evaluators = [build_evaluator(s, f"check[{i}]", base) for i, s in enumerate(specs)]
    ctx = EvalContext(caller=_caller(gateway, base_url), base_dir=base, run_id="pytest")
    if gateway is not None and hasattr(gateway, "engine"):
        await gateway.engine.start()
    outcomes = await asyncio.gather(*(e.evaluate(c, ctx) for e in evaluators))
    bad = [(e, o) for e, o in zip(evaluators, outcomes) if o.error or o.passed is False]
    with _lock:
        STATS["checks"] += len(outcomes)
        STATS["errors"] += sum(1 for o in outcomes if o.error)
        STATS["failed"] += sum(1 for o in outcomes if not o.error and o.passed is False)
        STATS["passed"] += sum(1 for o in outcomes if not o.error and o.passed is not False)
    if bad:
        lines = [f"shipyard eval check{'s' if len(bad) > 1 else ''} failed ({len(bad)} of {len(outcomes)}):"]
        for e, o in bad:
            what = "ERROR" if o.error else "FAIL"
            lines.append(f"  {what} {e.name} [{e.type}]: {o.error or o.reason or 'did not pass'}")
            if o.score is not None and not o.error:
                lines.append(f"       score: {o.score:.3f}")
        if expected is not None:
            lines.append(f"  expected: {_short(expected)}")
        lines.append(f"  output:   {_short(c.output)}")
        raise EvalAssertionError("\n".join(lines), [(e.name, o) for e, o in bad])
    return list(outcomes)


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: its own loop
        return pool.submit(asyncio.run, coro).result()


def check(output: Any, *specs: Any, gateway: Any = None, **kwargs: Any) -> list[Outcome]:
    """Sync :func:`acheck`. With a ``Gateway`` (judges, embeddings aliases) the checks run
    on the gateway's own loop, as its sync calls do."""
    coro = acheck(output, *specs, gateway=gateway, **kwargs)
    if gateway is not None and hasattr(gateway, "_sync"):
        return gateway._sync().run(coro)
    return _run(coro)


def evaluate(output: Any, spec: Any, **kwargs: Any) -> Outcome:
    """One evaluator's Outcome, without asserting."""
    try:
        return check(output, spec, **kwargs)[0]
    except EvalAssertionError as exc:
        return exc.outcomes[0][1]


# ---- one helper per assertion -----------------------------------------------------------------

def assert_equals(output: Any, expected: Any, *, ignore_case: bool = False, as_json: bool = False) -> None:
    check(output, {"type": "equals", "value": expected, "ignore_case": ignore_case, "json": as_json})


def assert_contains(output: Any, *values: str, ignore_case: bool = False, any_of: bool = False) -> None:
    check(output, {"type": "contains", "value": list(values), "ignore_case": ignore_case,
                   "mode": "any" if any_of else "all"})


def assert_not_contains(output: Any, *values: str, ignore_case: bool = False) -> None:
    check(output, {"type": "not_contains", "value": list(values), "ignore_case": ignore_case})


def assert_matches(output: Any, pattern: str, *, ignore_case: bool = False, full: bool = False) -> None:
    check(output, {"type": "regex", "pattern": pattern, "ignore_case": ignore_case, "full": full})


def assert_json(output: Any) -> Any:
    """The answer parses as JSON; returns the parsed value."""
    import json

    from .evals.evaluators import unfence

    check(output, "json")
    return json.loads(unfence(output_text(output) or ""))


def assert_schema(output: Any, schema: dict[str, Any]) -> Any:
    """The answer is JSON valid against ``schema``; returns the parsed value."""
    import json

    from .evals.evaluators import unfence

    check(output, {"type": "json_schema", "schema": schema})
    return json.loads(unfence(output_text(output) or ""))


def assert_length(output: Any, *, min: int | None = None, max: int | None = None, unit: str = "chars") -> None:
    check(output, {"type": "length", "min": min, "max": max, "unit": unit})


def assert_similar(output: Any, reference: str, *, threshold: float = 0.8, embedder: str = "hashing",
                   gateway: Any = None) -> float:
    """Embedding similarity to ``reference`` at least ``threshold``; returns it."""
    outs = check(output, {"type": "similarity", "value": reference, "threshold": threshold, "embedder": embedder},
                 gateway=gateway)
    return float(outs[0].score or 0.0)


def assert_cost(cost_usd: float | None, max_usd: float) -> None:
    check("", {"type": "cost", "max_usd": max_usd}, cost_usd=cost_usd)


def assert_latency(latency_ms: float | None, max_ms: float) -> None:
    check("", {"type": "latency", "max_ms": max_ms}, latency_ms=latency_ms)


def _judge_spec(rubric: str, model: str, mode: str, pass_score: float | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "judge", "name": "judge", "model": model, "rubric": rubric, "mode": mode}
    if pass_score is not None:
        spec["pass_score"] = pass_score
    return spec


def assert_judge(output: Any, rubric: str, *, model: str, gateway: Any = None, base_url: str | None = None,
                 input: Any = None, expected: Any = None, mode: str = "pass_fail",
                 pass_score: float | None = None) -> Outcome:
    """An LLM judge (``model``: an alias of ``gateway``, or of the server at ``base_url``)
    grades the answer against ``rubric``. A judge reply that does not parse fails the
    assertion as an error (never as a pass)."""
    return check(output, _judge_spec(rubric, model, mode, pass_score), gateway=gateway, base_url=base_url,
                 input=input, expected=expected)[0]


async def aassert_judge(output: Any, rubric: str, *, model: str, gateway: Any = None, base_url: str | None = None,
                        input: Any = None, expected: Any = None, mode: str = "pass_fail",
                        pass_score: float | None = None) -> Outcome:
    return (await acheck(output, _judge_spec(rubric, model, mode, pass_score), gateway=gateway, base_url=base_url,
                         input=input, expected=expected))[0]
