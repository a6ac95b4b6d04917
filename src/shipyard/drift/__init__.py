"""Drift: how production differs from a reference (an eval dataset or a past window).

Structural descriptors with statistical tests chosen by sample size, semantic drift on
embeddings (a domain classifier and topic clusters with examples), judge-score and
feedback drift, and a nondeterminism probe. See docs/drift.md.

This package imports nothing heavy at import time: numpy, scipy and scikit-learn (the
``drift`` extra) are loaded when an analysis runs, and the MiniLM embedder's torch and
sentence-transformers (the ``embeddings`` extra) only when it is chosen.
"""

from __future__ import annotations

from typing import Any

from .deps import MissingDependency
from .spec import Spec, parse_spec
from .thresholds import DEFAULTS as DEFAULT_THRESHOLDS


def run_analysis(store: Any, reference: Any, current: Any, **kw: Any) -> dict[str, Any]:
    """Compare ``reference`` with ``current``; see :func:`shipyard.drift.analyze.run_analysis`."""
    from .analyze import run_analysis as run

    return run(store, reference, current, **kw)


def render_html(summary: dict[str, Any]) -> str:
    """The self-contained HTML report of a summary."""
    from .report import render_html as render

    return render(summary)


__all__ = ["DEFAULT_THRESHOLDS", "MissingDependency", "Spec", "parse_spec", "render_html", "run_analysis"]
