"""The eval runner: every (variant, case, repeat) is one real gateway call, judged by the
evaluators, with results streamed to the store in batches.

Memory stays flat whatever the dataset size: items are read a page at a time, the work
queue is bounded (concurrency x 2), and results are written in batches by one writer.
New cases also wait while the span recorder is more than RECORDER_BACKLOG spans behind, so
no case trace is dropped and memory does not grow when the store is slower than the model.
A run is resumable: the key (run, variant, case, repeat) is recorded once a case is
finished, and a resumed run skips what is recorded. SIGINT/SIGTERM stop dispatching,
cancel calls in flight, write what finished and mark the run ``interrupted``.

Each case is a trace: a root ``chain`` span ("eval VARIANT CASE", attributes eval_run,
eval_variant, eval_case, eval_rep), the model call as its child ``llm`` span, and one
``evaluator`` span with every evaluator's result (judges' calls are its ``llm`` children).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..tracing.span import Span, new_span_id, new_trace_id
from .calls import EngineCaller, HttpCaller
from .datasets import Datasets
from .evaluators import Case, EvalContext, Evaluator, Outcome
from .results import CaseResult, EvalStore, ScoreRow
from .spec import LoadedSpec, TemplateError, Variant, load_spec, render_messages

BATCH = 200
FLUSH_S = 0.25
ITEM_BATCH = 200
RECORDER_BACKLOG = 2000  # spans waiting to be written before new cases wait


def new_run_id(name: str) -> str:
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name.lower())[:24].strip("-") or "eval"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass
class Target:
    """Where cases are sent and where results go."""

    store: Any
    caller: Any
    recorder: Any
    engine: Any = None
    store_url: str = ""

    async def close(self) -> None:
        if self.engine is not None:
            await self.caller.close()  # closes the engine: flushes its recorder, closes the store
        else:
            await self.caller.close()
            if self.recorder is not None:
                self.recorder.close()
            self.store.close()


def _config_dict(path: str | None) -> dict[str, Any] | None:
    if path is None:
        path = os.environ.get("SHIPYARD_CONFIG") or None
    if path is None:
        return None
    from ..config import read_yaml_file

    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: the top level must be a mapping")
    return data


def models_used(loaded: LoadedSpec) -> list[tuple[str, str]]:
    """(model, who uses it): variants' models, judges' models, embeddings aliases."""
    used = [(v.model, f"variant {v.name!r}") for v in loaded.variants]
    for e in loaded.evaluators:
        m = getattr(e.options, "model", None)
        if m:
            used.append((m, f"evaluator {e.name!r}"))
        emb = getattr(e.options, "embedder", None)
        if emb and emb != "hashing":
            used.append((emb, f"evaluator {e.name!r}"))
    return used


PROMPT_PREFIX = "prompt:"  # a prompt of the registry (releases/): resolved by the engine per call


def resolve_models(config: dict[str, Any], loaded: LoadedSpec) -> dict[str, Any]:
    """``provider:model`` becomes an ad-hoc alias with that one target (so a variant can
    name a model without an alias); everything else is left to :func:`check_models`."""
    models = dict(config.get("models") or {})
    providers = config.get("providers") or {}
    for model, _who in models_used(loaded):
        if model in models or model.startswith(PROMPT_PREFIX):
            continue
        prov, sep, name = model.partition(":")
        if sep and prov in providers and name:
            models[model] = {"targets": [{"provider": prov, "model": name}]}
    return {**config, "models": models}


def check_models(engine: Any, loaded: LoadedSpec) -> None:
    """Fail at start, naming it, for a model the engine cannot route: not an alias, not a
    prompt reference (``prompt:NAME@LABEL``), not a router or experiment of the releases."""
    releases = getattr(engine, "releases", None)
    known = set(engine.routers)
    for attr in ("intents", "active"):
        known |= set(getattr(releases, attr, None) or ())
    for model, who in models_used(loaded):
        if model in known or model.startswith(PROMPT_PREFIX):
            continue
        raise ConfigError(f"{who}: model {model!r} is neither an alias of the config "
                          f"({', '.join(sorted(engine.routers)) or 'none'}), a prompt:NAME reference, "
                          "nor provider:model with a configured provider")


def open_target(loaded: LoadedSpec, store_url: str | None = None) -> Target:
    from ..store import open_store

    spec = loaded.spec
    if spec.gateway_url:
        url = store_url or spec.store or "sqlite:///shipyard.db"
        store = open_store(url)
        if store is None:
            raise ConfigError("an eval needs a store for its results (store: none)")
        from ..tracing.recorder import Recorder

        recorder = Recorder(store)
        recorder.start()
        return Target(store, HttpCaller(spec.gateway_url, spec.api_key), recorder, store_url=url)
    from ..config import default_config, load_config
    from ..engine import Engine

    raw = _config_dict(loaded.config_path())
    if raw is None:
        raw = default_config()
    raw = resolve_models(raw, loaded)
    cfg = load_config(raw)
    url = store_url or spec.store or cfg.store
    store = open_store(url)
    if store is None:
        raise ConfigError("an eval needs a store for its results and traces (store: none)")
    engine = Engine(cfg, store=store)
    try:
        check_models(engine, loaded)
    except BaseException:
        engine.recorder.close()
        store.close()
        raise
    return Target(store, EngineCaller(engine), engine.recorder, engine, store_url=url)


@dataclass
class RunResult:
    run_id: str
    status: str  # finished | interrupted
    total: int
    done: int
    ran: int  # cases run by this invocation
    elapsed_s: float
    store_url: str = ""
    spans_dropped: int = 0


class Progress:
    """A Rich progress bar on a terminal; periodic plain lines otherwise (CI logs)."""

    def __init__(self, total: int, done: int, label: str, enabled: bool) -> None:
        self.total, self.done, self.label = total, done, label
        self.passed = self.failed = self.errors = 0
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._last = time.monotonic()
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
            from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self._task = self._bar.add_task(label, total=total, completed=done, stats="")
            self._bar.start()

    def advance(self, res: CaseResult) -> None:
        self.done += 1
        if res.passed is True:
            self.passed += 1
        elif res.passed is False:
            self.failed += 1
        if res.status != "ok":
            self.errors += 1
        stats = f"[green]{self.passed} pass[/] [red]{self.failed} fail[/] [yellow]{self.errors} err[/]"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, stats=stats)
        elif self.enabled and time.monotonic() - self._last >= 10:
            self._last = time.monotonic()
            print(f"{self.label}: {self.done}/{self.total} cases ({self.passed} pass, {self.failed} fail, "
                  f"{self.errors} errors)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class EvalRunner:
    def __init__(self, loaded: LoadedSpec, target: Target, *, run_id: str, dataset_version: int, repeats: int,
                 concurrency: int, limit: int | None = None, progress: bool = True, retry_errors: bool = False) -> None:
        self.loaded = loaded
        self.target = target
        self.run_id = run_id
        self.version = dataset_version
        self.repeats = repeats
        self.concurrency = concurrency
        self.limit = limit
        self.show_progress = progress
        self.retry_errors = retry_errors
        self.results = EvalStore(target.store)
        self.datasets = Datasets(target.store)
        self.ctx = EvalContext(caller=target.caller, base_dir=loaded.base_dir, run_id=run_id)
        self.stop = asyncio.Event()
        self.ran = 0

    # ---- one case ------------------------------------------------------------------------
    def _meta(self, variant: Variant, item: dict[str, Any], rep: int) -> dict[str, str]:
        return {"eval_run": self.run_id, "eval_variant": variant.name, "eval_case": item["id"], "eval_rep": str(rep)}

    @staticmethod
    def _request_metadata(meta: dict[str, str], item: dict[str, Any]) -> dict[str, Any]:
        """The eval tags, plus the case's variables for a registry prompt (``prompt:NAME``)
        to render its template with (``metadata.variables``)."""
        variables = (item.get("input") or {}).get("variables")
        return {**meta, "variables": variables} if variables else meta

    async def _backpressure(self) -> None:
        """Wait while the recorder is behind: a case's trace must not be dropped, and spans
        queued in memory are what would grow with a fast upstream and a slow store."""
        rec = self.target.recorder
        if rec is None or not getattr(rec, "enabled", False):
            return
        limit = max(100, min(rec.maxsize // 2, RECORDER_BACKLOG))
        while rec.depth > limit and not self.stop.is_set():
            await asyncio.sleep(0.01)

    async def run_case(self, variant: Variant, item: dict[str, Any], rep: int) -> CaseResult:
        await self._backpressure()
        meta = self._meta(variant, item, rep)
        root = Span(trace_id=new_trace_id(), span_id=new_span_id(), name=f"eval {variant.name} {item['id']}",
                    kind="chain")
        root.attributes = {**meta, "dataset": self.loaded.spec.dataset.name, "dataset_version": self.version}
        root.input = item["input"]
        res = CaseResult(self.run_id, variant.name, item["id"], rep, "ok", trace_id=root.trace_id)
        try:
            messages = render_messages(variant, item)
        except TemplateError as exc:
            res.status, res.error = "error", str(exc)
            self._finish_root(root, res)
            return res
        call = await self.target.caller.chat(variant.model, messages, variant.params, trace_id=root.trace_id,
                                             parent_span_id=root.span_id, metadata=self._request_metadata(meta, item))
        res.trace_id = call.trace_id or root.trace_id
        res.model, res.latency_ms, res.cost_usd = call.model, call.latency_ms, call.cost_usd
        res.input_tokens, res.output_tokens = call.input_tokens, call.output_tokens
        if call.error is not None:
            res.status, res.error = "error", call.error
            self._finish_root(root, res)
            return res
        res.output = call.text
        evaluators = self.loaded.pointwise
        if evaluators:
            # one evaluator span per case holds every evaluator's result; judges' calls are its children
            ev_span = Span(trace_id=root.trace_id, span_id=new_span_id(), kind="evaluator", parent_id=root.span_id,
                           name="evaluate " + ", ".join(ev.name for ev in evaluators))
            case = Case(item=item, output=call.text, messages=messages, response=call.response,
                        variant=variant.name, latency_ms=call.latency_ms, cost_usd=call.cost_usd,
                        input_tokens=call.input_tokens, output_tokens=call.output_tokens, trace_id=res.trace_id,
                        span_id=ev_span.span_id)
            outcomes = await asyncio.gather(*(self._evaluate(ev, case) for ev in evaluators))
            self._verdict(res, evaluators, outcomes)
            self._finish_evaluator_span(ev_span, meta, evaluators, outcomes)
        else:
            self._verdict(res, evaluators, [])
        self._finish_root(root, res)
        return res

    async def _evaluate(self, ev: Evaluator, case: Case) -> Outcome:
        try:
            return await ev.evaluate(case, self.ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken evaluator is an error for this case, not a crash of the run
            return Outcome.err(f"evaluator crashed: {type(exc).__name__}: {exc}")

    def _finish_evaluator_span(self, span: Span, meta: dict[str, str], evaluators: list[Evaluator],
                               outcomes: list[Outcome]) -> None:
        span.end_time = time.time()
        span.attributes = {**meta, "evaluators": [ev.name for ev in evaluators]}
        span.output = {ev.name: {"type": ev.type, "criterion": ev.criterion, "passed": o.passed, "score": o.score,
                                 "reason": o.reason, "error": o.error} for ev, o in zip(evaluators, outcomes)}
        errors = [f"{ev.name}: {o.error}" for ev, o in zip(evaluators, outcomes) if o.error]
        if errors:
            span.status, span.error = "error", "; ".join(errors)
        if self.target.recorder is not None:
            self.target.recorder.record(span)

    @staticmethod
    def _verdict(res: CaseResult, evaluators: list[Evaluator], outcomes: list[Outcome]) -> None:
        scores = []
        failed = errored = False
        for ev, o in zip(evaluators, outcomes):
            res.scores.append(ScoreRow(ev.name, ev.criterion, o.passed, o.score, o.reason, o.error, o.cost_usd))
            if o.error:
                errored = True
                continue
            if o.passed is False:
                failed = True
            if o.score is not None:
                scores.append(o.score)
        res.score = sum(scores) / len(scores) if scores else None
        if failed:
            res.passed = False
        elif errored:
            res.passed, res.status = None, "eval_error"
            res.error = "; ".join(f"{s.evaluator}: {s.error}" for s in res.scores if s.error)
        elif any(o.passed is not None for o in outcomes) or not evaluators:
            res.passed = True if evaluators else None
        if failed and errored:
            res.status = "eval_error"
            res.error = "; ".join(f"{s.evaluator}: {s.error}" for s in res.scores if s.error)

    def _finish_root(self, root: Span, res: CaseResult) -> None:
        root.end_time = time.time()
        if res.status == "error":
            root.status, root.error = "error", res.error
        root.output = {"passed": res.passed, "score": res.score, "status": res.status}
        if self.target.recorder is not None:
            self.target.recorder.record(root)

    # ---- the run -------------------------------------------------------------------------
    async def run(self, total: int, already: int) -> None:
        spec = self.loaded.spec
        variants = self.loaded.variants
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.concurrency * 2)
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=BATCH * 4)
        progress = Progress(total, already, f"eval {self.run_id}", self.show_progress)

        async def produce() -> None:
            items = self.datasets.iter_items(spec.dataset.name, self.version, spec.dataset.split)
            seen = 0
            batch: list[dict[str, Any]] = []
            for item in items:
                if self.stop.is_set():
                    return
                if self.limit is not None and seen >= self.limit:
                    break
                seen += 1
                batch.append(item)
                if len(batch) >= ITEM_BATCH:
                    await dispatch(batch)
                    batch = []
            if batch:
                await dispatch(batch)

        async def dispatch(batch: list[dict[str, Any]]) -> None:
            done = await asyncio.to_thread(self.results.done_keys, self.run_id, [i["id"] for i in batch],
                                           retry_errors=self.retry_errors)
            for item in batch:
                for v in variants:
                    for rep in range(self.repeats):
                        if (v.name, item["id"], rep) in done:
                            continue
                        if self.stop.is_set():
                            return
                        await queue.put((v, item, rep))

        async def work() -> None:
            while True:
                task = await queue.get()
                if task is None:
                    return
                res = await self.run_case(*task)
                await out.put(res)

        async def write() -> None:
            buf: list[CaseResult] = []
            last = time.monotonic()
            while True:
                try:
                    res = await asyncio.wait_for(out.get(), timeout=FLUSH_S)
                except asyncio.TimeoutError:
                    res = ...
                if res is not None and res is not ...:
                    buf.append(res)
                    progress.advance(res)
                    self.ran += 1
                if buf and (res is None or len(buf) >= BATCH or time.monotonic() - last >= FLUSH_S):
                    await asyncio.to_thread(self.results.write_results, buf)
                    buf = []
                    last = time.monotonic()
                if res is None:
                    return

        workers = [asyncio.create_task(work()) for _ in range(self.concurrency)]
        writer = asyncio.create_task(write())
        producer = asyncio.create_task(produce())

        def interrupt() -> None:
            if not self.stop.is_set():
                self.stop.set()
                producer.cancel()
                for w in workers:
                    w.cancel()

        def writer_done(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:  # the store failed: stop feeding it
                producer.cancel()
                for w in workers:
                    w.cancel()

        writer.add_done_callback(writer_done)

        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, interrupt)
                installed.append(sig)
        try:
            try:
                await producer
                for _ in workers:
                    await queue.put(None)
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise
            await asyncio.gather(*workers, return_exceptions=self.stop.is_set())
            if not writer.done():
                await out.put(None)  # every case is written before pairwise judging reads them back
            await writer
            if not self.stop.is_set():
                await self._pairwise(progress)
        except asyncio.CancelledError:
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                raise writer.exception() from None  # type: ignore[misc]
            if not self.stop.is_set():
                interrupt()
                raise
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if not writer.done():
                await out.put(None)
                with contextlib.suppress(Exception):
                    await writer
            progress.close()
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _pairwise(self, progress: Progress) -> None:
        evaluators = self.loaded.pairwise
        if not evaluators:
            return
        names = [v.name for v in self.loaded.variants]
        sem = asyncio.Semaphore(self.concurrency)
        spec = self.loaded.spec
        for ev in evaluators:
            against = getattr(ev.options, "against", None) or names[0]
            pairs = getattr(ev.options, "pairs", None) or [(against, n) for n in names if n != against]
            for base, other in pairs:
                after: tuple[str, int] | None = None
                while not self.stop.is_set():
                    todo = await asyncio.to_thread(self.results.pairwise_todo, self.run_id, ev.name, base, other,
                                                   after, 200)
                    if not todo:
                        break
                    after = (todo[-1][0], todo[-1][1])
                    items = await asyncio.to_thread(self.datasets.get_items, spec.dataset.name, self.version,
                                                    list({t[0] for t in todo}))

                    async def one(case_id: str, rep: int, a: str, b: str, trace_id: str | None,
                                  base: str = base, other: str = other, ev: Any = ev,
                                  items: dict[str, Any] = items) -> tuple:
                        async with sem:
                            item = items.get(case_id) or {"id": case_id, "input": {}}
                            try:
                                w, reason, err = await ev.compare(item, a, b, self.ctx, trace_id)  # type: ignore[attr-defined]
                            except Exception as exc:
                                w, reason, err = None, None, f"pairwise crashed: {type(exc).__name__}: {exc}"
                            return (self.run_id, ev.name, base, other, case_id, rep, w, reason, err)

                    rows = await asyncio.gather(*(one(*t) for t in todo))
                    await asyncio.to_thread(self.results.write_pairwise, list(rows))


def _stored_spec(loaded: LoadedSpec) -> dict[str, Any]:
    raw = dict(loaded.raw)
    if loaded.spec.config:
        raw["config"] = loaded.config_path()
    return {"spec": raw, "base_dir": str(loaded.base_dir)}


async def run_eval_async(
    loaded: LoadedSpec | None = None,
    *,
    resume: str | None = None,
    run_id: str | None = None,
    repeat: int | None = None,
    concurrency: int | None = None,
    limit: int | None = None,
    store_url: str | None = None,
    progress: bool = True,
    retry_errors: bool = False,
    kind: str = "run",
) -> RunResult:
    """Run (or resume) an eval; returns when it finished or was interrupted. The result
    names the store URL the results went to (for the report)."""
    t0 = time.monotonic()
    stored: dict[str, Any] | None = None
    if resume is not None:
        if loaded is None and store_url is None:
            raise ConfigError("--resume needs the EVAL.yaml or --store to find the run")
    if loaded is None:
        from ..store import open_store

        probe = open_store(store_url)
        try:
            stored = EvalStore(probe).get_run(resume)  # type: ignore[arg-type]
        finally:
            probe.close()
        loaded = load_spec(stored["spec"]["spec"], base_dir=Path(stored["spec"]["base_dir"]))
    target = open_target(loaded, store_url)
    try:
        if isinstance(target.caller, EngineCaller):
            await target.caller.start()
        evs = EvalStore(target.store)
        ds = Datasets(target.store)
        spec = loaded.spec
        if resume is not None:
            run = evs.get_run(resume)
            stored_raw = run["spec"]["spec"]
            if _stored_spec(loaded)["spec"] != stored_raw:
                print(f"shipyard: the eval spec changed since run {resume} started; resuming with the run's own spec",
                      file=sys.stderr)
                loaded = load_spec(stored_raw, base_dir=Path(run["spec"]["base_dir"]))
                spec = loaded.spec
            rid, version, repeats = resume, int(run["dataset_version"]), int(run["repeats"])
            limit = run["spec"].get("limit") if limit is None else limit
            evs.set_status(rid, "running")
        else:
            version = ds.get(spec.dataset.name, spec.dataset.version)["version"]
            repeats = repeat or spec.repeat
            rid = run_id or new_run_id(spec.name)
            lim = limit if limit is not None else spec.dataset.limit
            limit = lim
            n = ds.count(spec.dataset.name, version, spec.dataset.split)
            total_items = min(n, lim) if lim is not None else n
            stored_spec = {**_stored_spec(loaded), "limit": lim}
            evs.create_run(rid, name=spec.name, kind=kind, spec=stored_spec, spec_path=loaded.path,
                           dataset=spec.dataset.name, dataset_version=version, split=spec.dataset.split,
                           repeats=repeats, total=total_items * len(loaded.variants) * repeats,
                           variants=[v.describe() for v in loaded.variants])
        run = evs.get_run(rid)
        total = int(run["total"] or 0)
        already = evs.count_done(rid)
        runner = EvalRunner(loaded, target, run_id=rid, dataset_version=version, repeats=repeats,
                            concurrency=concurrency or spec.concurrency, limit=limit, progress=progress,
                            retry_errors=retry_errors)
        try:
            await runner.run(total, already)
        finally:
            status = "interrupted" if runner.stop.is_set() else "finished"
            if not runner.stop.is_set() and target.engine is None:
                if target.recorder is not None:
                    target.recorder.flush()
                evs.backfill_costs(rid)
            evs.set_status(rid, status)
        done = evs.count_done(rid)
        result = RunResult(rid, status, total, done, runner.ran, time.monotonic() - t0, target.store_url)
        if target.recorder is not None:
            target.recorder.flush()
            result.spans_dropped = target.recorder.dropped
    except BaseException:
        await target.close()
        raise
    await target.close()
    return result


def run_eval(loaded: LoadedSpec | None = None, **kwargs: Any) -> RunResult:
    """Sync wrapper of :func:`run_eval_async` (its own event loop)."""
    return asyncio.run(run_eval_async(loaded, **kwargs))
