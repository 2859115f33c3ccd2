"""Pacing for the rewrite: a token bucket (the optional writes-per-second cap), a back-off gate
shared by every worker (429 with Retry-After slows the whole run, not one worker), and the retry
policy for transient errors.

Everything takes a ``clock`` and a ``sleep`` so the unit tests run without real time.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` stored; ``rate <= 0`` means no limit.

    ``acquire`` reserves a token and sleeps until it is due, so concurrent callers queue up in
    order and the long-run rate never exceeds ``rate`` (the first ``burst`` go at once).
    """

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def reserve(self) -> float:
        """Take one token now (possibly going into debt); return how long to wait before using it."""
        if self.unlimited:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)


class BackoffGate:
    """A pause shared by all workers: after a 429 nobody writes until ``resume_at``.

    The pause is the server's ``Retry-After`` when given (API Priority and Fairness adapts it per
    priority level), else an exponential step (``base`` doubling per consecutive 429, up to ``cap``).
    A little jitter (up to ``jitter`` × the delay) keeps the workers from all returning in the same
    millisecond. A success resets the exponent.
    """

    def __init__(self, *, base: float = 1.0, cap: float = 32.0, jitter: float = 0.1,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self.resume_at = 0.0
        self.consecutive = 0
        self.throttled_total = 0
        self.paused_seconds = 0.0

    def throttled(self, retry_after: float | None) -> float:
        """Record a 429; return the pause it imposes from now on."""
        self.consecutive += 1
        self.throttled_total += 1
        if retry_after is not None and retry_after > 0:
            delay = min(retry_after, self.cap * 4)  # trust the server, within reason
        else:
            delay = min(self.cap, self.base * 2 ** (self.consecutive - 1))
        delay *= 1 + self.jitter * self._rng()
        now = self._clock()
        new_resume = max(self.resume_at, now + delay)
        self.paused_seconds += max(0.0, new_resume - max(self.resume_at, now))
        self.resume_at = new_resume
        return self.resume_at - now

    def succeeded(self) -> None:
        self.consecutive = 0

    def remaining(self) -> float:
        return max(0.0, self.resume_at - self._clock())

    async def wait(self) -> None:
        # loop: another worker may push resume_at further while we sleep
        while (delay := self.remaining()) > 0:
            await self._sleep(delay)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries, bounded by time rather than by count.

    Transient errors (5xx, timeouts, connection drops) are retried with capped exponential back-off
    and full jitter until ``retry_for`` seconds have passed since the first error *and* at least
    ``max_attempts`` tries were made: an API server restart (AKS rolls replicas on every KMS change)
    takes tens of seconds, and a Secret must not fail because its write met one. 429s get
    ``max_throttled_attempts`` (their pause comes from the shared ``BackoffGate``). Nothing is
    retried forever."""

    max_attempts: int = 5
    max_throttled_attempts: int = 30
    base: float = 0.2
    cap: float = 10.0
    retry_for: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: Callable[[], float] = random.random) -> float:
        """Pause before try number ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None and retry_after > 0:
            return min(retry_after, self.cap * 4)
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * rng())

    def give_up(self, attempts: int, elapsed: float) -> bool:
        """After ``attempts`` failed tries, the first ``elapsed`` seconds ago: stop retrying?"""
        return attempts >= self.max_attempts and elapsed >= self.retry_for
