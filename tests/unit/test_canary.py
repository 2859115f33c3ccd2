"""The key-switch window of ``wait_for_key_switch``: what counts as agreement, what restarts it.

The answers stand in for what different API server replicas say to a no-op write of the canary
(the integration tests run the real thing); time is fake so the windows cost nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from aks_kms_operator.kube import KubeError
from aks_kms_operator.rewrite import CANARY_GONE, CANARY_REPLACED, KEY_SWITCH_TIMEOUT, Canary, wait_for_key_switch


class Replicas:
    """Each probe gets the next answer: an RV string, an int (HTTP error) or an exception."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.probes = 0

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert method == "PATCH" and path.endswith("/aks-kms-canary")
        answer = self.answers[min(self.probes, len(self.answers) - 1)]
        self.probes += 1
        if isinstance(answer, int):
            raise KubeError(answer, "Reason", "metadata.uid: Invalid value: field is immutable" if answer == 422
                            else "message")
        if isinstance(answer, BaseException):
            raise answer
        return {"metadata": {"resourceVersion": answer, "uid": "u1"}}


def probe(answers: list[Any], **kwargs: Any) -> Any:
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    kwargs = {"window": 90.0, "interval": 10.0, "min_probes": 3, "timeout": 900.0, **kwargs}
    return asyncio.run(wait_for_key_switch(Replicas(answers), "ns", Canary("1", "u1"),  # type: ignore[arg-type]
                                           clock=lambda: now[0], sleep=sleep, **kwargs))


def test_switch_needs_a_change_and_then_a_whole_window_of_agreement() -> None:
    r = probe(["1", "1", "2", *["2"] * 20])
    assert r.switched and r.resource_version == "2"
    assert r.elapsed_seconds == 110  # change at t=20, agreeing until t=110 (90 s window)
    assert r.probes == 12


def test_three_stable_probes_are_not_enough_any_more() -> None:
    """The old rule (3 probes, 10 s apart, after the change) would have passed at t=50 below."""
    lagging = ["2", "2", "2", "2", 500, "2", "2"]  # the replica still on the old key fails to decrypt at t=40
    r = probe(["1", "1", "2", *lagging, *["2"] * 20])
    assert r.switched and r.resets == 1 and r.errors == 1
    assert r.elapsed_seconds >= 70 + 90


def test_a_second_change_restarts_the_window() -> None:
    r = probe(["2", "2", "2", "2", "3", *["3"] * 20])
    assert r.switched and r.resource_version == "3" and r.resets == 1
    assert r.elapsed_seconds == 40 + 90


def test_dropped_connections_restart_the_window_but_429_does_not() -> None:
    r = probe(["2", "2", aiohttp.ServerDisconnectedError(), *["2"] * 20])
    assert r.resets == 1 and r.elapsed_seconds == 30 + 90
    throttled = probe(["2", "2", 429, *["2"] * 20])
    assert throttled.resets == 0 and throttled.elapsed_seconds == 90


def test_no_change_times_out_with_the_reason() -> None:
    r = probe(["1"], timeout=120)
    assert not r.switched and r.reason == KEY_SWITCH_TIMEOUT
    assert "never changed" in r.message


def test_never_agreeing_times_out() -> None:
    r = probe(["2", 503], timeout=200)
    assert not r.switched and r.reason == KEY_SWITCH_TIMEOUT and "no 90s window" in r.message


def test_deleted_or_recreated_canary_ends_the_wait() -> None:
    assert probe(["1", 404]).reason == CANARY_GONE
    assert probe(["1", "2", 422]).reason == CANARY_REPLACED  # what a merge patch with the old uid gets


def test_recreated_canary_needs_only_the_window() -> None:
    r = probe(["1"], require_change=False)
    assert r.switched and r.elapsed_seconds == 90


def test_the_window_needs_a_minimum_of_probes() -> None:
    r = probe(["2"], interval=60.0, window=90.0, min_probes=4)
    assert r.switched and r.probes == 4 and r.elapsed_seconds == 180  # 4 agreeing probes, the change included
