"""Evaluators: small classes registered by ``type``, configured in EVAL.yaml.

Each returns an :class:`Outcome`: ``passed`` (True / False / None when it only scores),
``score`` (0..1), a ``reason``, or an ``error`` — an evaluator that could not decide (a
judge reply that does not parse, a cost that is unknown, a crashing custom function) is
an error, never a pass or a fail.

Code assertions: ``equals``, ``contains``, ``not_contains``, ``regex``, ``json``,
``json_schema``, ``length``, ``similarity`` (embeddings, built-in hashing embedder or an
embeddings alias), ``cost``, ``latency``, ``python`` (your function). Model-graded:
``judge`` (a rubric, pass/fail with a reason or a score) and ``pairwise`` (which of two
variants' answers is better; run after both answered, see runner.py).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError


@dataclass(slots=True)
class Outcome:
    passed: bool | None = None
    score: float | None = None
    reason: str | None = None
    error: str | None = None
    cost_usd: float | None = None

    @classmethod
    def verdict(cls, ok: bool, reason: str | None = None, score: float | None = None) -> "Outcome":
        return cls(passed=ok, score=(1.0 if ok else 0.0) if score is None else score, reason=reason)

    @classmethod
    def err(cls, message: str) -> "Outcome":
        return cls(error=message)


@dataclass(slots=True)
class Case:
    """What an evaluator sees: the dataset item, the answer and the call's measurements."""

    item: dict[str, Any]
    output: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] | None = None
    variant: str = ""
    latency_ms: float | None = None
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    trace_id: str | None = None
    span_id: str | None = None

    @property
    def expected(self) -> Any:
        return self.item.get("expected")

    @property
    def input(self) -> dict[str, Any]:
        return self.item.get("input") or {}

    @property
    def metadata(self) -> dict[str, Any]:
        return self.item.get("metadata") or {}


@dataclass
class EvalContext:
    """Services for evaluators: a model caller (judges, embedding aliases) and paths."""

    caller: Any = None
    base_dir: Path = field(default_factory=Path.cwd)
    run_id: str = ""
    _embedders: dict[str, Any] = field(default_factory=dict)

    def embedder(self, spec: str) -> Any:
        emb = self._embedders.get(spec)
        if emb is None:
            emb = self._embedders[spec] = HashingEmbedder() if spec == "hashing" else AliasEmbedder(self.caller, spec)
        return emb


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = None
    criterion: str | None = None  # what it judges, for judge alignment (default: its name)


class Evaluator:
    type: ClassVar[str]
    Options: ClassVar[type[Options]] = Options
    needs_output: ClassVar[bool] = True
    pairwise: ClassVar[bool] = False

    def __init__(self, options: Options, base_dir: Path) -> None:
        self.options = options
        self.name = options.name or options.type
        self.criterion = options.criterion or self.name
        self.base_dir = base_dir

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return self.options.model_dump(exclude_none=True)


REGISTRY: dict[str, type[Evaluator]] = {}


def register_evaluator(cls: type[Evaluator]) -> type[Evaluator]:
    REGISTRY[cls.type] = cls
    return cls


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _short(text: Any, n: int = 80) -> str:
    s = text if isinstance(text, str) else repr(text)
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[: n - 1] + "…"


def unfence(text: str) -> str:
    """The JSON inside a Markdown code fence, if the answer is fenced."""
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


# ---- string checks -------------------------------------------------------------------------

class EqualsOptions(Options):
    value: Any = None  # default: the item's expected output
    ignore_case: bool = False
    strip: bool = True
    as_json: bool = Field(False, alias="json")  # compare as parsed JSON values

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@register_evaluator
class Equals(Evaluator):
    type = "equals"
    Options = EqualsOptions

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: EqualsOptions = self.options  # type: ignore[assignment]
        want = o.value if o.value is not None else case.expected
        if want is None:
            return Outcome.err("no value to compare with (set 'value' or give the case an expected output)")
        got = case.output or ""
        if o.as_json:
            try:
                parsed = json.loads(unfence(got))
            except ValueError:
                return Outcome.verdict(False, "the answer is not valid JSON")
            if isinstance(want, str):
                try:
                    want = json.loads(want)
                except ValueError:
                    pass
            ok = parsed == want
            return Outcome.verdict(ok, None if ok else f"expected {_short(_text_of(want))}, got {_short(got)}")
        a, b = got, _text_of(want)
        if o.strip:
            a, b = a.strip(), b.strip()
        if o.ignore_case:
            a, b = a.casefold(), b.casefold()
        ok = a == b
        return Outcome.verdict(ok, None if ok else f"expected {_short(b)!r}, got {_short(a)!r}")


class ContainsOptions(Options):
    value: str | list[str] | None = None  # default: the expected output
    mode: Literal["all", "any"] = "all"
    ignore_case: bool = False


@register_evaluator
class Contains(Evaluator):
    type = "contains"
    Options = ContainsOptions
    negate: ClassVar[bool] = False

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: ContainsOptions = self.options  # type: ignore[assignment]
        want = o.value if o.value is not None else case.expected
        if want is None:
            return Outcome.err("no value to look for (set 'value' or give the case an expected output)")
        needles = [want] if isinstance(want, str) else [_text_of(w) for w in want] if isinstance(want, list) \
            else [_text_of(want)]
        hay = case.output or ""
        if o.ignore_case:
            hay = hay.casefold()
        found = [n for n in needles if (n.casefold() if o.ignore_case else n) in hay]
        missing = [n for n in needles if n not in found]
        if self.negate:
            ok = not found
            return Outcome.verdict(ok, None if ok else f"the answer contains {_short(found[0])!r}")
        ok = not missing if o.mode == "all" else bool(found)
        return Outcome.verdict(ok, None if ok else f"the answer does not contain {_short(missing[0])!r}")


@register_evaluator
class NotContains(Contains):
    type = "not_contains"
    negate = True


class RegexOptions(Options):
    pattern: str
    ignore_case: bool = False
    full: bool = False  # the whole answer must match
    negate: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> "RegexOptions":
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern: not a valid regular expression: {exc}") from None
        return self


@register_evaluator
class Regex(Evaluator):
    type = "regex"
    Options = RegexOptions

    def __init__(self, options: Options, base_dir: Path) -> None:
        super().__init__(options, base_dir)
        o: RegexOptions = options  # type: ignore[assignment]
        self.rx = re.compile(o.pattern, re.IGNORECASE if o.ignore_case else 0)

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: RegexOptions = self.options  # type: ignore[assignment]
        text = case.output or ""
        m = self.rx.fullmatch(text.strip()) if o.full else self.rx.search(text)
        ok = (m is None) if o.negate else (m is not None)
        if ok:
            return Outcome.verdict(True)
        return Outcome.verdict(False, f"the answer {'matches' if o.negate else 'does not match'} /{o.pattern}/")


# ---- structure -----------------------------------------------------------------------------

@register_evaluator
class ValidJSON(Evaluator):
    type = "json"

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        try:
            value = json.loads(unfence(case.output or ""))
        except ValueError as exc:
            return Outcome.verdict(False, f"the answer is not valid JSON ({exc})")
        return self.check(value)

    def check(self, value: Any) -> Outcome:
        """What the parsed answer must also satisfy (here: nothing more)."""
        return Outcome.verdict(True)


class SchemaOptions(Options):
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    schema_file: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one(self) -> "SchemaOptions":
        if (self.schema_ is None) == (self.schema_file is None):
            raise ValueError("give exactly one of 'schema' (inline) or 'schema_file'")
        return self


@register_evaluator
class JSONSchema(ValidJSON):
    type = "json_schema"
    Options = SchemaOptions

    def __init__(self, options: Options, base_dir: Path) -> None:
        super().__init__(options, base_dir)
        import jsonschema

        o: SchemaOptions = options  # type: ignore[assignment]
        schema = o.schema_
        if schema is None:
            path = base_dir / str(o.schema_file)
            try:
                schema = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"json_schema: cannot read schema_file {path}: {exc}") from None
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"json_schema: the schema is invalid: {exc.message}") from None
        self.validator = cls(schema)

    def check(self, value: Any) -> Outcome:
        errors = sorted(self.validator.iter_errors(value), key=lambda e: list(e.path))
        if not errors:
            return Outcome.verdict(True)
        e = errors[0]
        where = "/".join(str(p) for p in e.path) or "(root)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return Outcome.verdict(False, f"schema: at {where}: {e.message}{more}")


class LengthOptions(Options):
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)
    unit: Literal["chars", "words"] = "chars"

    @model_validator(mode="after")
    def _bounds(self) -> "LengthOptions":
        if self.min is None and self.max is None:
            raise ValueError("give 'min', 'max' or both")
        return self


@register_evaluator
class Length(Evaluator):
    type = "length"
    Options = LengthOptions

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: LengthOptions = self.options  # type: ignore[assignment]
        text = case.output or ""
        n = len(text.split()) if o.unit == "words" else len(text)
        if o.min is not None and n < o.min:
            return Outcome.verdict(False, f"{n} {o.unit}, fewer than {o.min}")
        if o.max is not None and n > o.max:
            return Outcome.verdict(False, f"{n} {o.unit}, more than {o.max}")
        return Outcome.verdict(True)


# ---- embeddings ----------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]")


class HashingEmbedder:
    """A light built-in embedder: character 3- to 5-grams and words, hashed (signed) into
    a fixed number of dimensions, log-scaled and L2-normalised. Lexical, not semantic —
    good for "close to the reference wording"; use an embeddings alias for meaning."""

    def __init__(self, dim: int = 2048) -> None:
        self.dim = dim

    def vector(self, text: str) -> Any:
        import numpy as np

        t = " " + " ".join(_PUNCT.sub(" ", text.casefold()).split()) + " "
        counts: dict[int, float] = {}
        grams = [t[i:i + n] for n in (3, 4, 5) for i in range(max(0, len(t) - n + 1))]
        grams += t.split()
        for g in grams:
            h = zlib.crc32(g.encode())
            idx = h % self.dim
            counts[idx] = counts.get(idx, 0.0) + (1.0 if (h >> 31) & 1 else -1.0)
        v = np.zeros(self.dim)
        if counts:
            keys = np.fromiter(counts.keys(), dtype=np.int64)
            vals = np.fromiter(counts.values(), dtype=float)
            v[keys] = np.sign(vals) * np.log1p(np.abs(vals))
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    async def similarity(self, a: str, b: str) -> float:
        return float(self.vector(a) @ self.vector(b))


class AliasEmbedder:
    """Embeddings from a configured alias (through the gateway); cosine similarity."""

    def __init__(self, caller: Any, alias: str) -> None:
        self.caller, self.alias = caller, alias

    async def similarity(self, a: str, b: str) -> float:
        va, vb = await self.caller.embed(self.alias, [a, b])
        dot = sum(x * y for x, y in zip(va, vb))
        na = math.sqrt(sum(x * x for x in va))
        nb = math.sqrt(sum(y * y for y in vb))
        return dot / (na * nb) if na and nb else 0.0


class SimilarityOptions(Options):
    value: str | None = None  # default: the expected output
    threshold: float = Field(0.8, ge=-1, le=1)
    embedder: str = "hashing"  # or the name of an embeddings alias


@register_evaluator
class Similarity(Evaluator):
    type = "similarity"
    Options = SimilarityOptions

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: SimilarityOptions = self.options  # type: ignore[assignment]
        want = o.value if o.value is not None else case.expected
        if want is None:
            return Outcome.err("no reference to compare with (set 'value' or give the case an expected output)")
        try:
            sim = await ctx.embedder(o.embedder).similarity(case.output or "", _text_of(want))
        except Exception as exc:
            return Outcome.err(f"embedding failed: {getattr(exc, 'message', None) or exc}")
        ok = sim >= o.threshold
        return Outcome(passed=ok, score=max(0.0, sim),
                       reason=None if ok else f"similarity {sim:.3f} below {o.threshold}")


# ---- cost and latency ----------------------------------------------------------------------

class _AtMost(Evaluator):
    """Passes when a measurement of the call (the ``measure`` field of the case) is at most
    the ``limit`` option; an unknown measurement is an error."""

    measure: ClassVar[str]
    limit: ClassVar[str]
    unknown: ClassVar[str]  # the error when the measurement is unknown
    over: ClassVar[str]  # the reason when it is over, with {value} and {limit}

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        value, limit = getattr(case, self.measure), getattr(self.options, self.limit)
        if value is None:
            return Outcome.err(self.unknown)
        ok = value <= limit
        return Outcome.verdict(ok, None if ok else self.over.format(value=value, limit=limit))


class CostOptions(Options):
    max_usd: float = Field(ge=0)


@register_evaluator
class Cost(_AtMost):
    type = "cost"
    Options = CostOptions
    measure, limit = "cost_usd", "max_usd"
    unknown = "the call's cost is unknown (no price for the model in the config)"
    over = "cost ${value:.6f} above ${limit}"


class LatencyOptions(Options):
    max_ms: float = Field(gt=0)


@register_evaluator
class Latency(_AtMost):
    type = "latency"
    Options = LatencyOptions
    measure, limit = "latency_ms", "max_ms"
    unknown = "the call's latency is unknown"
    over = "latency {value:.0f} ms above {limit:g} ms"


# ---- custom Python -------------------------------------------------------------------------

class PythonOptions(Options):
    function: str  # "package.module:func" or "path/to/file.py:func" (relative to EVAL.yaml)
    threshold: float = 0.5  # a returned score passes at or above this
    args: dict[str, Any] = Field(default_factory=dict)  # passed as keyword arguments


def load_function(ref: str, base_dir: Path) -> Callable[..., Any]:
    mod_name, sep, attr = ref.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"python: function must be 'module:function' or 'file.py:function', not {ref!r}")
    try:
        if mod_name.endswith(".py"):
            path = (base_dir / mod_name).resolve()
            key = "shipyard_eval_" + str(abs(hash(str(path))))
            module = sys.modules.get(key)
            if module is None:
                spec = importlib.util.spec_from_file_location(key, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[key] = module
                spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
        fn = getattr(module, attr)
    except (ImportError, AttributeError, OSError, SyntaxError) as exc:
        raise ConfigError(f"python: cannot load {ref!r}: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"python: {ref!r} is not callable")
    return fn


def outcome_from(value: Any, threshold: float = 0.5) -> Outcome:
    """An Outcome from what a custom function returned: bool, a number (a score), a
    (passed, reason) tuple, a dict with pass/passed, score, reason, or an Outcome."""
    if isinstance(value, Outcome):
        return value
    if isinstance(value, bool):
        return Outcome.verdict(value)
    if isinstance(value, (int, float)):
        return Outcome(passed=value >= threshold, score=float(value))
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], bool):
        return Outcome.verdict(value[0], str(value[1]) if value[1] is not None else None)
    if isinstance(value, dict):
        passed = value.get("pass", value.get("passed"))
        score = value.get("score")
        if passed is None and score is None:
            return Outcome.err("the function returned a dict without 'pass' or 'score'")
        if passed is None:
            passed = float(score) >= threshold
        return Outcome(passed=bool(passed), score=float(score) if score is not None else (1.0 if passed else 0.0),
                       reason=value.get("reason"))
    return Outcome.err(f"the function returned {type(value).__name__}; expected bool, a number or a dict")


@register_evaluator
class PythonFunction(Evaluator):
    type = "python"
    Options = PythonOptions

    def __init__(self, options: Options, base_dir: Path) -> None:
        super().__init__(options, base_dir)
        o: PythonOptions = options  # type: ignore[assignment]
        self.fn = load_function(o.function, base_dir)
        params = inspect.signature(self.fn).parameters
        self.wants_case = len(params) >= 2 or "case" in params

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: PythonOptions = self.options  # type: ignore[assignment]
        try:
            args = (case.output, case) if self.wants_case else (case.output,)
            value = self.fn(*args, **o.args)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return Outcome.err(f"{o.function} raised {type(exc).__name__}: {exc}")
        return outcome_from(value, o.threshold)


# ---- LLM as judge --------------------------------------------------------------------------

JUDGE_SYSTEM_PASS_FAIL = (
    "You are a careful, impartial evaluator. You are given a criterion, the input an AI assistant "
    "received, possibly a reference answer, and the assistant's answer. Decide whether the answer meets "
    "the criterion. Reply with only a JSON object: "
    '{"reason": "one or two sentences", "pass": true or false}.'
)
JUDGE_SYSTEM_SCORE = (
    "You are a careful, impartial evaluator. You are given a criterion, the input an AI assistant "
    "received, possibly a reference answer, and the assistant's answer. Grade how well the answer meets "
    "the criterion. Reply with only a JSON object: "
    '{{"reason": "one or two sentences", "score": an integer from {lo} to {hi}}}.'
)
PAIRWISE_SYSTEM = (
    "You are a careful, impartial evaluator. You are given a criterion, the input, and two answers, "
    "A and B. Decide which answer better meets the criterion; answer 'tie' when neither is better. "
    "Do not let the order or length of the answers influence you. Reply with only a JSON object: "
    '{"reason": "one or two sentences", "winner": "A" or "B" or "tie"}.'
)
MAX_FIELD = 8000


class JudgeReplyError(ValueError):
    pass


def _clip(text: str, n: int = MAX_FIELD) -> str:
    return text if len(text) <= n else text[: n // 2] + "\n[...]\n" + text[-n // 2:]


def render_input(item: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> str:
    msgs = messages or (item.get("input") or {}).get("messages")
    if msgs:
        lines = []
        for m in msgs:
            c = m.get("content")
            if isinstance(c, list):
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            lines.append(f"{m.get('role')}: {c if c is not None else ''}")
        return _clip("\n".join(lines))
    return _clip(json.dumps((item.get("input") or {}).get("variables") or {}, ensure_ascii=False, indent=1))


def parse_json_reply(content: str) -> dict[str, Any]:
    """The JSON object in a judge's reply (prose or a code fence around it is tolerated)."""
    start, end = content.find("{"), content.rfind("}")
    if start == -1 or end <= start:
        raise JudgeReplyError("the judge's reply has no JSON object")
    try:
        data = json.loads(content[start:end + 1])
    except ValueError:
        raise JudgeReplyError("the judge's reply is not valid JSON") from None
    if not isinstance(data, dict):
        raise JudgeReplyError("the judge's reply is not a JSON object")
    return data


def parse_pass_fail(content: str) -> tuple[bool, str]:
    data = parse_json_reply(content)
    for key in ("pass", "passed", "verdict", "result"):
        if key in data:
            v = data[key]
            if isinstance(v, bool):
                return v, str(data.get("reason") or "")
            if isinstance(v, str) and v.strip().lower() in ("pass", "passed", "true", "yes", "fail", "failed",
                                                            "false", "no"):
                return v.strip().lower() in ("pass", "passed", "true", "yes"), str(data.get("reason") or "")
            raise JudgeReplyError(f"the judge's verdict {key}={v!r} is neither pass nor fail")
    raise JudgeReplyError("the judge's reply has no 'pass' field")


def parse_score(content: str, lo: float, hi: float) -> tuple[float, str]:
    data = parse_json_reply(content)
    v = data.get("score")
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise JudgeReplyError("the judge's reply has no numeric 'score'")
    try:
        s = float(v)
    except ValueError:
        raise JudgeReplyError(f"the judge's score {v!r} is not a number") from None
    if not lo <= s <= hi or math.isnan(s):
        raise JudgeReplyError(f"the judge's score {s:g} is outside {lo:g}..{hi:g}")
    return s, str(data.get("reason") or "")


class JudgeOptions(Options):
    model: str  # the judge's alias
    rubric: str = Field(min_length=1)
    mode: Literal["pass_fail", "score"] = "pass_fail"
    scale: tuple[int, int] = (1, 5)
    pass_score: float | None = None  # score mode: passes at or above (default: 3/4 up the scale)
    include_input: bool = True
    include_expected: bool = True
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0})
    system: str | None = None

    @model_validator(mode="after")
    def _scale(self) -> "JudgeOptions":
        lo, hi = self.scale
        if hi <= lo:
            raise ValueError("scale: the maximum must be above the minimum")
        return self


class _ModelGraded(Evaluator):
    async def _ask(self, ctx: EvalContext, case: Case, messages: list[dict[str, Any]]) -> Any:
        """The judge's reply (asked for a JSON object), recorded in the case's trace."""
        if ctx.caller is None:
            raise RuntimeError("this evaluator needs a model caller")
        o: JudgeOptions | PairwiseOptions = self.options  # type: ignore[assignment]
        params = {"response_format": {"type": "json_object"}, **o.params}
        meta = {"eval_run": ctx.run_id, "eval_evaluator": self.name}
        return await ctx.caller.chat(o.model, messages, params, trace_id=case.trace_id or _new_trace(),
                                     parent_span_id=case.span_id, metadata=meta, name=f"judge {self.name}")


def _new_trace() -> str:
    from ..tracing.span import new_trace_id

    return new_trace_id()


@register_evaluator
class Judge(_ModelGraded):
    """LLM-as-judge with a rubric; its call is recorded in the case's trace."""

    type = "judge"
    Options = JudgeOptions

    def prompt(self, case: Case) -> list[dict[str, Any]]:
        o: JudgeOptions = self.options  # type: ignore[assignment]
        lo, hi = o.scale
        system = o.system or (JUDGE_SYSTEM_PASS_FAIL if o.mode == "pass_fail" else
                              JUDGE_SYSTEM_SCORE.format(lo=lo, hi=hi))
        parts = [f"Criterion:\n{o.rubric}"]
        if o.include_input:
            parts.append(f"Input:\n<<<\n{render_input(case.item, case.messages)}\n>>>")
        if o.include_expected and case.expected is not None:
            parts.append(f"Reference answer:\n<<<\n{_clip(_text_of(case.expected))}\n>>>")
        parts.append(f"Answer to grade:\n<<<\n{_clip(case.output or '')}\n>>>")
        return [{"role": "system", "content": system}, {"role": "user", "content": "\n\n".join(parts)}]

    async def evaluate(self, case: Case, ctx: EvalContext) -> Outcome:
        o: JudgeOptions = self.options  # type: ignore[assignment]
        res = await self._ask(ctx, case, self.prompt(case))
        if res.error:
            return Outcome(error=f"judge call failed: {res.error}", cost_usd=res.cost_usd)
        content = res.text or ""
        try:
            if o.mode == "pass_fail":
                ok, reason = parse_pass_fail(content)
                return Outcome(passed=ok, score=1.0 if ok else 0.0, reason=reason, cost_usd=res.cost_usd)
            lo, hi = o.scale
            raw, reason = parse_score(content, lo, hi)
            pass_at = o.pass_score if o.pass_score is not None else math.ceil(lo + 0.75 * (hi - lo))
            return Outcome(passed=raw >= pass_at, score=(raw - lo) / (hi - lo),
                           reason=f"{raw:g}/{hi}: {reason}" if reason else f"{raw:g}/{hi}", cost_usd=res.cost_usd)
        except JudgeReplyError as exc:
            return Outcome(error=f"{exc}: {_short(content, 120)!r}", cost_usd=res.cost_usd)


class PairwiseOptions(Options):
    model: str
    rubric: str = "Which answer is more helpful, correct and clear?"
    against: str | None = None  # the baseline variant (default: with two variants, the first)
    pairs: list[tuple[str, str]] | None = None  # or explicit (baseline, other) variant pairs
    swap: bool = True  # ask in both orders; disagreeing verdicts are a tie (position bias)
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0})


def parse_winner(content: str) -> tuple[str, str]:
    data = parse_json_reply(content)
    w = data.get("winner")
    if not isinstance(w, str) or w.strip().lower() not in ("a", "b", "tie"):
        raise JudgeReplyError(f"the judge's winner {w!r} is not A, B or tie")
    return w.strip().lower(), str(data.get("reason") or "")


@register_evaluator
class Pairwise(_ModelGraded):
    """Which of two answers to the same case is better (run after both variants answered)."""

    type = "pairwise"
    Options = PairwiseOptions
    pairwise = True

    def prompt(self, item: dict[str, Any], first: str, second: str) -> list[dict[str, Any]]:
        o: PairwiseOptions = self.options  # type: ignore[assignment]
        user = (f"Criterion:\n{o.rubric}\n\nInput:\n<<<\n{render_input(item)}\n>>>\n\n"
                f"Answer A:\n<<<\n{_clip(first)}\n>>>\n\nAnswer B:\n<<<\n{_clip(second)}\n>>>")
        return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]

    async def compare(self, item: dict[str, Any], a: str, b: str, ctx: EvalContext,
                      trace_id: str | None = None) -> tuple[str | None, str | None, str | None]:
        """(winner 'a' | 'b' | 'tie', reason, error) for answers a and b."""
        o: PairwiseOptions = self.options  # type: ignore[assignment]
        case = Case(item=item, output=None, trace_id=trace_id)
        orders = [(a, b, False)] + ([(b, a, True)] if o.swap else [])
        results = await asyncio.gather(*(self._ask(ctx, case, self.prompt(item, x, y)) for x, y, _ in orders))
        verdicts = []
        reasons = []
        for (_, _, swapped), res in zip(orders, results):
            if res.error:
                return None, None, f"judge call failed: {res.error}"
            try:
                w, reason = parse_winner(res.text or "")
            except JudgeReplyError as exc:
                return None, None, f"{exc}: {_short(res.text or '', 120)!r}"
            if swapped and w != "tie":
                w = "a" if w == "b" else "b"
            verdicts.append(w)
            reasons.append(reason)
        if all(v == verdicts[0] for v in verdicts):
            return verdicts[0], reasons[0], None
        return "tie", "the verdict changed with the order of the answers (position bias): a tie", None


# ---- building from config ------------------------------------------------------------------

def _fmt_error(exc: ValidationError, where: str) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}")
    return "; ".join(parts)


def build_evaluator(spec: Any, where: str, base_dir: Path) -> Evaluator:
    """An evaluator from a config entry: a dict with ``type`` (or just a type name)."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ConfigError(f"{where}: an evaluator is a mapping with a 'type' ({', '.join(sorted(REGISTRY))})")
    cls = REGISTRY.get(spec["type"])
    if cls is None:
        raise ConfigError(f"{where}.type: unknown evaluator type {spec['type']!r} "
                          f"(known: {', '.join(sorted(REGISTRY))})")
    try:
        options = cls.Options.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(_fmt_error(exc, where)) from None
    return cls(options, base_dir)


def build_evaluators(specs: list[Any], base_dir: Path, where: str = "evaluators") -> list[Evaluator]:
    out: list[Evaluator] = []
    names: set[str] = set()
    for i, spec in enumerate(specs):
        ev = build_evaluator(spec, f"{where}[{i}]", base_dir)
        if ev.name in names:
            raise ConfigError(f"{where}[{i}].name: two evaluators are named {ev.name!r}; give each a unique 'name'")
        names.add(ev.name)
        out.append(ev)
    return out
