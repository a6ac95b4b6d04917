"""The README's first command for real: `shipyard serve` with no config and no API key,
Gemma 3 270M in-process through llama.cpp, called with the official openai SDK."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.local_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("default")
    port = _free_port()
    env = {**os.environ}
    env.pop("SHIPYARD_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipyard.cli", "serve", "--port", str(port)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # first run assembles the GGUF and loads it
    while True:
        if proc.poll() is not None:
            raise RuntimeError("shipyard serve exited:\n" + proc.stdout.read())
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the default server never became ready:\n" + proc.stdout.read())
        time.sleep(0.5)
    yield url, cwd, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_embedded_default_serves_gemma_and_records(default_server):
    url, cwd, proc = default_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["local"]

    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=12, temperature=0, seed=1)
    resp = raw.parse()
    assert resp.choices[0].message.content.strip()
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    trace_id = raw.headers["x-shipyard-trace-id"]

    chunks = list(client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Count: one, two,"}],
        max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None

    # an enum keeps the grammar's answer short: a base model otherwise rambles inside strings
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    resp = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Give a colour as JSON."}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert json.loads(resp.choices[0].message.content)["colour"] in ("red", "green", "blue")

    # the SQLite store lives in the working directory; read the trace back with the CLI
    proc.send_signal(signal.SIGTERM)  # graceful shutdown flushes the recorder
    proc.wait(60)
    assert (Path(cwd) / "shipyard.db").exists()
    out = subprocess.run([sys.executable, "-m", "shipyard.cli", "traces", "show", trace_id, "--json"],
                         cwd=cwd, capture_output=True, text=True, check=True).stdout
    span = json.loads(out)["spans"][0]
    assert span["alias"] == "local" and span["provider"] == "local"
    assert span["input_tokens"] > 0 and span["cost_usd"] is None  # no price for a local model
