"""Shadow traffic: mirror a sample of an alias's calls to candidates, in the background.

The request path only appends a job to a bounded deque (``shadow.queue_size``; when full
the job is dropped and counted) and, if fewer than ``shadow.max_concurrency`` workers are
running, starts one more as an asyncio task. Workers drain the queue and exit when it is
empty. Each job calls every candidate in turn (non-streaming, through routers with their
own circuit breakers, so a failing candidate never opens a production breaker), compares
its answer with production's, and writes one ``shadow_results`` row per candidate from a
worker thread. Candidate answers are never returned to a client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import Target
from ..pricing import cost_usd
from ..routing.breaker import CircuitBreaker
from ..routing.router import Attempt, Router
from ..types import usage_of
from . import evaluators
from .config import ShadowCandidate, ShadowConfig

log = logging.getLogger("shipyard.releases")


@dataclass(slots=True)
class ShadowJob:
    alias: str
    req: Any
    trace_id: str
    span_id: str
    prod: dict[str, Any]
    prod_latency_ms: float | None
    prod_cost_usd: float | None
    prod_model: str | None
    prompt: str | None


class ShadowPool:
    """One alias's shadow queue, workers and counters."""

    def __init__(self, alias: str, cfg: ShadowConfig, releases: Any) -> None:
        self.alias = alias
        self.cfg = cfg
        self.releases = releases
        engine = releases.engine
        self.breakers: dict[str, CircuitBreaker] = {}
        base = engine.config.models[alias]
        self.routers: dict[str, Router] = {}
        for c in cfg.candidates:
            self.routers[c.label] = self._router_for(c, base, engine)
        self.judge: Router | None = None
        if cfg.judge is not None:
            self.judge = Router(cfg.judge, engine.config.models[cfg.judge], engine.providers, self.breakers)
        self.queue: deque[ShadowJob] = deque()
        self.workers = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.sampled = 0
        self.enqueued = 0
        self.dropped = 0
        self.completed = 0
        self.candidate_calls = 0
        self.candidate_errors = 0
        self.write_errors = 0
        self._idle: asyncio.Event | None = None

    def _router_for(self, c: ShadowCandidate, base: Any, engine: Any) -> Router:
        retries = {"retries": 0}
        if c.provider is not None:
            cfg = base.model_copy(update={"targets": [Target(provider=c.provider, model=c.model,
                                                             timeout_s=c.timeout_s)], **retries})
            return Router(self.alias, cfg, engine.providers, self.breakers)
        name = c.alias or self.alias
        cfg = engine.config.models[name].model_copy(update=retries)
        return Router(name, cfg, engine.providers, self.breakers)

    # ---- request path ------------------------------------------------------------------
    def sample(self) -> bool:
        return self.cfg.sample > 0 and (self.cfg.sample >= 1 or random.random() < self.cfg.sample)

    def submit(self, job: ShadowJob) -> bool:
        """Non-blocking: queue the job (or drop and count it) and make sure a worker runs."""
        if len(self.queue) >= self.cfg.queue_size:
            self.dropped += 1
            return False
        self.queue.append(job)
        self.enqueued += 1
        if self.workers < self.cfg.max_concurrency:
            self.workers += 1
            if self._idle is not None:
                self._idle.clear()
            task = asyncio.get_running_loop().create_task(self._worker(), name=f"shadow:{self.alias}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    # ---- background --------------------------------------------------------------------
    async def _worker(self) -> None:
        try:
            while self.queue:
                job = self.queue.popleft()
                try:
                    await self._run(job)
                except asyncio.CancelledError:
                    raise
                except Exception:  # never let a worker die silently with work queued
                    log.exception("shadow job for %s failed", self.alias)
                self.completed += 1
        finally:
            self.workers -= 1
            if self.workers == 0 and self._idle is not None and not self.queue:
                self._idle.set()

    async def _run(self, job: ShadowJob) -> None:
        prod_text = evaluators.answer_text(job.prod)
        rows = []
        for c in self.cfg.candidates:
            rows.append(await self._candidate(job, c, prod_text))
        if self.releases.rstore is not None and rows:
            try:
                await asyncio.to_thread(self.releases.rstore.insert_shadow_results, rows)
            except Exception as exc:
                self.write_errors += 1
                log.warning("shadow: writing %d results failed (%s)", len(rows), type(exc).__name__)
        self.releases.shadow_listeners_notify(rows)

    async def _candidate(self, job: ShadowJob, c: ShadowCandidate, prod_text: str) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": uuid.uuid4().hex, "ts": time.time(), "alias": job.alias, "candidate": c.label,
            "trace_id": job.trace_id, "span_id": job.span_id, "prompt": job.prompt, "status": "ok",
            "prod_latency_ms": job.prod_latency_ms, "prod_cost_usd": job.prod_cost_usd, "prod_model": job.prod_model,
        }
        self.candidate_calls += 1
        router = self.routers[c.label]
        attempts: list[Attempt] = []
        t0 = time.perf_counter()
        try:
            body, prompt_label = await self.releases.candidate_body(job.req, c)
            if prompt_label:
                row["prompt"] = prompt_label

            async def op(target: Any) -> dict[str, Any]:
                b = {**target.params, **body, "model": target.model}
                return await target.provider.chat(b, target.timeouts)

            resp, target = await router.execute(op, attempts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.candidate_errors += 1
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            row.update(status="error", error=str(msg)[:500], latency_ms=round((time.perf_counter() - t0) * 1000, 3),
                       target=attempts[-1].provider + "/" + attempts[-1].model if attempts else None)
            return row
        latency = round((time.perf_counter() - t0) * 1000, 3)
        i, o, cached = usage_of(resp)
        model = resp.get("model") or target.model
        text = evaluators.answer_text(resp)
        row.update(latency_ms=latency, target=target.label, model=model, input_tokens=i, output_tokens=o,
                   cost_usd=cost_usd(self.releases.engine.config.prices, model, i, o, cached,
                                     fallback_model=target.model),
                   **evaluators.compare(prod_text, text, list(self.cfg.evaluators)))
        for k in ("exact_match", "json_equal"):
            if row[k] is not None:
                row[k] = int(row[k])
        if self.judge is not None and (self.cfg.judge_sample >= 1 or random.random() < self.cfg.judge_sample):
            row["judge_score"] = await self._judge(job, prod_text, text)
        row["output"], row["prod_output"] = self.releases.stored_text(text), self.releases.stored_text(prod_text)
        return row

    async def _judge(self, job: ShadowJob, prod: str, cand: str) -> float | None:
        assert self.judge is not None
        msgs = evaluators.judge_messages(job.req.messages, prod, cand)

        async def op(target: Any) -> dict[str, Any]:
            body = {**target.params, "model": target.model, "messages": msgs, "temperature": 0, "max_tokens": 8}
            return await target.provider.chat(body, target.timeouts)

        try:
            resp, _ = await self.judge.execute(op, [])
        except Exception as exc:
            log.info("shadow judge for %s failed: %s", self.alias, getattr(exc, "message", type(exc).__name__))
            return None
        return evaluators.judge_score(evaluators.answer_text(resp))

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty and no worker runs (tests, shutdown)."""
        if self._idle is None:
            self._idle = asyncio.Event()
            if self.workers == 0 and not self.queue:
                self._idle.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def stats(self) -> dict[str, Any]:
        return {"alias": self.alias, "sample": self.cfg.sample, "sampled": self.sampled, "enqueued": self.enqueued,
                "dropped": self.dropped, "completed": self.completed, "queued": len(self.queue),
                "in_flight": self.workers, "candidate_calls": self.candidate_calls,
                "candidate_errors": self.candidate_errors, "write_errors": self.write_errors,
                "candidates": [c.label for c in self.cfg.candidates]}
