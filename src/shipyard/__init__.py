"""Shipyard: take LLM applications from proof-of-concept to production.

The public API is what this module exports; everything else is internal.
"""

from .errors import ConfigError, GatewayError, ShipyardError
from .gateway import Gateway
from .tracing.observe import configure, observe, trace_headers, traced_async_http_client, traced_http_client

__all__ = [
    "ConfigError", "Gateway", "GatewayError", "ShipyardError", "__version__",
    "configure", "observe", "trace_headers", "traced_async_http_client", "traced_http_client",
]
__version__ = "0.1.0"
