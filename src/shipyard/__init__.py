"""Shipyard: take LLM applications from proof-of-concept to production.

The public API is what this module exports; everything else is internal.
"""

from .errors import ConfigError, GatewayError, ShipyardError
from .gateway import Gateway

__all__ = ["ConfigError", "Gateway", "GatewayError", "ShipyardError", "__version__"]
__version__ = "0.1.0"
