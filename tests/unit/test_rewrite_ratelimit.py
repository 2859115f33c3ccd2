"""Token bucket, shared back-off gate and retry policy, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from aks_kms_operator.rewrite import BackoffGate, RetryPolicy, TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_unlimited_bucket_never_waits() -> None:
    t = FakeTime()
    bucket = TokenBucket(0, clock=t.clock, sleep=t.sleep)
    assert bucket.unlimited
    assert all(bucket.reserve() == 0 for _ in range(1000))


def test_bucket_allows_burst_then_paces_at_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(10, burst=5, clock=t.clock, sleep=t.sleep)
    assert [bucket.reserve() for _ in range(5)] == [0] * 5
    # the next reservations queue up 0.1 s apart
    assert [round(bucket.reserve(), 6) for _ in range(3)] == [0.1, 0.2, 0.3]


def test_bucket_long_run_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(20, burst=1, clock=t.clock, sleep=t.sleep)

    async def go() -> None:
        for _ in range(200):
            await bucket.acquire()

    asyncio.run(go())
    # 200 tokens at 20/s with a burst of 1: about 10 s
    assert 9.9 <= t.now <= 10.0


def test_bucket_refills_but_not_beyond_burst() -> None:
    t = FakeTime()
    bucket = TokenBucket(1, burst=2, clock=t.clock, sleep=t.sleep)
    bucket.reserve()
    bucket.reserve()
    t.now += 100  # idle a long time: only `burst` tokens come back
    assert [bucket.reserve() for _ in range(2)] == [0, 0]
    assert bucket.reserve() == pytest.approx(1.0)


def test_gate_honours_retry_after_and_is_shared() -> None:
    t = FakeTime()
    gate = BackoffGate(jitter=0.0, clock=t.clock, sleep=t.sleep)
    assert gate.throttled(3.0) == 3.0
    # a shorter Retry-After from another worker does not shorten the pause
    assert gate.throttled(1.0) == 3.0

    async def workers() -> None:
        await asyncio.gather(gate.wait(), gate.wait())

    asyncio.run(workers())
    assert t.now == pytest.approx(3.0)
    assert gate.remaining() == 0 and gate.throttled_total == 2


def test_gate_exponential_without_retry_after_and_reset() -> None:
    t = FakeTime()
    gate = BackoffGate(base=1.0, cap=8.0, jitter=0.0, clock=t.clock, sleep=t.sleep)
    delays = []
    for _ in range(6):
        delays.append(gate.throttled(None))
        t.now = gate.resume_at
    assert delays == [1, 2, 4, 8, 8, 8]
    gate.succeeded()
    assert gate.throttled(None) == 1


def test_gate_jitter_is_bounded() -> None:
    t = FakeTime()
    gate = BackoffGate(jitter=0.2, clock=t.clock, sleep=t.sleep, rng=lambda: 1.0)
    assert gate.throttled(5.0) == pytest.approx(6.0)


def test_gate_caps_absurd_retry_after() -> None:
    gate = BackoffGate(cap=32.0, jitter=0.0, clock=lambda: 0.0)
    assert gate.throttled(10_000) == 128.0


def test_retry_policy_is_capped_and_jittered() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0)
    assert [policy.delay(a, rng=lambda: 1.0) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(3, rng=lambda: 0.0) == 1.0  # half the ceiling at least
    assert policy.delay(1, retry_after=2.5) == 2.5
