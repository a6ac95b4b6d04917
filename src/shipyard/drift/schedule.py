"""The scheduled drift check in the server, and its webhook alerts.

With ``drift.reference`` set, the server compares the last ``drift.window`` of traffic with
the reference every ``drift.interval_s`` (the first check right after start-up), in a worker
thread so the event loop never waits on it, using the light embedder. The latest result is
shown at /ui/drift and served at /api/drift/latest.

Alerts: a JSON POST to ``drift.webhook_url`` when a check turns to drift or its set of
drifted checks changes (``drift.detected``), and once when it returns to no drift
(``drift.resolved``). A "not enough data" result changes nothing. The body has a one-line
``text`` (so Slack-style incoming webhooks show it as is), the verdict, the drifted checks
with their statistics and thresholds, and the new or grown topics with examples. Delivery
is tried 3 times (1 s, then 2 s apart); failures are logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import orjson

log = logging.getLogger("shipyard.drift")

WEBHOOK_TRIES = 3
WEBHOOK_TIMEOUT_S = 10.0
HISTORY = 24


def drifted_details(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for side, checks in (summary.get("structural") or {}).items():
        for c in checks:
            if c.get("verdict") == "drift":
                out.append({"check": f"{side}.{c['name']}", "label": c.get("label"), "test": c.get("test"),
                            "statistic": c.get("statistic"), "p_value": c.get("p_value"),
                            "threshold": c.get("threshold")})
    sem = summary.get("semantic") or {}
    for side in ("input", "output"):
        block = sem.get(side) or {}
        dc = block.get("domain_classifier") or {}
        if dc.get("verdict") == "drift":
            out.append({"check": f"semantic.{side}.domain_classifier", "test": "roc_auc",
                        "statistic": dc.get("statistic"), "threshold": dc.get("threshold")})
        topics = block.get("topics") or {}
        if topics.get("verdict") == "drift":
            out.append({"check": f"semantic.{side}.topics", "test": "cluster_share",
                        "statistic": topics.get("new_share"), "threshold": topics.get("threshold"),
                        "topics": [{"status": c["status"], "keywords": c["keywords"],
                                    "reference_share": c["reference_share"], "current_share": c["current_share"],
                                    "examples": c["examples"][:3]}
                                   for c in topics.get("clusters", []) if c["status"] in ("new", "grown")]})
    for c in (summary.get("quality") or {}).get("judge_scores", {}).get("checks", []) + \
            (summary.get("quality") or {}).get("feedback", {}).get("checks", []):
        if c.get("verdict") == "drift":
            out.append({"check": f"quality.{c['name']}", "test": c.get("test"), "statistic": c.get("statistic"),
                        "p_value": c.get("p_value"), "threshold": c.get("threshold")})
    return out


def alert_payload(summary: dict[str, Any], event: str, report_url: str | None = None) -> dict[str, Any]:
    ref, cur = summary["reference"], summary["current"]
    drifted = summary.get("drifted") or []
    if event == "drift.resolved":
        text = (f"Shipyard drift resolved: the last {cur.get('spec')} of traffic no longer drifts from "
                f"{ref.get('spec')} ({cur.get('records')} records)")
    else:
        shown = ", ".join(drifted[:6]) + (f" and {len(drifted) - 6} more" if len(drifted) > 6 else "")
        text = (f"Shipyard drift detected: {len(drifted)} check(s) drifted between {ref.get('spec')} and the "
                f"last {cur.get('spec')} of traffic ({cur.get('records')} records): {shown}")
    return {
        "event": event, "text": text, "verdict": summary["verdict"], "generated_at": summary.get("generated_at"),
        "reference": {k: ref.get(k) for k in ("spec", "description", "records")},
        "current": {k: cur.get(k) for k in ("spec", "description", "records", "start", "end")},
        "drifted": drifted_details(summary) if event == "drift.detected" else [],
        "report_url": report_url,
    }


async def post_webhook(url: str, payload: dict[str, Any]) -> bool:
    import aiohttp

    body = orjson.dumps(payload, default=str)
    delay = 1.0
    for attempt in range(1, WEBHOOK_TRIES + 1):
        try:
            timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, data=body, headers={"content-type": "application/json",
                                                                 "user-agent": "shipyard-drift"}) as resp:
                    if resp.status < 300:
                        return True
                    log.warning("drift webhook answered HTTP %s (attempt %d of %d)", resp.status, attempt,
                                WEBHOOK_TRIES)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("drift webhook failed: %s (attempt %d of %d)", type(exc).__name__, attempt, WEBHOOK_TRIES)
        if attempt < WEBHOOK_TRIES:
            await asyncio.sleep(delay)
            delay *= 2
    return False


class DriftScheduler:
    """Runs the configured check on the engine's event loop; see the module docstring."""

    def __init__(self, engine: Any, cfg: Any, *, datasets: Any = None, report_url: str | None = "/ui/drift") -> None:
        self.engine = engine
        self.cfg = cfg
        self.datasets = datasets
        self.report_url = report_url
        self.last: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.checks = 0
        self.alerts_sent = 0
        self.alert_errors = 0
        self._alerting = False
        self._alert_key: tuple[str, ...] = ()
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="shipyard-drift-check")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged and shown in the UI; the next check tries again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("scheduled drift check failed: %s", self.last_error)
            await asyncio.sleep(self.cfg.interval_s)

    # ---- one check -------------------------------------------------------------------
    def _analyze(self) -> dict[str, Any]:
        from .analyze import run_analysis

        return run_analysis(self.engine.store, self.cfg.reference, self.cfg.window, thresholds=self.cfg.thresholds,
                            embedder="light", datasets=self.datasets)

    async def check_once(self) -> dict[str, Any]:
        if self.engine.store is None:
            raise RuntimeError("drift checks need a store (the config has store: none)")
        summary = await asyncio.to_thread(self._analyze)
        self.checks += 1
        self.last, self.last_error = summary, None
        self.history.append({"generated_at": summary["generated_at"], "verdict": summary["verdict"],
                             "drifted": summary["drifted"], "records": summary["current"]["records"]})
        await self._maybe_alert(summary)
        return summary

    async def _maybe_alert(self, summary: dict[str, Any]) -> None:
        verdict = summary["verdict"]
        key = tuple(summary.get("drifted") or ())
        if verdict == "drift" and (not self._alerting or key != self._alert_key):
            event = "drift.detected"
        elif verdict == "no drift" and self._alerting:
            event = "drift.resolved"
        else:
            return
        self._alerting, self._alert_key = event == "drift.detected", key
        if not self.cfg.webhook_url:
            log.warning("%s", alert_payload(summary, event)["text"])
            return
        if await post_webhook(self.cfg.webhook_url, alert_payload(summary, event, self.report_url)):
            self.alerts_sent += 1
        else:
            self.alert_errors += 1

    def state(self) -> dict[str, Any]:
        return {"reference": self.cfg.reference, "window": self.cfg.window, "interval_s": self.cfg.interval_s,
                "webhook": bool(self.cfg.webhook_url), "checks": self.checks, "alerts_sent": self.alerts_sent,
                "alert_errors": self.alert_errors, "alerting": self._alerting, "last_error": self.last_error,
                "last_verdict": self.last["verdict"] if self.last else None,
                "last_at": self.last["generated_at"] if self.last else None, "history": list(self.history),
                "now": time.time()}


def attach(engine: Any) -> DriftScheduler | None:
    """Start the configured check with the engine and stop it before the engine closes
    (wrapping this engine instance's start/close). None when no check is configured."""
    cfg = getattr(engine.config, "drift", None)
    if cfg is None or not cfg.reference:
        return None
    existing = getattr(engine, "drift_scheduler", None)
    if existing is not None:
        return existing
    sched = DriftScheduler(engine, cfg)
    engine.drift_scheduler = sched
    start, close = engine.start, engine.close

    async def start_with_drift() -> None:
        await start()
        sched.start()

    async def close_with_drift() -> None:
        await sched.stop()
        await close()

    engine.start = start_with_drift
    engine.close = close_with_drift
    return sched
