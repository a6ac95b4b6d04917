"""A circuit breaker per target: closed -> open after N consecutive failures ->
half-open after a cool-down (one probe at a time) -> closed on success.

State is in memory (the fast default). To share it across replicas, set ``on_change``: it is
called with (breaker, new state) when the breaker opens or closes, and ``apply_remote()``
takes another replica's transition (``shipyard/shared/breakers.py`` does both over Redis).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    failure_threshold: int = 5
    cooldown_s: float = 30.0
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    clock: "callable" = field(default=time.monotonic, repr=False)
    on_change: Any = field(default=None, repr=False)  # shared state (shared/breakers.py); None: local only

    def allow(self) -> bool:
        """May a call go to this target now? In half-open, only one probe at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self.clock() - self.opened_at < self.cooldown_s:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))

    def success(self) -> None:
        changed = self.state != CLOSED
        self.state = CLOSED
        self.failures = 0
        self.probing = False
        if changed and self.on_change is not None:
            self.on_change(self, CLOSED)

    def failure(self) -> None:
        self.probing = False
        if self.state == HALF_OPEN:
            self._open()
            return
        self.failures += 1
        if self.failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """A probe that ended without a verdict (client went away): let another one try."""
        self.probing = False

    def _open(self) -> None:
        self.state = OPEN
        self.opened_at = self.clock()
        if self.on_change is not None:
            self.on_change(self, OPEN)

    def apply_remote(self, state: str, remaining_s: float = 0.0) -> None:
        """Another replica's transition: open with ``remaining_s`` of cool-down left, or closed."""
        if state == OPEN:
            if remaining_s <= 0 or (self.state == OPEN and self.retry_in() >= remaining_s):
                return
            self.state = OPEN
            self.opened_at = self.clock() - max(0.0, self.cooldown_s - remaining_s)
            self.failures = max(self.failures, self.failure_threshold)
            self.probing = False
        elif state == CLOSED and self.state != CLOSED:
            self.state = CLOSED
            self.failures = 0
            self.probing = False
