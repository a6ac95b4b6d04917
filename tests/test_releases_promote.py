"""Promotion behind an eval gate (the real `shipyard eval run`), the audit trail, rollback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from test_releases_support import create_prompt, fast_alias, http, providers

from shipyard.cli import main

MINI = "gpt-4o-mini-2024-07-18"


def labels(h: Any, name: str) -> dict[str, int]:
    return {k: v["version"] for k, v in h.get(f"/api/prompts/{name}").json()["labels"].items()}


def test_promotion_waits_for_the_eval_gate(tmp_path: Path, serve: Any, fake_openai: Any, capsys: Any) -> None:
    db = f"sqlite:///{tmp_path}/gate.db"
    s = serve({"store": db, "providers": providers(fake_openai),
               "models": {"gated": fast_alias({"provider": "p", "model": MINI})}})
    with http(s) as h:
        create_prompt(h, "capital", "gated", [{"role": "system", "content": "Answer briefly."}],
                      labels=["production"])
        create_prompt(h, "capital", "gated", [{"role": "system", "content": "Answer in one word."}],
                      labels=["staging"])
    data = tmp_path / "capitals.jsonl"
    data.write_text("\n".join(orjson.dumps({"messages": [{"role": "user", "content": q}], "expected": "Paris"}).decode()
                              for q in ("Capital of France?", "France's capital city?", "Where is the Louvre?")))
    assert main(["datasets", "import", "capitals", str(data), "--store", db]) == 0
    spec = tmp_path / "gate.yaml"
    spec.write_text(yaml.safe_dump({  # the version under test reaches the eval as ${SHIPYARD_GATE_MODEL}
        "name": "capital-gate", "gateway_url": s.url, "store": db, "dataset": "capitals",
        "models": ["${SHIPYARD_GATE_MODEL}"], "evaluators": [{"type": "contains", "ignore_case": True}],
        "concurrency": 1}))
    promote = ["release", "promote", "capital", "--to", "production", "--version", "2", "--gate", str(spec),
               "--fail-under", "0.9", "--by", "alice", "--store", db]
    capsys.readouterr()

    fake_openai.reply_text = "London"  # version 2 gets it wrong: the gate fails, the label stays
    assert main(promote) == 1
    err = capsys.readouterr().err
    assert "Promotion of prompt 'capital' version 2 to 'production' was rejected: the gate" in err
    with http(s) as h:
        assert labels(h, "capital") == {"production": 1, "staging": 2}
    sent = [r["json"]["messages"][0]["content"] for r in fake_openai.requests]
    assert sent == ["Answer in one word."] * 3  # the gate evaluated exactly the candidate version

    fake_openai.reply_text = "Paris"
    assert main(promote) == 0
    assert "promoted capital v2 to production (was v1) by alice; gate" in capsys.readouterr().out
    with http(s) as h:
        assert labels(h, "capital") == {"production": 2, "staging": 2}
        audit = h.get("/api/releases/audit", params={"prompt": "capital"}).json()["data"]
    ok, rejected = audit[0], audit[1]
    assert (ok["action"], ok["actor"], ok["label"], ok["from_version"], ok["to_version"], ok["gate_passed"]) == \
        ("promote", "alice", "production", 1, 2, True)
    assert ok["gate"] == str(spec)
    assert (rejected["action"], rejected["gate_passed"], rejected["to_version"]) == ("promote_rejected", False, 2)
    assert "pass rate" in rejected["detail"]["summary"]

    assert main(["release", "audit", "--store", db]) == 0
    out = capsys.readouterr().out
    assert "promote_rejected" in out and "FAILED" in out and "alice" in out
    assert main(["release", "rollback", "capital", "--label", "production", "--by", "bob", "--store", db]) == 0
    assert "rolled back capital production: v2 -> v1" in capsys.readouterr().out


def test_protected_labels_need_a_gate_and_missing_things_fail_closed(tmp_path: Path, capsys: Any) -> None:
    store = ["--store", f"sqlite:///{tmp_path}/p.db"]
    f = tmp_path / "v.yaml"
    f.write_text("model: chat\nmessages: [{role: system, content: hi}]\n")
    assert main(["prompts", "create", "p", "--file", str(f), "--label", "production", *store]) == 0
    assert main(["prompts", "create", "p", "--file", str(f), *store]) == 0
    capsys.readouterr()
    assert main(["release", "promote", "p", "--to", "production", *store]) == 1
    assert "needs an eval gate" in capsys.readouterr().err
    assert main(["release", "promote", "p", "--to", "production", "--gate", str(tmp_path / "missing.yaml"),
                 *store]) == 1
    assert "no such eval file" in capsys.readouterr().err
    assert main(["release", "promote", "nope", "--to", "production", "--gate", "x.yaml", *store]) == 1
    assert "Prompt 'nope' does not exist" in capsys.readouterr().err
    assert main(["release", "promote", "p", "--to", "production", "--version", "9", "--gate", "x.yaml",
                 *store]) == 1
    assert "no version 9 (latest is 2)" in capsys.readouterr().err
    assert main(["release", "promote", "p", "--to", "production", "--force", "--by", "ops", "--json", *store]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["promoted"] and out["action"] == "promote_forced" and out["to_version"] == 2
    assert main(["release", "promote", "p", "--to", "canary", *store]) == 0  # unprotected: no gate needed


def test_admin_api_promotion_uses_the_configured_gate_command(tmp_path: Path, serve: Any, fake_openai: Any) -> None:
    verdict = tmp_path / "verdict"
    script = tmp_path / "gate.py"
    script.write_text("import os, pathlib, sys\n"
                      "print('evaluated', os.environ['SHIPYARD_GATE_MODEL'], 'from', sys.argv[1])\n"
                      f"sys.exit(int(pathlib.Path({str(verdict)!r}).read_text()))\n")
    s = serve({"providers": providers(fake_openai), "models": {"chat": fast_alias({"provider": "p", "model": MINI})},
               "releases": {"gate_command": [sys.executable, str(script), "{eval}"]}})
    with http(s) as h:
        create_prompt(h, "p", "chat", [{"role": "system", "content": "one"}], labels=["production"])
        create_prompt(h, "p", "chat", [{"role": "system", "content": "two"}], labels=["staging"])
        verdict.write_text("1")
        r = h.post("/api/prompts/p/promote", json={"to": "production", "from": "staging", "gate": "suite.yaml",
                                                    "by": "erin"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
        assert "evaluated prompt:p@2 from suite.yaml" in r.json()["error"]["message"]
        assert labels(h, "p")["production"] == 1
        verdict.write_text("0")
        r = h.post("/api/prompts/p/promote", json={"to": "production", "from": "staging", "gate": "suite.yaml",
                                                    "by": "erin"})
        assert r.status_code == 200, r.text
        assert r.json()["to_version"] == 2 and r.json()["actor"] == "erin"
        assert labels(h, "p")["production"] == 2
        # the running gateway serves the promoted version at once
        from conftest import client_for

        client_for(s).chat.completions.create(model="prompt:p@production", messages=[{"role": "user", "content": "x"}])
        assert fake_openai.requests[-1]["json"]["messages"][0]["content"] == "two"
