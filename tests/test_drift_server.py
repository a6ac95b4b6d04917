"""Drift in the server: the scheduled check with webhook alerts (a real loopback HTTP
receiver), the /ui/drift page (also in headless Chromium), the JSON API, and the parts
that go through the gateway: the nondeterminism probe and an embeddings alias."""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from conftest import client_for, fast_alias

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "drift"))

import synth  # noqa: E402

from shipyard.cli import main  # noqa: E402
from shipyard.drift import run_analysis  # noqa: E402
from shipyard.drift.schedule import DriftScheduler, alert_payload  # noqa: E402
from shipyard.evals.datasets import Datasets  # noqa: E402
from shipyard.store import open_store  # noqa: E402

DAY = 86400.0


class Receiver:
    """A loopback webhook receiver that records every JSON POST (and can fail on purpose)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_next = 0
        self.got = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if outer.fail_next:
                    outer.fail_next -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(raw))
                outer.got.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/drift"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, n: int = 1, timeout: float = 90.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.bodies) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.bodies) >= n, f"expected {n} webhook posts, got {len(self.bodies)}"
        return self.bodies

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def populate(url: str, now: float, **shift: Any) -> None:
    store = open_store(url)
    try:
        Datasets(store).create("support", synth.dataset_items(synth.make_records(300, seed=1)))
        synth.write_window(store, synth.make_records(300, seed=3, **shift), now - 6 * DAY, now - 60)
    finally:
        store.close()


def gateway_config(up: Any, url: str, **drift: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "store": url,
        "providers": {"fake": {"type": "openai", "base_url": up.base_url, "api_key": "sk-drift"}},
        "models": {"support": fast_alias({"provider": "fake", "model": "gpt-4o-mini-2024-07-18"}, retries=0),
                   "emb": fast_alias({"provider": "fake", "model": "text-embedding-3-small"}, retries=0)},
    }
    if drift:
        cfg["drift"] = drift
    return cfg


# ---- scheduled check + webhook + UI -----------------------------------------------------------
def test_scheduled_check_posts_an_alert_and_the_ui_shows_the_report(serve, fake_openai, receiver, tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    populate(url, time.time(), output_format="markdown", new_topic=0.25)
    server = serve(gateway_config(fake_openai, url, reference="dataset:support", window="7d", interval_s=3600,
                                  webhook_url=receiver.url, thresholds={"domain_auc": 0.65}))
    alert = receiver.wait(1)[0]
    assert alert["event"] == "drift.detected" and alert["verdict"] == "drift"
    assert alert["text"].startswith("Shipyard drift detected:") and "output.json_valid" in alert["text"]
    checks = {d["check"]: d for d in alert["drifted"]}
    assert checks["output.json_valid"]["threshold"] is not None
    assert checks["semantic.output.domain_classifier"]["threshold"] == 0.65
    topics = checks["semantic.input.topics"]["topics"]
    assert any(t["status"] == "new" and t["examples"] for t in topics)
    assert alert["reference"]["spec"] == "dataset:support" and alert["current"]["records"] == 300
    assert alert["report_url"] == "/ui/drift"

    with httpx.Client(base_url=server.url, timeout=120) as http:
        latest = http.get("/api/drift/latest")
        assert latest.status_code == 200
        body = latest.json()
        assert body["summary"]["verdict"] == "drift" and body["schedule"]["alerts_sent"] == 1
        page = http.get("/ui/drift")
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "Showing the latest scheduled check" in page.text
        assert 'href="/ui"' in page.text and 'id="drift-report"' in page.text
        assert 'data-check="output.json_valid"' in page.text

        adhoc = http.get("/ui/drift", params={"reference": "dataset:support", "current": "7d", "max_semantic": "200"})
        assert adhoc.status_code == 200 and 'data-status="new"' in adhoc.text
        assert 'id="drift-download"' in adhoc.text
        missing = http.get("/ui/drift", params={"reference": "dataset:nope"})
        assert missing.status_code == 404 and 'id="page-error"' in missing.text and "nope" in missing.text
        bad = http.get("/api/drift", params={"reference": "window:7d..30d"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "reference"
        api = http.get("/api/drift", params={"reference": "dataset:support", "current": "7d", "max_semantic": "0"})
        assert api.status_code == 200 and api.json()["semantic"]["verdict"] == "skipped"
        dl = http.get("/ui/drift/report.html", params={"reference": "dataset:support", "max_semantic": "0"})
        assert dl.status_code == 200 and "attachment" in dl.headers["content-disposition"]
        assert dl.text.startswith("<!doctype html>") and "<script" not in dl.text


def test_without_a_configured_check_the_page_offers_the_form(serve, fake_openai, tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    populate(url, time.time())
    server = serve(gateway_config(fake_openai, url))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        page = http.get("/ui/drift")
        assert page.status_code == 200 and 'id="drift-form"' in page.text and 'id="drift-empty"' in page.text
        assert http.get("/api/drift/latest").status_code == 404
        ok = http.get("/api/drift", params={"reference": "dataset:support", "max_semantic": "200"})
        assert ok.status_code == 200 and ok.json()["verdict"] == "no drift", ok.json()["drifted"]


def test_alerts_on_change_resolve_once_and_ignore_not_enough_data(receiver):
    class Cfg:
        reference, window, interval_s, thresholds, webhook_url = "dataset:x", "1d", 60.0, {}, receiver.url

    sched = DriftScheduler(engine=None, cfg=Cfg())

    def summary(verdict: str, drifted: list[str]) -> dict[str, Any]:
        return {"verdict": verdict, "drifted": drifted, "generated_at": time.time(), "structural": {},
                "semantic": {}, "quality": {}, "reference": {"spec": "dataset:x", "records": 100},
                "current": {"spec": "1d", "records": 100}}

    async def run() -> None:
        for s in (summary("no drift", []), summary("drift", ["output.chars"]), summary("drift", ["output.chars"]),
                  summary("not enough data", []), summary("drift", ["output.chars", "input.chars"]),
                  summary("no drift", []), summary("no drift", [])):
            await sched._maybe_alert(s)

    asyncio.run(run())
    events = [b["event"] for b in receiver.bodies]
    assert events == ["drift.detected", "drift.detected", "drift.resolved"]
    assert receiver.bodies[2]["text"].startswith("Shipyard drift resolved")
    assert sched.alerts_sent == 3 and sched.alert_errors == 0

    # a failing receiver is retried, then counted, never raised
    receiver.fail_next = 1
    asyncio.run(sched._maybe_alert(summary("drift", ["call.latency_ms"])))
    assert receiver.bodies[-1]["event"] == "drift.detected" and sched.alert_errors == 0
    assert alert_payload(summary("drift", ["a"]), "drift.detected")["drifted"] == []


# ---- the page in a real browser ---------------------------------------------------------------
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_drift_page_in_headless_chromium(serve, fake_openai, tmp_path):
    from playwright.sync_api import sync_playwright
    from services import ensure_apt_package

    url = f"sqlite:///{tmp_path}/gw.db"
    populate(url, time.time(), new_topic=0.3)
    server = serve(gateway_config(fake_openai, url))
    executable = ensure_apt_package("chromium", "chromium")
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(120_000)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "/ui/drift")
            page.fill("input[name=reference]", "dataset:support")
            page.fill("input[name=current]", "7d")
            page.fill("input[name=max_semantic]", "300")
            page.click("#drift-form button[type=submit]")
            page.wait_for_selector("#drift-report")
            assert page.locator(".cluster[data-status=new]").count() >= 1
            new_examples = page.locator(".cluster[data-status=new] li").all_inner_texts()
            assert any("coin" in t.lower() or "crypto" in t.lower() or "staking" in t.lower() for t in new_examples)
            assert page.locator("#drift-report svg").count() > 10
            page.screenshot(path=str(tmp_path / "drift.png"), full_page=True)
            page.click("a[href='/ui']")
            page.wait_for_url(server.url + "/ui")
        finally:
            browser.close()
    assert not problems, problems
    assert (tmp_path / "drift.png").stat().st_size > 20_000


# ---- through the gateway: probe and embeddings alias ----------------------------------------------
def _config_file(tmp_path: Path, cfg: dict[str, Any]) -> str:
    path = tmp_path / "shipyard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_probe_reruns_production_inputs_and_reports_changes(serve, fake_openai, tmp_path):
    url = f"sqlite:///{tmp_path}/gw.db"
    cfg = gateway_config(fake_openai, url)
    server = serve(cfg)
    client = client_for(server)
    questions = ["Where is my order A1001?", "How do I reset my password?", "Is the lamp waterproof?"]
    for q in questions:
        client.chat.completions.create(model="support", messages=[{"role": "user", "content": q}])
    server.flush()
    cfg_path = _config_file(tmp_path, cfg)
    out = tmp_path / "probe.json"

    fake_openai.reply_text = "Always the same answer."
    assert main(["drift", "probe", "-c", cfg_path, "--current", "1d", "--sample", "3", "--repeats", "3",
                 "--json", str(out)]) == 0
    stable = orjson.loads(out.read_text())
    assert stable["probed"] == 3 and stable["changed"] == 0 and stable["verdict"] == "stable"
    assert stable["differs_from_recorded_rate"] == 1.0  # the recorded answers were the fake's default

    fake_openai.reply_queue.extend(["A", "A", "A", "B", "C", "B", "D", "D", "D"])  # 3 inputs x 3 runs, in order
    assert main(["drift", "probe", "-c", cfg_path, "--current", "1d", "--sample", "3", "--repeats", "3",
                 "--json", str(out)]) == 0
    varied = orjson.loads(out.read_text())
    assert varied["probed"] == 3 and 1 <= varied["changed"] <= 3
    assert varied["changed_rate"] == round(varied["changed"] / 3, 4)
    assert {r["input"] for r in varied["results"]} == set(questions)

    # the 18 re-runs are recorded, marked, and never count as production traffic
    store = open_store(url)
    try:
        with store._read() as cur:
            cur.execute("SELECT COUNT(*) FROM spans WHERE kind = 'llm' AND attributes LIKE '%drift_probe%'")
            assert cur.fetchone()[0] == 18
        s = run_analysis(store, "window:2d..1d", "1d", semantic=False, thresholds={"min_samples": 2})
        assert s["current"]["records"] == 3
    finally:
        store.close()


def test_an_embeddings_alias_as_the_embedder(fake_openai, tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/gw.db"
    populate(url, time.time())
    fake_openai.embedding_dim = 16
    cfg_path = _config_file(tmp_path, gateway_config(fake_openai, url))
    rc = main(["drift", "report", "-c", cfg_path, "--store", url, "--reference", "dataset:support",
               "--embedder", "alias:emb", "--max-semantic", "100", "--out", str(tmp_path / "r.html")])
    assert rc == 0, capsys.readouterr().err
    s = orjson.loads((tmp_path / "r.json").read_text())
    assert s["semantic"]["embedder"] == "alias:emb"
    assert s["semantic"]["input"]["domain_classifier"]["statistic"] is not None
    assert s["semantic"]["input"]["dims"] == 16
    embed_calls = [r for r in fake_openai.requests if r["path"].endswith("/embeddings")]
    assert len(embed_calls) >= 2
    rc = main(["drift", "report", "-c", cfg_path, "--store", url, "--reference", "dataset:support",
               "--embedder", "alias:nope", "--out", str(tmp_path / "x.html")])
    assert rc == 2 and "nope" in capsys.readouterr().err
