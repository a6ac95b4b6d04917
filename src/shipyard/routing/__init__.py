"""Targets, fallback chains, retries and circuit breakers."""
