"""Optional dependencies, and the error that names the extra to install."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ShipyardError

DRIFT_EXTRA = "pip install 'shipyard[drift]'  (scipy, scikit-learn)"
EMBEDDINGS_EXTRA = ("pip install torch==2.13.0 && pip install 'shipyard[embeddings]'  "
                    "(install torch==2.13.0 first: it is the CPU build; a plain torch pulls a multi-GB CUDA build)")


class MissingDependency(ShipyardError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str = DRIFT_EXTRA, what: str = "drift analysis") -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{what} needs the Python package {module.split('.')[0]!r}, which is not "
                                f"installed ({exc}); install it with: {extra}") from None


def require_numeric() -> None:
    """numpy, scipy and scikit-learn, or MissingDependency naming the 'drift' extra."""
    for m in ("numpy", "scipy.stats", "sklearn"):
        require(m)
