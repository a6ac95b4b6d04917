"""Feedback, human review and labels: the part of the loop where people (and judges) say
what they think of recorded traffic.

- :class:`FeedbackService` — record explicit / implicit feedback and outcomes, addressed by
  trace id or completion id, idempotently; read it back per trace
- :func:`feedback_stats` — rates over time by alias, model, prompt version or route
- :func:`build_queue` / :func:`get_queue` — the materialised daily review queue
- :func:`set_review` / :func:`iter_human_labels` — human labels (the ``human_labels`` table
  judge alignment reads)

See docs/feedback.md.
"""

from .labels import OVERALL, clear_review, export_labels, get_labels, iter_human_labels, set_review
from .model import EXPLICIT, IMPLICIT, KINDS, SOURCES, FeedbackIn, OutcomeIn, parse_feedback, parse_outcome
from .queue import build_queue, get_queue
from .service import FeedbackService, service_for
from .stats import feedback_stats

__all__ = [
    "EXPLICIT", "IMPLICIT", "KINDS", "OVERALL", "SOURCES", "FeedbackIn", "FeedbackService", "OutcomeIn",
    "build_queue", "clear_review", "export_labels", "feedback_stats", "get_labels", "get_queue",
    "iter_human_labels", "parse_feedback", "parse_outcome", "service_for", "set_review",
]
