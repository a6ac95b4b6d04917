"""Application spans: ``@observe`` records the steps of an LLM application as spans in
the same traces as the gateway's own ``llm`` spans.

``observe`` is a decorator (sync, async, generator and async-generator functions) and a
context manager (``with observe("step") as span:``). Each observed step becomes one span:
its inputs (the call's arguments bound by name), its output (the return value), its
error (type and message; the exception is re-raised) and its timing. A context variable
carries the current span, so nested observed steps become its children and gateway calls
made inside it join its trace (``Engine.new_span`` reads ``current_observation()``).

Spans are recorded once, when the step ends, into a sink: the recorder set by
``configure(store=...)``, else the recorder of the most recently created live
``Gateway`` in this process, else nowhere (one warning). Nothing here runs unless a step
is observed: with no current span the engine does exactly what it did before.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import datetime as _dt
import enum
import functools
import inspect
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar, overload

from .context import format_traceparent, parse_traceparent
from .recorder import Recorder
from .span import KINDS, Span, new_span_id, new_trace_id

log = logging.getLogger("shipyard.observe")

F = TypeVar("F", bound=Callable[..., Any])

_CURRENT: ContextVar[Observation | None] = ContextVar("shipyard_observation", default=None)

DOC_IDS = "retrieved_document_ids"
REDACTED = "[REDACTED]"
_MAX_DEPTH = 8
_MAX_ITEMS = 1000  # per list/dict, and yielded items kept for a generator's output
_MAX_STR = 32_000
_MAX_REPR = 2_000
_MAX_DOC_IDS = 1000
_SENSITIVE = frozenset({"api_key", "apikey", "password", "passwd", "secret", "token", "access_token",
                        "refresh_token", "authorization", "client_secret", "private_key"})
_SENSITIVE_SUFFIXES = ("_api_key", "_apikey", "_secret", "_password", "_token")
_LINEAGE_FIELDS = frozenset({"name", "session_id", "user_id", "model", "provider", "response_model",
                             "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "ttft_ms"})


def current_observation() -> Observation | None:
    """The span of the observed step running in this context, or None."""
    return _CURRENT.get()


# ---- JSON-safe capture ----------------------------------------------------------------------

def _sensitive(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    k = key.lower()
    return k in _SENSITIVE or k.endswith(_SENSITIVE_SUFFIXES)


def _repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__qualname__} (repr failed)>"
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "…"


def _more(n: int) -> str:
    return f"…[{n} more items omitted by shipyard]"


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of ``value``: containers are copied (so later mutation by the app
    does not change a recorded span), unknown objects become their ``repr``, sizes are
    capped, and values under secret-looking keys are replaced by ``[REDACTED]``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_STR else value[:_MAX_STR] + f"…[{len(value) - _MAX_STR} chars omitted]"
    if depth >= _MAX_DEPTH:
        return _repr(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= _MAX_ITEMS:
                out["…"] = _more(len(value) - _MAX_ITEMS)
                break
            key = k if isinstance(k, str) else _repr(k) if not isinstance(k, (int, float, bool)) else str(k)
            out[key] = REDACTED if _sensitive(k) else jsonable(v, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v, depth + 1) for _, v in zip(range(_MAX_ITEMS), value)]
        if len(value) > _MAX_ITEMS:
            items.append(_more(len(value) - _MAX_ITEMS))
        return items
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{type(value).__name__}: {len(value)} bytes>"
    if isinstance(value, enum.Enum):
        return jsonable(value.value, depth + 1)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if callable(getattr(type(value), "model_dump", None)):  # pydantic v2 (openai SDK objects)
        try:
            return jsonable(value.model_dump(mode="json"), depth + 1)
        except Exception:
            return _repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: (REDACTED if _sensitive(f.name) else jsonable(getattr(value, f.name, None), depth + 1))
                for f in dataclasses.fields(value)}
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist) and isinstance(getattr(value, "size", None), int) and value.size <= _MAX_ITEMS:
        try:
            return jsonable(tolist(), depth + 1)
        except Exception:
            return _repr(value)
    return _repr(value)


def _doc_id(item: Any) -> str | None:
    if isinstance(item, Mapping):
        for key in ("id", "doc_id", "document_id"):
            v = item.get(key)
            if isinstance(v, (str, int)) and not isinstance(v, bool):
                return str(v)
        return None
    for attr in ("id", "doc_id", "document_id"):
        v = getattr(item, attr, None)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return str(v)
    return None


def document_ids(docs: Iterable[Any]) -> list[str]:
    """Ids of retrieved documents: plain ids (str/int), or dicts/objects with an ``id``,
    ``doc_id`` or ``document_id``."""
    out: list[str] = []
    for d in docs:
        if isinstance(d, (str, int)) and not isinstance(d, bool):
            out.append(str(d))
        else:
            i = _doc_id(d)
            if i is None:
                raise ValueError(f"cannot find a document id in {_repr(d)} (expected id, doc_id or document_id)")
            out.append(i)
        if len(out) >= _MAX_DOC_IDS:
            break
    return out


def _auto_doc_ids(output: Any) -> list[str] | None:
    """Doc ids from a retrieval step's return value when every item carries an id
    (plain strings are taken to be document text, not ids)."""
    if not isinstance(output, (list, tuple)) or not output:
        return None
    ids = [_doc_id(d) for d in output[:_MAX_DOC_IDS]]
    return ids if all(i is not None for i in ids) else None  # type: ignore[return-value]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    try:
        msg = str(exc)
    except Exception:
        msg = "(str failed)"
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "…"


# ---- the span handle ----------------------------------------------------------------------

class Observation:
    """An observed step in progress: what ``with observe(...) as span`` and
    ``observe.current_span()`` return. Settable until the step ends; then it is recorded
    and further changes are ignored (with a warning): recorded spans are immutable."""

    __slots__ = ("_closed", "_docs_seen", "_output_set", "_span", "capture_output", "parent")

    def __init__(self, span: Span, parent: Observation | None, capture_output: bool = True) -> None:
        self._span = span
        self.parent = parent
        self._closed = False
        self._output_set = False
        self._docs_seen: list[str] = []  # doc ids retrieved by finished steps under this one
        self.capture_output = capture_output

    # identity
    @property
    def trace_id(self) -> str:
        return self._span.trace_id

    @property
    def span_id(self) -> str:
        return self._span.span_id

    @property
    def parent_id(self) -> str | None:
        return self._span.parent_id

    @property
    def name(self) -> str:
        return self._span.name

    @property
    def kind(self) -> str:
        return self._span.kind

    @property
    def session_id(self) -> str | None:
        return self._span.session_id

    @property
    def user_id(self) -> str | None:
        return self._span.user_id

    @property
    def attributes(self) -> dict[str, Any]:
        """A copy; use ``set_attribute`` to change them."""
        return dict(self._span.attributes)

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` that makes a downstream call a child of this step."""
        return format_traceparent(self._span.trace_id, self._span.span_id)

    @property
    def recorded(self) -> bool:
        return self._closed

    def _writable(self, what: str) -> bool:
        if self._closed:
            log.warning("observe: %s on span %r after it was recorded is ignored (spans are immutable)",
                        what, self._span.name)
            return False
        return True

    # setters
    def set_attribute(self, key: str, value: Any) -> Observation:
        if self._writable("set_attribute"):
            self._span.attributes[str(key)] = REDACTED if _sensitive(key) else jsonable(value)
        return self

    def set_attributes(self, attributes: Mapping[str, Any]) -> Observation:
        for k, v in attributes.items():
            self.set_attribute(k, v)
        return self

    def set_input(self, value: Any) -> Observation:
        if self._writable("set_input"):
            self._span.input = jsonable(value)
        return self

    def set_output(self, value: Any) -> Observation:
        """Record ``value`` as the output (instead of the function's return value)."""
        if self._writable("set_output"):
            self._span.output = jsonable(value)
            self._output_set = True
        return self

    def set_retrieved_documents(self, docs: Iterable[Any]) -> Observation:
        """Record the ids of retrieved documents (``attributes["retrieved_document_ids"]``).
        They are also copied onto later gateway ``llm`` spans in the same enclosing step,
        so an answer's lineage names the documents it was given."""
        if self._writable("set_retrieved_documents"):
            self._span.attributes[DOC_IDS] = document_ids(docs)
        return self

    def update(self, **fields: Any) -> Observation:
        """Set span fields: name, session_id, user_id (inherited by steps started after),
        and for a hand-made ``llm`` step model, provider, response_model, input_tokens,
        output_tokens, cached_tokens, cost_usd, ttft_ms."""
        unknown = set(fields) - _LINEAGE_FIELDS
        if unknown:
            raise TypeError(f"update() got unknown field(s): {', '.join(sorted(unknown))}")
        if self._writable("update"):
            for k, v in fields.items():
                setattr(self._span, k, v)
        return self

    # ---- used by the engine ------------------------------------------------------------
    def adopt(self, span: Span) -> None:
        """Give an engine span created inside this step this step's session and user (when
        the request has none) and the ids of documents retrieved earlier in it."""
        if span.user_id is None:
            span.user_id = self._span.user_id
        if span.session_id is None:
            span.session_id = self._span.session_id
        if DOC_IDS not in span.attributes:
            docs = self._docs_in_scope()
            if docs:
                span.attributes[DOC_IDS] = docs

    def _docs_in_scope(self) -> list[str]:
        seen: dict[str, None] = {}
        node: Observation | None = self
        while node is not None:
            for d in node._docs_seen:
                seen.setdefault(d, None)
            node = node.parent
        return list(seen)[:_MAX_DOC_IDS]

    # ---- lifecycle -----------------------------------------------------------------------
    def _result(self, value: Any) -> None:
        if self._output_set or self._closed:
            return
        if self._span.kind == "retrieval" and DOC_IDS not in self._span.attributes:
            ids = _auto_doc_ids(value)
            if ids:
                self._span.attributes[DOC_IDS] = ids
        if self.capture_output:
            self._span.output = jsonable(value)

    def _finish(self, value: Any) -> None:
        """The step returned ``value``: its output (unless set by hand), then the end."""
        self._result(value)
        self._end()

    def _end(self, exc: BaseException | None = None) -> None:
        if self._closed:
            return
        span = self._span
        span.end_time = time.time()
        if exc is not None:
            span.status = "error"
            span.error = _describe(exc)
            span.attributes["exception_type"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self._closed = True
        if self.parent is not None:  # later steps of the parent see what was retrieved here
            found = list(span.attributes.get(DOC_IDS) or ()) + self._docs_seen
            room = _MAX_DOC_IDS - len(self.parent._docs_seen)
            if found and room > 0:
                self.parent._docs_seen.extend(found[:room])
        _record(span)

    def __repr__(self) -> str:
        return f"<Observation {self._span.kind} {self._span.name!r} trace={self.trace_id} span={self.span_id}>"


# ---- sinks -----------------------------------------------------------------------------------

class _Sinks:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.explicit: Recorder | None = None
        self.explicit_store: Any = None  # closed with the recorder when we opened it
        self.defaults: list[tuple[weakref.ref, Recorder]] = []
        self.warned = False
        self.atexit = False

    def current(self) -> Recorder | None:
        if self.explicit is not None:
            return self.explicit
        with self.lock:
            self.defaults = [(o, r) for o, r in self.defaults if o() is not None]
            for _owner, rec in reversed(self.defaults):
                if rec.enabled:
                    return rec
        return None


_sinks = _Sinks()


def register_default_recorder(recorder: Recorder, owner: Any) -> None:
    """Make ``recorder`` (a Gateway's) the sink for observed spans while ``owner`` lives
    and until ``unregister_default_recorder``; the most recent registration wins."""
    if not recorder.enabled:
        return
    recorder.start()  # observed spans may arrive before the gateway's first call
    with _sinks.lock:
        _sinks.defaults.append((weakref.ref(owner), recorder))
        _sinks.warned = False


def unregister_default_recorder(recorder: Recorder) -> None:
    with _sinks.lock:
        _sinks.defaults = [(o, r) for o, r in _sinks.defaults if r is not recorder]


def configure(store: Any = None, *, recording: Any = None) -> None:
    """Where observed spans go when the app talks to the gateway over HTTP.

    ``store`` is a store URL (``sqlite:///path``, ``postgresql://...``; opened with
    ``shipyard.store.open_store``) or a store object; point it at the server's store and
    the app's spans and the server's ``llm`` spans join into one trace by id. ``recording``
    is a ``RecordingConfig`` or a dict of its keys. ``configure(None)`` closes the sink
    and falls back to the most recently created ``Gateway``."""
    from ..config import RecordingConfig

    new_rec: Recorder | None = None
    new_store: Any = None
    owned = False
    if store is not None:
        if isinstance(store, str):
            from ..store import open_store

            new_store, owned = open_store(store), True
        else:
            new_store = store
        cfg = recording if isinstance(recording, RecordingConfig) else RecordingConfig(**(recording or {}))
        new_rec = Recorder(new_store, cfg)
        new_rec.start()
    with _sinks.lock:
        old_rec, old_store = _sinks.explicit, _sinks.explicit_store
        _sinks.explicit, _sinks.explicit_store = new_rec, (new_store if owned else None)
        _sinks.warned = False
        if not _sinks.atexit:
            atexit.register(_close_explicit)
            _sinks.atexit = True
    _close(old_rec, old_store)


def _close(rec: Recorder | None, store: Any) -> None:
    if rec is not None:
        rec.close()
    if store is not None:
        try:
            store.close()
        except Exception:  # pragma: no cover - best effort
            log.exception("observe: closing the store failed")


def _close_explicit() -> None:
    with _sinks.lock:
        rec, store = _sinks.explicit, _sinks.explicit_store
        _sinks.explicit = _sinks.explicit_store = None
    _close(rec, store)


def flush(timeout: float = 10.0) -> bool:
    """Wait until the observed spans recorded so far are written by the current sink."""
    rec = _sinks.current()
    return rec.flush(timeout) if rec is not None else True


def _record(span: Span) -> None:
    rec = _sinks.current()
    if rec is None:
        if not _sinks.warned:
            _sinks.warned = True
            log.warning("observe: no sink for span %r; observed spans are discarded until a Gateway "
                        "is created or shipyard.configure(store=...) is called", span.name)
        return
    rec.record(span)


# ---- HTTP propagation ---------------------------------------------------------------------

def trace_headers() -> dict[str, str]:
    """``{"traceparent": ...}`` for the current step (empty outside one), for
    ``extra_headers=`` on an openai SDK call to a ``shipyard serve`` gateway."""
    obs = _CURRENT.get()
    return {"traceparent": obs.traceparent} if obs is not None else {}


def _inject(request: Any) -> None:
    obs = _CURRENT.get()
    if obs is not None and "traceparent" not in request.headers:
        request.headers["traceparent"] = obs.traceparent


async def _ainject(request: Any) -> None:
    _inject(request)


def _client_kwargs(kwargs: dict[str, Any], hook: Any) -> dict[str, Any]:
    import httpx

    hooks = {k: list(v) for k, v in (kwargs.pop("event_hooks", None) or {}).items()}
    hooks["request"] = [hook, *hooks.get("request", [])]
    kwargs.setdefault("timeout", httpx.Timeout(600.0, connect=5.0))  # the openai SDK's defaults
    kwargs.setdefault("follow_redirects", True)
    return {"event_hooks": hooks, **kwargs}


def traced_http_client(**kwargs: Any) -> Any:
    """An ``httpx.Client`` that sends the current step's ``traceparent`` with every request:
    ``openai.OpenAI(base_url=..., http_client=shipyard.traced_http_client())``."""
    import httpx

    return httpx.Client(**_client_kwargs(kwargs, _inject))


def traced_async_http_client(**kwargs: Any) -> Any:
    """The ``httpx.AsyncClient`` counterpart of ``traced_http_client``."""
    import httpx

    return httpx.AsyncClient(**_client_kwargs(kwargs, _ainject))


# ---- observe ---------------------------------------------------------------------------------

def _default_name(fn: Callable[..., Any]) -> str:
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or _repr(fn)
    return qual.rsplit("<locals>.", 1)[-1]


def _input_binder(fn: Callable[..., Any]) -> Callable[[tuple, dict], Any]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None

    def raw(args: tuple, kwargs: dict) -> Any:
        return {"args": jsonable(args), "kwargs": jsonable(kwargs)}

    if sig is None:
        return raw
    params = sig.parameters
    first = next(iter(params), None)
    skip = first if first in ("self", "cls") else None

    def bind(args: tuple, kwargs: dict) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:  # the call itself will fail; keep what was passed
            return raw(args, kwargs)
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if name == skip:
                continue
            if params[name].kind is inspect.Parameter.VAR_KEYWORD:
                for k, v in value.items():
                    out[k] = REDACTED if _sensitive(k) else jsonable(v)
            else:
                out[name] = REDACTED if _sensitive(name) else jsonable(value)
        return out

    return bind


class _Current:
    """``with _Current(obs):`` the step is the current one (the parent of steps and gateway
    calls started inside) until the block ends."""

    __slots__ = ("obs", "token")

    def __init__(self, obs: Observation) -> None:
        self.obs = obs

    def __enter__(self) -> None:
        self.token = _CURRENT.set(self.obs)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        _CURRENT.reset(self.token)


class _EndOnError:
    """``with _EndOnError(obs):`` an exception escaping the block ends the step with that
    error (type and message recorded) and goes on up."""

    __slots__ = ("obs",)

    def __init__(self, obs: Observation) -> None:
        self.obs = obs

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.obs._end(exc)


class _Collected:
    """A generator's yielded items, kept (capped) as its output; strings are joined."""

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.items: list[Any] = []
        self.count = 0

    def add(self, item: Any) -> None:
        self.count += 1
        if len(self.items) < _MAX_ITEMS:
            self.items.append(item)

    def finish(self) -> None:
        """Record the items as the step's output and end the step."""
        self.obs._span.attributes["yielded"] = self.count
        if self.items and all(isinstance(i, str) for i in self.items):
            self.obs._finish("".join(self.items))
        else:
            self.obs._finish(self.items)


class ObserveOptions:
    """``observe(...)``'s result: a decorator and a (sync or async) context manager."""

    def __init__(self, name: str | None = None, *, kind: str = "chain", session_id: str | None = None,
                 user_id: str | None = None, traceparent: str | None = None,
                 attributes: Mapping[str, Any] | None = None, capture_input: bool = True,
                 capture_output: bool = True) -> None:
        if kind not in KINDS:
            raise ValueError(f"observe: unknown kind {kind!r}; expected one of {', '.join(sorted(KINDS))}")
        if name is not None and not isinstance(name, str):
            raise TypeError("observe: name must be a string")
        self.name = name
        self.kind = kind
        self.session_id = session_id
        self.user_id = user_id
        self.traceparent = traceparent
        self.attributes = dict(attributes or {})
        self.capture_input = capture_input
        self.capture_output = capture_output
        self._active: list[tuple[Observation, Any]] = []

    # ---- starting a step -------------------------------------------------------------
    def start(self, name: str | None = None, input: Any = None) -> Observation:
        """A new step (not yet current): parent and trace from ``traceparent`` when
        given and valid, else from the current step, else a new trace."""
        parent = _CURRENT.get()
        remote = parse_traceparent(self.traceparent) if self.traceparent else None
        if remote is not None:
            trace_id, parent_id = remote
        elif parent is not None:
            trace_id, parent_id = parent.trace_id, parent.span_id
        else:
            trace_id, parent_id = new_trace_id(), None
        span = Span(
            trace_id=trace_id, span_id=new_span_id(), name=name or self.name or self.kind, kind=self.kind,
            parent_id=parent_id,
            session_id=self.session_id if self.session_id is not None else (parent.session_id if parent else None),
            user_id=self.user_id if self.user_id is not None else (parent.user_id if parent else None),
        )
        if self.attributes:
            span.attributes = {k: (REDACTED if _sensitive(k) else jsonable(v)) for k, v in self.attributes.items()}
        if input is not None and self.capture_input:
            span.input = input
        return Observation(span, parent, self.capture_output)

    # ---- context manager ---------------------------------------------------------------
    def __enter__(self) -> Observation:
        obs = self.start()
        self._active.append((obs, _CURRENT.set(obs)))
        return obs

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        # the entry of this context's step (an options object may be shared by threads/tasks)
        current = _CURRENT.get()
        entry = next((e for e in reversed(self._active) if e[0] is current), None) or self._active[-1]
        self._active.remove(entry)
        obs, token = entry
        try:
            _CURRENT.reset(token)
        except ValueError:  # exited in another context than entered
            _CURRENT.set(obs.parent)
        obs._end(exc)
        return False

    async def __aenter__(self) -> Observation:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        return self.__exit__(exc_type, exc, tb)

    # ---- decorator ----------------------------------------------------------------------
    def __call__(self, fn: F) -> F:
        if not callable(fn):
            raise TypeError("observe: expected a function to decorate")
        name = self.name or _default_name(fn)
        bind = _input_binder(fn) if self.capture_input else (lambda a, k: None)

        # Every wrapper runs the function's own code inside `with _Current(obs), _EndOnError(obs)`
        # and ends the step with what it returned; the generator wrappers do so for each step
        # of the generator, collect what it yields, and end the step when it is exhausted or
        # closed early. The sync and async forms differ only in `await`.
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                obs = self.start(name, bind(args, kwargs))
                collected = _Collected(obs)
                with _EndOnError(obs):
                    inner = fn(*args, **kwargs)
                op, arg = inner.asend, None
                while True:
                    with _Current(obs), _EndOnError(obs):
                        try:
                            item = await op(arg)
                        except StopAsyncIteration:
                            break
                    collected.add(item)
                    try:
                        arg = yield item
                        op = inner.asend
                    except GeneratorExit:  # the consumer stopped early
                        obs._span.attributes["stopped_early"] = True
                        try:
                            with _Current(obs):
                                await inner.aclose()
                        finally:
                            collected.finish()
                        raise
                    except BaseException as thrown:
                        op, arg = inner.athrow, thrown
                collected.finish()

            return agen_wrapper  # type: ignore[return-value]

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                obs = self.start(name, bind(args, kwargs))
                collected = _Collected(obs)
                with _EndOnError(obs):
                    inner = fn(*args, **kwargs)
                op, arg = inner.send, None
                while True:
                    with _Current(obs), _EndOnError(obs):
                        try:
                            item = op(arg)
                        except StopIteration as stop:
                            result = stop.value
                            break
                    collected.add(item)
                    try:
                        arg = yield item
                        op = inner.send
                    except GeneratorExit:  # the consumer stopped early
                        obs._span.attributes["stopped_early"] = True
                        try:
                            with _Current(obs):
                                inner.close()
                        finally:
                            collected.finish()
                        raise
                    except BaseException as thrown:
                        op, arg = inner.throw, thrown
                collected.finish()
                return result

            return gen_wrapper  # type: ignore[return-value]

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                obs = self.start(name, bind(args, kwargs))
                with _Current(obs), _EndOnError(obs):
                    result = await fn(*args, **kwargs)
                obs._finish(result)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            obs = self.start(name, bind(args, kwargs))
            with _Current(obs), _EndOnError(obs):
                result = fn(*args, **kwargs)
            obs._finish(result)
            return result

        return wrapper  # type: ignore[return-value]


class Observe:
    """``shipyard.observe``: ``@observe``, ``@observe(kind="retrieval", name="search")``,
    ``with observe("step", session_id=...) as span:``, ``observe.current_span()``."""

    @overload
    def __call__(self, fn: F, /) -> F: ...

    @overload
    def __call__(self, step_name: str | None = None, /, *, name: str | None = None, kind: str = "chain",
                 session_id: str | None = None, user_id: str | None = None, traceparent: str | None = None,
                 attributes: Mapping[str, Any] | None = None, capture_input: bool = True,
                 capture_output: bool = True) -> ObserveOptions: ...

    def __call__(self, fn_or_name: Any = None, /, *, name: str | None = None, kind: str = "chain",
                 session_id: str | None = None, user_id: str | None = None, traceparent: str | None = None,
                 attributes: Mapping[str, Any] | None = None, capture_input: bool = True,
                 capture_output: bool = True) -> Any:
        if callable(fn_or_name):
            return ObserveOptions(name, kind=kind, session_id=session_id, user_id=user_id,
                                  traceparent=traceparent, attributes=attributes,
                                  capture_input=capture_input, capture_output=capture_output)(fn_or_name)
        return ObserveOptions(fn_or_name if fn_or_name is not None else name, kind=kind,
                              session_id=session_id, user_id=user_id, traceparent=traceparent,
                              attributes=attributes, capture_input=capture_input,
                              capture_output=capture_output)

    @staticmethod
    def current_span() -> Observation | None:
        """The current observed step, or None outside one."""
        return _CURRENT.get()

    @staticmethod
    def flush(timeout: float = 10.0) -> bool:
        """Wait until observed spans recorded so far are written."""
        return flush(timeout)

    def __repr__(self) -> str:
        return "shipyard.observe"


observe = Observe()

__all__ = ["Observation", "ObserveOptions", "configure", "current_observation", "document_ids", "flush",
           "jsonable", "observe", "trace_headers", "traced_async_http_client", "traced_http_client"]
