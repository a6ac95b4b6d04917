"""The real ``shipyard`` console script in subprocesses: config check, serve with graceful
shutdown, and reading the recorded traces back with ``traces list`` / ``traces show``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from fakes import FakeOpenAI, Fault

SECRET = "sk-live-SUPERsecret0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


def shipyard_cmd() -> list[str]:
    script = Path(sysconfig.get_path("scripts")) / "shipyard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shipyard.cli"]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHIPYARD_CONFIG", "OPENAI_API_KEY")}
    env.update(extra)
    return env


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*shipyard_cmd(), *args], cwd=cwd, env=env or base_env(),
                          capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, up: FakeOpenAI, **recording: Any) -> Path:
    rec = "".join(f"\n  {k}: {v}" for k, v in recording.items())
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
store: sqlite:///{tmp_path}/traces.db
server:
  max_body_bytes: 4096
recording:
  batch_size: 1000{rec}
providers:
  primary:
    type: openai
    base_url: {up.base_url}
    api_key: ${{OPENAI_API_KEY}}
models:
  chat:
    targets:
      - provider: primary
        model: gpt-4o-mini
    retries: 0
prices:
  gpt-4o-mini: {{input: 0.15, output: 0.60}}
""")
    return path


def assert_clean(text: str) -> None:
    assert "Traceback" not in text, text
    assert SECRET not in text, text


# ---- config check -----------------------------------------------------------------------


def test_config_check_ok(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    cfg = write_config(tmp_path, fake_openai)
    r = run("config", "check", "-c", str(cfg), cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: 1 providers, 1 models")
    assert_clean(r.stdout + r.stderr)


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("models:\n  chat:\n    targets: [{provider: p, model: m}]\n    retires: 2\nproviders: {p: {type: openai}}\n",
     "models.chat.retires"),
    ("providers:\n  p: {type: openai, bse_url: 'http://x'}\n", "providers.p.bse_url"),
    ("providers:\n  p: {type: gopher}\n", "providers.p.type"),
    ("recording:\n  redact_patterns: ['(']\n", "recording.redact_patterns"),
    ("models: [\n", "YAML"),
])
def test_config_check_bad_config_exits_2_naming_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    r = run("config", "check", "-c", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert key in r.stderr
    assert r.stderr.startswith("shipyard: ")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_config_check_missing_env_var(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    cfg = write_config(tmp_path, fake_openai)
    r = run("config", "check", "-c", str(cfg), cwd=tmp_path, env=base_env())
    assert r.returncode == 2
    assert "OPENAI_API_KEY" in r.stderr
    assert "providers.primary.api_key" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_check_missing_file(tmp_path: Path) -> None:
    r = run("config", "check", "-c", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "nope.yaml" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bogus_key: 1\n")
    r = run("config", "check", cwd=tmp_path, env=base_env(SHIPYARD_CONFIG=str(bad)))
    assert r.returncode == 2
    assert "bogus_key" in r.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    cfg = write_config(tmp_path, fake_openai)
    r = run("serve", "-c", str(cfg), "--port", str(free_port()), cwd=tmp_path, env=base_env())
    assert r.returncode == 2
    assert "OPENAI_API_KEY" in r.stderr
    assert "Traceback" not in r.stderr


def test_unopenable_store_is_a_clean_error(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("this is not a database\n" * 100)
    for store in (f"sqlite:///{tmp_path}", f"sqlite:///{not_a_db}"):  # a directory; a non-SQLite file
        r = run("traces", "list", "--store", store, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("shipyard: ")
        assert "store" in r.stderr
        assert "Traceback" not in r.stderr

    cfg = write_config(tmp_path, fake_openai)
    cfg.write_text(cfg.read_text().replace(f"sqlite:///{tmp_path}/traces.db", f"sqlite:///{not_a_db}"))
    r = run("serve", "-c", str(cfg), "--port", str(free_port()), cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
    assert r.returncode == 2
    assert "store" in r.stderr
    assert "Traceback" not in r.stderr


# ---- serve ---------------------------------------------------------------------------------


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    cfg: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="client-key", max_retries=0, timeout=30)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def serve_cli(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(cfg: Path) -> ServeProcess:
        port = free_port()
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen([*shipyard_cmd(), "serve", "-c", str(cfg), "--port", str(port)],
                                    cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET),
                                    stdout=fh, stderr=subprocess.STDOUT)
        sp = ServeProcess(proc, f"http://127.0.0.1:{port}", log, cfg)
        started.append(sp)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"shipyard serve exited with {proc.returncode}:\n{sp.output()}")
            try:
                if httpx.get(sp.url + "/health", timeout=2).status_code == 200:
                    return sp
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"shipyard serve did not become healthy:\n{sp.output()}")
            time.sleep(0.05)

    yield start
    for sp in started:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait(10)


def graceful_exit_ok(code: int) -> bool:
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown has completed
    return code in (0, -signal.SIGTERM)


def test_serve_record_and_read_back(tmp_path: Path, fake_openai: FakeOpenAI, serve_cli: Any) -> None:
    # a flush interval far in the future: only the graceful shutdown can write the spans
    cfg = write_config(tmp_path, fake_openai, flush_interval_s=3600)
    sp = serve_cli(cfg)
    client = sp.client()

    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    completion = raw.parse()
    trace_plain = raw.headers["x-shipyard-trace-id"]
    assert completion.choices[0].message.content == fake_openai.reply_text

    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, stream=True)
    trace_stream = raw.headers["x-shipyard-trace-id"]
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake_openai.reply_text
    assert trace_plain != trace_stream
    assert all(len(t) == 32 for t in (trace_plain, trace_stream))
    # the upstream saw the real key, the client's key was not forwarded
    assert fake_openai.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"

    before = run("traces", "list", "-c", str(cfg), "--json", cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["data"] == []  # nothing written yet: still queued in the server

    assert graceful_exit_ok(sp.terminate()), sp.output()
    assert_clean(sp.output())

    listed = run("traces", "list", "-c", str(cfg), "--json", cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    rows = {r["trace_id"]: r for r in data["data"]}
    assert set(rows) == {trace_plain, trace_stream}
    assert data["next_cursor"] is None
    for r in rows.values():
        assert r["alias"] == "chat" and r["status"] == "ok"
        assert (r["input_tokens"], r["output_tokens"]) == (11, 7)
        assert r["cost_usd"] == pytest.approx((11 * 0.15 + 7 * 0.60) / 1e6)

    table = run("traces", "list", "-c", str(cfg), cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
    assert table.returncode == 0
    assert trace_plain in table.stdout and trace_stream in table.stdout

    for tid in (trace_plain, trace_stream):
        shown = run("traces", "show", tid, "-c", str(cfg), cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert f"trace {tid}" in out
        assert "alias: chat" in out
        assert "provider: primary" in out
        assert "model: gpt-4o-mini" in out
        assert "input_tokens: 11" in out and "output_tokens: 7" in out
        assert "attempt primary/gpt-4o-mini: ok" in out
        assert_clean(out)

    as_json = run("traces", "show", trace_plain, "--json", "--store", f"sqlite:///{tmp_path}/traces.db",
                  cwd=tmp_path, env=base_env())
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["spans"][0]["provider"] == "primary"


def test_traces_list_filters_and_paging(tmp_path: Path, fake_openai: FakeOpenAI, serve_cli: Any) -> None:
    cfg = write_config(tmp_path, fake_openai)
    sp = serve_cli(cfg)
    client = sp.client()
    fake_openai.fail_next(Fault("status", status=500))
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="chat", messages=MESSAGES)
    for user in ("alice", "bob", "alice"):
        client.chat.completions.create(model="chat", messages=MESSAGES, user=user)
    assert graceful_exit_ok(sp.terminate())

    env = base_env(OPENAI_API_KEY=SECRET)

    def listed(*args: str) -> dict[str, Any]:
        r = run("traces", "list", "-c", str(cfg), "--json", *args, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert len(listed()["data"]) == 4
    assert [r["status"] for r in listed("--status", "error")["data"]] == ["error"]
    alice = listed("--user", "alice")["data"]
    assert [r["user_id"] for r in alice] == ["alice", "alice"]
    assert listed("--alias", "other")["data"] == []

    seen, cursor = [], None
    while True:
        page = listed("--limit", "3", *(["--cursor", cursor] if cursor else []))
        seen += [r["trace_id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4 and len(set(seen)) == 4

    bad = run("traces", "list", "-c", str(cfg), "--cursor", "garbage!", cwd=tmp_path, env=env)
    assert bad.returncode == 2
    assert "cursor" in bad.stderr and "Traceback" not in bad.stderr

    since = run("traces", "list", "-c", str(cfg), "--since", "soon", cwd=tmp_path, env=env)
    assert since.returncode == 2
    assert "--since" in since.stderr and "Traceback" not in since.stderr


def test_traces_show_unknown_id(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    cfg = write_config(tmp_path, fake_openai)
    unknown = "f" * 32
    r = run("traces", "show", unknown, "-c", str(cfg), cwd=tmp_path, env=base_env(OPENAI_API_KEY=SECRET))
    assert r.returncode == 1
    assert f"trace {unknown} not found" in r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr


def test_bad_requests_leave_no_trace_of_stack_or_secret(tmp_path: Path, fake_openai: FakeOpenAI,
                                                        serve_cli: Any) -> None:
    sp = serve_cli(write_config(tmp_path, fake_openai))
    url = sp.base_url + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer client-key"}
    bodies: list[tuple[bytes, int, str | None]] = [
        (b'{"model": "chat", "messages": [', 400, "invalid_json"),
        (b"", 400, "invalid_body"),
        (b"[1, 2]", 400, "invalid_body"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400, None),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * 8000 + b'"}]}', 413,
         "request_too_large"),
        (b"\xff\xfe\x00garbage", 400, "invalid_json"),
    ]
    with httpx.Client(timeout=30) as http:
        for body, status, code in bodies:
            r = http.post(url, content=body, headers=headers)
            assert r.status_code == status, (body[:40], r.text)
            err = r.json()["error"]
            assert err["message"]
            if code:
                assert err["code"] == code
            assert_clean(r.text)
        # an upstream rejecting the gateway's key is the gateway's failure (502), and names no key
        fake_openai.fail_next(Fault("status", status=401))
        r = http.post(url, json={"model": "chat", "messages": MESSAGES}, headers=headers)
        assert r.status_code == 502
        assert "HTTP 401" in r.json()["error"]["message"]
        assert_clean(r.text)
        assert http.get(sp.url + "/v1/nowhere").status_code == 404
        assert http.get(url).status_code == 405
    assert graceful_exit_ok(sp.terminate())
    out = sp.output()
    assert "serving OpenAI-compatible API" in out
    assert_clean(out)


def test_sigterm_drains_an_in_flight_stream(tmp_path: Path, fake_openai: FakeOpenAI, serve_cli: Any) -> None:
    words = [f"w{i}" for i in range(20)]
    fake_openai.reply_text = " ".join(words)
    fake_openai.chunk_delay = 0.05
    cfg = write_config(tmp_path, fake_openai)
    sp = serve_cli(cfg)
    raw = sp.client().chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, stream=True)
    trace_id = raw.headers["x-shipyard-trace-id"]
    stream = iter(raw.parse())
    received = [next(stream)]
    sp.proc.send_signal(signal.SIGTERM)  # mid-stream
    received += list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == fake_openai.reply_text
    assert graceful_exit_ok(sp.proc.wait(timeout=60)), sp.output()
    assert_clean(sp.output())
    shown = run("traces", "show", trace_id, "--json", "-c", str(cfg), cwd=tmp_path,
                env=base_env(OPENAI_API_KEY=SECRET))
    assert shown.returncode == 0, shown.stderr
    span = json.loads(shown.stdout)["spans"][0]
    assert span["status"] == "ok"
    assert span["output_tokens"] == 7
