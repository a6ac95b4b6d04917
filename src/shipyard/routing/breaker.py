"""A circuit breaker per target: closed -> open after N consecutive failures ->
half-open after a cool-down (one probe at a time) -> closed on success."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
        self.state = CLOSED
        self.failures = 0
        self.probing = False

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
