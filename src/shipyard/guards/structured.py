"""Structured output: JSON, JSON Schema and Pydantic validation, normally with re-ask.

* ``json``: the answer parses as JSON.
* ``json_schema``: the answer validates against ``schema`` (from the guard's options) or,
  when none is configured, against the request's own ``response_format`` (a
  ``json_schema`` format, or plain JSON for ``json_object``). Requests with neither pass.
* ``pydantic``: the answer validates as ``model`` (``"package.module:Class"``, imported
  at start-up), or as the ``response_model`` the library was given.

An answer wrapped in a Markdown code fence is accepted and unwrapped (models do that).
The error that goes back to the model on a re-ask names the failing path and rule.
Compiled validators are cached per schema.
"""

from __future__ import annotations

import importlib
import json
import re
from collections import OrderedDict
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .base import Guard, GuardContext, GuardOptions, Verdict

_FENCE_RE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(.*?)\n?```\s*$", re.S)
_CACHE: OrderedDict[bytes, Any] = OrderedDict()
_CACHE_SIZE = 256


class SchemaError(ValueError):
    pass


def validator_for(schema: dict[str, Any]) -> Any:
    """A compiled jsonschema validator, cached by the schema's canonical JSON."""
    import jsonschema

    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    v = _CACHE.get(key)
    if v is not None:
        _CACHE.move_to_end(key)
        return v
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"not a valid JSON Schema: {exc.message}") from None
    v = cls(schema, format_checker=cls.FORMAT_CHECKER)
    _CACHE[key] = v
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return v


def unfence(text: str) -> str:
    m = _FENCE_RE.match(text)
    return m.group(1) if m else text


def parse_json(text: str) -> tuple[Any, str | None, str]:
    """(value, error, the JSON text actually parsed)."""
    raw = unfence(text)
    try:
        return orjson.loads(raw), None, raw
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw), None, raw  # NaN/Infinity and other leniencies
        except json.JSONDecodeError as exc:
            return None, f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})", raw


def schema_errors(validator: Any, value: Any, limit: int = 3) -> list[str]:
    errors = sorted(validator.iter_errors(value), key=lambda e: (len(e.path), list(map(str, e.path))))
    out = []
    for e in errors[:limit]:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)
        msg = e.message if len(e.message) <= 200 else e.message[:200] + "…"
        out.append(f"{path}: {msg}")
    return out


def request_schema(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """('json_schema' | 'json_object' | None, schema) from a request's response_format."""
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None, None
    kind = rf.get("type")
    if kind == "json_schema":
        js = rf.get("json_schema") or {}
        schema = js.get("schema")
        return kind, schema if isinstance(schema, dict) else None
    if kind == "json_object":
        return kind, None
    return None, None


class _Structured(Guard):
    stages: ClassVar[frozenset[str]] = frozenset({"output"})
    actions: ClassVar[frozenset[str]] = frozenset({"reask", "block", "flag", "fallback"})
    default_action: ClassVar[str] = "reask"
    block_code: ClassVar[str] = "output_validation_failed"
    structured: ClassVar[bool] = True

    def _verdict_json(self, text: str) -> tuple[Verdict | None, Any, str]:
        value, err, raw = parse_json(text)
        if err:
            return Verdict(False, 1.0, err, {"error": "json"}), None, raw
        return None, value, raw

    @staticmethod
    def _passed(text: str, raw: str, **details: Any) -> Verdict:
        v = Verdict(True, 0.0, "", details)
        if raw != text:  # unwrapped from a code fence
            v.text = raw
            v.details["unfenced"] = True
        return v

    def reask_message(self, verdict: Verdict) -> str:
        if self.options.message:
            return self.options.message
        return ("Your previous answer did not validate: " + verdict.reason
                + ". Reply again with only the corrected JSON, no explanations and no code fences.")


class JSONGuard(_Structured):
    name: ClassVar[str] = "json"

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        bad, _value, raw = self._verdict_json(text)
        return bad or self._passed(text, raw)


class JSONSchemaOptions(GuardOptions):
    # "schema" in config (the attribute name is taken on pydantic's BaseModel)
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _valid(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            validator_for(v)  # raises SchemaError (a ValueError) with the reason
        return v



class JSONSchemaGuard(_Structured):
    name: ClassVar[str] = "json_schema"
    Options: ClassVar[type[GuardOptions]] = JSONSchemaOptions

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        schema = options.schema_  # type: ignore[attr-defined]
        self.validator = validator_for(schema) if schema is not None else None

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        validator = self.validator
        kind = "schema"
        if validator is None:
            kind, schema = request_schema(ctx.body) if ctx is not None else (None, None)
            if kind is None:
                return Verdict(True, None, "", {"skipped": "no schema and no response_format"})
            if schema is not None:
                try:
                    validator = validator_for(schema)
                except SchemaError as exc:
                    return Verdict(False, 1.0, str(exc), {"error": "schema"})
        bad, value, raw = self._verdict_json(text)
        if bad:
            return bad
        if validator is not None:
            errors = schema_errors(validator, value)
            if errors:
                return Verdict(False, 1.0, "schema violations: " + "; ".join(errors),
                               {"error": "schema", "violations": len(errors)})
        return self._passed(text, raw, checked=kind)


class PydanticOptions(GuardOptions):
    model: str | None = None  # "package.module:Class"

    @field_validator("model")
    @classmethod
    def _importable(cls, v: str | None) -> str | None:
        if v is not None:
            load_model(v)
        return v


def load_model(path: str) -> type[BaseModel]:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"{path!r}: expected 'package.module:ClassName'")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ValueError(f"{path!r} is not a pydantic model class")
    return obj


class PydanticGuard(_Structured):
    name: ClassVar[str] = "pydantic"
    Options: ClassVar[type[GuardOptions]] = PydanticOptions
    client_safe: ClassVar[bool] = False

    def __init__(self, options: GuardOptions, stage: Any, model_cls: type[BaseModel] | None = None) -> None:
        super().__init__(options, stage)
        path = options.model  # type: ignore[attr-defined]
        self.model_cls = model_cls or (load_model(path) if path else None)
        if self.model_cls is None:
            raise ValueError("'model' is required ('package.module:ClassName')")

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        bad, _value, raw = self._verdict_json(text)
        if bad:
            return bad
        try:
            self.model_cls.model_validate_json(raw)  # type: ignore[union-attr]
        except ValidationError as exc:
            errs = []
            for e in exc.errors()[:3]:
                path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
                errs.append(f"{path}: {e['msg']}")
            return Verdict(False, 1.0, f"does not validate as {self.model_cls.__name__}: " + "; ".join(errs),
                           {"error": "pydantic", "violations": exc.error_count()})
        return self._passed(text, raw, model=self.model_cls.__name__)
