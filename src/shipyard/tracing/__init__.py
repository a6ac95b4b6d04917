"""Span model, context propagation and the off-request-path recorder."""
