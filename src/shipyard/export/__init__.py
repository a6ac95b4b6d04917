"""Exports of recorded traffic: fine-tuning data (``shipyard export finetune``).

See docs/feedback.md ("Fine-tuning export").
"""

from .finetune import ExportSummary, export_finetune, parse_where, render_summary
from .formats import FORMATS, VALIDATORS, validate_anthropic, validate_openai, validate_sharegpt

__all__ = ["FORMATS", "VALIDATORS", "ExportSummary", "export_finetune", "parse_where", "render_summary",
           "validate_anthropic", "validate_openai", "validate_sharegpt"]
