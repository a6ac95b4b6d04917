"""State shared by replicas through Redis: the connection (``redis.py``: ``get_redis(config)``),
rate limits and budgets (``limiter.py``), circuit-breaker transitions (``breakers.py``) and
key-change notifications (``notify.py``). See docs/operations.md."""
