"""Datasets and evaluations: the loop from recorded traffic to a gated release.

- :class:`Datasets` — versioned datasets (JSONL/CSV files, hand-picked or filtered traces)
- :func:`load_spec` / :func:`run_eval` — run an EVAL.yaml (variants x dataset, evaluators)
- :class:`EvalStore` — runs and results; reports are in ``report.py`` / ``html_report.py``
- :func:`align` — judges against human labels (agreement, Cohen's kappa, EvalGen)
- :func:`register_evaluator` — add an evaluator type (a small class)

See docs/evaluation.md.
"""

from .datasets import Datasets, ItemError, import_file, items_from_traces, normalize_item, read_rows
from .evaluators import Case, EvalContext, Evaluator, Outcome, build_evaluator, register_evaluator
from .results import EvalStore
from .runner import run_eval, run_eval_async
from .spec import load_spec


def __getattr__(name: str):  # alignment pulls in more; import it on first use
    if name == "align":
        from .alignment import align

        return align
    raise AttributeError(name)


__all__ = [
    "Case", "Datasets", "EvalContext", "EvalStore", "Evaluator", "ItemError", "Outcome", "align", "build_evaluator",
    "import_file", "items_from_traces", "load_spec", "normalize_item", "read_rows", "register_evaluator", "run_eval",
    "run_eval_async",
]
