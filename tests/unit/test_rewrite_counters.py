"""Outcome classification, counters, checkpoint round trip and the namespace watermark."""

from __future__ import annotations

import asyncio

import pytest

from aks_kms_operator.rewrite import Outcome, RewriteCheckpoint, RewriteCounters
from aks_kms_operator.rewrite.counters import classify_status, classify_write
from aks_kms_operator.rewrite.engine import _NamespaceTracker, noop_patch


@pytest.mark.parametrize(("status", "outcome"), [
    (404, Outcome.SKIPPED), (409, Outcome.SKIPPED), (403, Outcome.FAILED), (422, Outcome.FAILED),
    (400, Outcome.FAILED), (429, None), (500, None), (503, None), (504, None),
])
def test_classify_status(status: int, outcome: Outcome | None) -> None:
    assert classify_status(status) is outcome


def test_classify_write_by_resource_version() -> None:
    assert classify_write("10", "10") is Outcome.ALREADY_CURRENT
    assert classify_write("10", "11") is Outcome.REENCRYPTED


def test_counters_record_and_cap_failures() -> None:
    c = RewriteCounters(max_failures=2)
    for outcome in (Outcome.REENCRYPTED, Outcome.ALREADY_CURRENT, Outcome.ALREADY_CURRENT, Outcome.SKIPPED):
        c.record(outcome)
    for i in range(3):
        c.record(Outcome.FAILED, f"ns/s{i}", "403 Forbidden: no")
    assert (c.reencrypted, c.already_current, c.skipped, c.failed, c.done) == (1, 2, 1, 3, 7)
    assert c.failures == ["ns/s0: 403 Forbidden: no", "ns/s1: 403 Forbidden: no"]


def test_counters_add() -> None:
    a = RewriteCounters(seen=3, reencrypted=2, failed=1, failures=["a/x: e"])
    a.add(RewriteCounters(seen=2, already_current=2, failures=["b/y: e"]))
    assert (a.seen, a.reencrypted, a.already_current, a.failed) == (5, 2, 2, 1)
    assert a.failures == ["a/x: e", "b/y: e"]


def test_checkpoint_status_round_trip() -> None:
    cp = RewriteCheckpoint("key-2", last_namespace="kube-system",
                           counters=RewriteCounters(seen=10, reencrypted=7, already_current=2, failed=1,
                                                    failures=["a/b: 403"]),
                           started_at="2025-01-01T00:00:00Z", namespaces_total=5, namespaces_done=3,
                           secrets_total=20, writes_per_second=12.345)
    status = cp.to_status()
    assert status["progress"] == "10/20" and status["writesPerSecond"] == 12.35
    assert status["alreadyCurrent"] == 2 and status["lastNamespace"] == "kube-system"
    back = RewriteCheckpoint.from_status(status)
    assert back.counters == cp.counters and back.last_namespace == "kube-system" and not back.completed


def test_noop_patch_carries_identity_only() -> None:
    assert noop_patch("u", "7") == {"metadata": {"uid": "u", "resourceVersion": "7"}}
    assert noop_patch("u", None) == {"metadata": {"uid": "u"}}


def test_watermark_advances_only_over_a_finished_prefix() -> None:
    async def go() -> None:
        t = _NamespaceTracker("", RewriteCounters(), 0)
        a = t.open("a", 20)
        t.add("a")
        a.seen += 1
        t.listed("a")
        b = t.open("b", 20)
        t.listed("b")  # empty namespace, but after an unfinished one
        c = t.open("c", 20)
        t.add("c")
        c.seen += 1
        t.listed("c")
        assert t.watermark == ""
        c.record(Outcome.REENCRYPTED)
        t.finish_one("c")  # c finishes before a: still nothing
        assert t.watermark == "" and t.done == 0
        a.record(Outcome.ALREADY_CURRENT)
        t.finish_one("a")  # a finishes: a, b, c all done in order
        assert t.watermark == "c" and t.done == 3
        assert (t.committed.seen, t.committed.reencrypted, t.committed.already_current) == (2, 1, 1)
        assert b.seen == 0

    asyncio.run(go())


def test_watermark_stops_at_a_namespace_not_fully_listed() -> None:
    async def go() -> None:
        t = _NamespaceTracker("x", RewriteCounters(), 4)
        t.open("y", 20)
        t.add("y")
        t.finish_one("y")  # all written, but the list was interrupted (pause)
        assert t.watermark == "x" and t.done == 4

    asyncio.run(go())


def test_watermark_is_always_a_finished_prefix_whatever_the_order() -> None:
    """Any interleaving of lists and write answers across namespaces (seeded shuffles): every
    namespace at or before the watermark is listed and fully answered, and the end is the last one."""
    import random

    for seed in range(200):
        rng = random.Random(seed)
        namespaces = [f"ns{i:02d}" for i in range(rng.randint(1, 12))]
        sizes = {ns: rng.randint(0, 4) for ns in namespaces}
        t = _NamespaceTracker("", RewriteCounters(), 0)
        for ns in namespaces:
            t.open(ns, 20)
        events = [("listed", ns) for ns in namespaces]
        events += [("write", ns) for ns in namespaces for _ in range(sizes[ns])]
        rng.shuffle(events)
        listed: set[str] = set()
        added = {ns: 0 for ns in namespaces}
        answered = {ns: 0 for ns in namespaces}
        for ns in namespaces:
            for _ in range(sizes[ns]):
                t.add(ns)
                added[ns] += 1
        for kind, ns in events:
            if kind == "listed":
                t.listed(ns)
                listed.add(ns)
            else:
                t.finish_one(ns)
                answered[ns] += 1
            prefix = [n for n in namespaces if n <= t.watermark] if t.watermark else []
            assert all(n in listed and answered[n] == added[n] for n in prefix), (seed, t.watermark)
            assert t.done == len(prefix)
        assert t.watermark == namespaces[-1] and len(t) == 0


def test_namespaces_must_be_opened_in_sorted_order() -> None:
    t = _NamespaceTracker("", RewriteCounters(), 0)
    t.open("m", 20)
    with pytest.raises(ValueError, match="sorted order"):
        t.open("a", 20)
    with pytest.raises(ValueError, match="sorted order"):
        t.open("m-x", 20)  # storage order: "m-x/" < "m/"
