"""Prompt templates: validation, rendering and diffs.

A prompt version is a list of chat messages whose text is a Jinja2 template, the alias it
runs on (``model``), default request parameters and an optional JSON Schema for the answer.
Templates run in Jinja2's ``SandboxedEnvironment`` (no access to Python internals from a
template: prompts are data edited through an API) with ``StrictUndefined`` (a missing
variable is an error, never an empty string); the variables a template needs are found
with ``jinja2.meta.find_undeclared_variables`` so a request missing some gets a 400 that
lists them all.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from ..errors import GatewayError, InvalidRequest, NotFound
from ..types import ROLES, check_json_schema
from .config import LABEL_RE, NAME_RE

PREFIX = "prompt:"
RESERVED_LABELS = frozenset({"latest"})
FORBIDDEN_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "metadata"})
MAX_TEMPLATE_CHARS = 200_000
_UNDEFINED = re.compile(r"^'([^']+)' is undefined")

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param, code="invalid_prompt")


# ---- references -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PromptRef:
    name: str
    label: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.label}" if self.label else self.name


def parse_ref(text: str, default_label: str = "production") -> PromptRef:
    """``name``, ``name@label``, ``name@3``, ``name@latest`` (an optional ``prompt:`` prefix)."""
    text = text.removeprefix(PREFIX)
    name, at, sel = text.partition("@")
    if not NAME_RE.match(name):
        raise _bad("model", f"{text!r} is not a prompt reference; use prompt:NAME[@LABEL|@VERSION]")
    if not at:
        return PromptRef(name, label=default_label) if default_label != "latest" else PromptRef(name, "latest")
    if sel.isdigit():
        return PromptRef(name, version=int(sel))
    if not LABEL_RE.match(sel):
        raise _bad("model", f"{sel!r} is neither a version number nor a label")
    return PromptRef(name, label=sel)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _bad("name", "a prompt name is 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return name


def check_label(label: Any) -> str:
    if not isinstance(label, str) or not LABEL_RE.match(label) or label.isdigit():
        raise _bad("label", "a label is lower-case letters, digits, '_' or '-' (not only digits)")
    if label in RESERVED_LABELS:
        raise _bad("label", f"'{label}' is reserved (it always means the newest version)")
    return label


# ---- templates ------------------------------------------------------------------------
def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _compile(text: str, where: str) -> tuple[Any, set[str]]:
    if len(text) > MAX_TEMPLATE_CHARS:
        raise _bad(where, f"template longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        ast = _env.parse(text)
        return _env.from_string(ast), set(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        raise _bad(where, f"template syntax error on line {exc.lineno}: {exc.message}") from None


@dataclass(slots=True)
class PromptVersion:
    name: str
    version: int
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    response_schema: dict[str, Any] | None = None
    variables: list[str] = field(default_factory=list)
    note: str | None = None
    created_at: float | None = None
    created_by: str | None = None
    _compiled: list[list[Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "model": self.model, "messages": self.messages,
                "params": self.params, "response_schema": self.response_schema, "variables": self.variables,
                "note": self.note, "created_at": self.created_at, "created_by": self.created_by}

    def compiled(self) -> list[list[Any]]:
        if self._compiled is None:
            self._compiled = [[_compile(t, f"messages[{i}].content")[0] for t in _texts(m.get("content"))]
                              for i, m in enumerate(self.messages)]
        return self._compiled

    def _render_all(self, variables: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for m, templates in zip(self.messages, self.compiled()):
            rendered = [t.render(variables) for t in templates]
            msg = {k: v for k, v in m.items() if k != "content"}
            if isinstance(m.get("content"), str):
                msg["content"] = rendered[0]
            else:
                it = iter(rendered)
                msg["content"] = [{**p, "text": next(it)} if isinstance(p, dict) and isinstance(p.get("text"), str)
                                  else p for p in m["content"]]
            out.append(msg)
        return out

    def missing(self, variables: dict[str, Any]) -> list[str]:
        """The variables this version cannot do without that ``variables`` lacks. A variable used
        only with ``default(...)`` or under ``is defined`` is optional and not listed."""
        probe, missing = dict(variables), []
        known = set(self.variables)
        for _ in range(len(known) + 1):
            try:
                self._render_all(probe)
                break
            except UndefinedError as exc:
                m = _UNDEFINED.match(exc.message or "")
                name = m.group(1) if m else None
                if name is None or name in probe or name not in known:
                    break
                missing.append(name)
                probe[name] = Undefined(name=name)  # lenient from here on: find the next one
            except Exception:
                break
        return sorted(missing)

    def render(self, variables: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages with ``variables`` filled in; a 400 listing every missing one."""
        if not isinstance(variables, dict):
            raise _bad("metadata.variables", "must be an object of template variables")
        try:
            return self._render_all(variables)
        except UndefinedError as exc:
            missing = self.missing(variables)
            detail = ", ".join(missing) if missing else str(exc.message)
            raise InvalidRequest(
                f"Prompt '{self.name}' version {self.version} is missing template variables: {detail}. "
                f"Pass them in metadata.variables.",
                param="metadata.variables", code="missing_variables",
                details={"missing_variables": missing, "prompt": self.name, "version": self.version},
            ) from None
        except SecurityError as exc:
            raise GatewayError(f"Prompt '{self.name}' version {self.version}: the template did something the "
                               f"sandbox forbids ({exc}).", status=400, type="invalid_request_error",
                               code="template_error") from None
        except Exception as exc:  # a filter raising on bad input, say
            raise InvalidRequest(f"Prompt '{self.name}' version {self.version} could not be rendered: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}", param="metadata.variables",
                                 code="template_error") from None

    def response_format(self) -> dict[str, Any] | None:
        if self.response_schema is None:
            return None
        name = re.sub(r"[^A-Za-z0-9_-]", "_", self.name)[:64]
        return {"type": "json_schema", "json_schema": {"name": name, "schema": self.response_schema}}


def validate_version(body: Any) -> dict[str, Any]:
    """A new version's fields from an API/CLI body: {model, messages, params?, response_schema?,
    note?}; 400 naming the field when something is wrong. Returns the normalised fields plus
    ``variables`` (what the templates need)."""
    if not isinstance(body, dict):
        raise _bad("body", "must be an object with 'model' and 'messages'")
    unknown = set(body) - {"model", "messages", "params", "response_schema", "note", "labels", "description", "by",
                           "name"}
    if unknown:
        raise _bad(min(unknown), "unknown field")
    model = body.get("model")
    if not isinstance(model, str) or not model or model.startswith(PREFIX):
        raise _bad("model", "the model alias this prompt runs on (a non-empty string, not a prompt)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "a non-empty array of {role, content} messages")
    variables: set[str] = set()
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role", f"must be one of {sorted(ROLES)}")
        content = m.get("content")
        if not isinstance(content, (str, list)):
            raise _bad(f"messages[{i}].content", "must be a string template or an array of content parts")
        for t in _texts(content):
            variables |= _compile(t, f"messages[{i}].content")[1]
        clean.append(dict(m))
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise _bad("params", "must be an object of request parameters")
    bad = FORBIDDEN_PARAMS & set(params)
    if bad:
        raise _bad(f"params.{min(bad)}", "cannot be set by a prompt")
    schema = body.get("response_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise _bad("response_schema", "must be a JSON Schema object")
        check_json_schema(schema, "response_schema")
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise _bad("note", "must be a string")
    return {"model": model, "messages": clean, "params": params, "response_schema": schema,
            "variables": sorted(variables), "note": note}


# ---- diffs ----------------------------------------------------------------------------
def canonical_text(v: PromptVersion) -> list[str]:
    """A line-oriented view of a version, for unified diffs."""
    lines = [f"model: {v.model}"]
    if v.params:
        lines.append("params: " + orjson.dumps(v.params, option=orjson.OPT_SORT_KEYS).decode())
    if v.response_schema is not None:
        lines.append("response_schema:")
        lines += ["  " + x for x in orjson.dumps(v.response_schema, option=orjson.OPT_INDENT_2
                                                  | orjson.OPT_SORT_KEYS).decode().splitlines()]
    for i, m in enumerate(v.messages):
        lines.append(f"--- messages[{i}] ({m.get('role')})")
        for t in _texts(m.get("content")):
            lines += t.splitlines() or [""]
    return lines


def unified_diff(a: PromptVersion, b: PromptVersion, context: int = 3) -> str:
    return "\n".join(difflib.unified_diff(canonical_text(a), canonical_text(b), fromfile=f"{a.name}@{a.version}",
                                         tofile=f"{b.name}@{b.version}", lineterm="", n=context))


def not_found_prompt(name: str) -> NotFound:
    return NotFound(f"Prompt '{name}' does not exist.", param="model", code="prompt_not_found")
