"""Leader election rules that need no API server: when a Lease may be taken, what is written, settings.

The protocol itself (two real operator processes, kill -9, graceful release) is in
tests/integration/test_leader_election.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from aks_kms_operator.leader import LeaderSettings, LeaseRecord, lease_body, may_take, micro_time

NOW = dt.datetime(2026, 12, 1, 4, 0, 0, 123456, tzinfo=dt.UTC)


def record(holder: str = "", *, duration: float = 15, transitions: int = 0, acquired: str | None = None,
           rv: str = "7") -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, transitions=transitions, acquire_time=acquired,
                       resource_version=rv)


@pytest.mark.parametrize(("holder", "unchanged_for", "expected"), [
    ("", 0.0, True),  # released or never held
    ("me", 0.0, True),  # our own (a restarted container with the same POD_NAME)
    ("other", 0.0, False),
    ("other", 14.9, False),  # not yet a whole lease duration without a change
    ("other", 15.0, True),
])
def test_may_take(holder: str, unchanged_for: float, expected: bool) -> None:
    assert may_take(record(holder), "me", unchanged_for=unchanged_for) is expected


def test_expiry_follows_the_duration_written_in_the_lease() -> None:
    """A holder configured with a longer lease is given its own duration, not ours."""
    assert not may_take(record("other", duration=60), "me", unchanged_for=30)
    assert may_take(record("other", duration=60), "me", unchanged_for=60)


def test_parse_reads_a_real_lease_shape() -> None:
    lease = {"metadata": {"name": "x", "resourceVersion": "42"},
             "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15, "leaseTransitions": 3,
                      "acquireTime": "2026-12-01T03:00:00.000000Z", "renewTime": "2026-12-01T03:59:59.000000Z"}}
    assert LeaseRecord.parse(lease) == LeaseRecord("pod-a", 15.0, 3, "2026-12-01T03:00:00.000000Z", "42")
    assert LeaseRecord.parse({"metadata": {"resourceVersion": "1"}, "spec": {}}).holder == ""


def test_micro_time_is_rfc3339_with_microseconds_in_utc() -> None:
    assert micro_time(NOW) == "2026-12-01T04:00:00.123456Z"
    assert micro_time(NOW.astimezone(dt.timezone(dt.timedelta(hours=2)))) == "2026-12-01T04:00:00.123456Z"


def test_create_body() -> None:
    body = lease_body("aks-kms-operator", "ns", "pod-a", duration=15, now=NOW, previous=None)
    assert body["metadata"] == {"name": "aks-kms-operator", "namespace": "ns"}  # no resourceVersion on create
    assert body["spec"] == {"holderIdentity": "pod-a", "leaseDurationSeconds": 15,
                            "acquireTime": micro_time(NOW), "renewTime": micro_time(NOW), "leaseTransitions": 0}


def test_renew_keeps_acquire_time_and_transitions_and_carries_the_resource_version() -> None:
    previous = record("pod-a", transitions=2, acquired="2026-12-01T03:00:00.000000Z", rv="99")
    body = lease_body("l", "ns", "pod-a", duration=15, now=NOW, previous=previous)
    assert body["metadata"]["resourceVersion"] == "99"
    assert body["spec"]["acquireTime"] == "2026-12-01T03:00:00.000000Z"
    assert body["spec"]["renewTime"] == micro_time(NOW)
    assert body["spec"]["leaseTransitions"] == 2


def test_takeover_counts_a_transition_and_restarts_acquire_time() -> None:
    previous = record("pod-a", transitions=2, acquired="2026-12-01T03:00:00.000000Z", rv="99")
    spec = lease_body("l", "ns", "pod-b", duration=15, now=NOW, previous=previous)["spec"]
    assert spec["holderIdentity"] == "pod-b" and spec["leaseTransitions"] == 3
    assert spec["acquireTime"] == micro_time(NOW)


def test_release_clears_the_holder_without_counting_a_transition() -> None:
    previous = record("pod-a", transitions=2, rv="99")
    spec = lease_body("l", "ns", "", duration=1, now=NOW, previous=previous)["spec"]
    assert spec["holderIdentity"] == "" and spec["leaseTransitions"] == 2 and spec["leaseDurationSeconds"] == 1
    # ... and the next holder's takeover is the transition
    after = record("", transitions=2, rv="100")
    assert lease_body("l", "ns", "pod-b", duration=15, now=NOW, previous=after)["spec"]["leaseTransitions"] == 3


def test_settings_defaults_follow_client_go() -> None:
    s = LeaderSettings.from_env({"POD_NAME": "op-1", "AKS_KMS_NAMESPACE": "kms"})
    assert s.enabled and s.identity == "op-1" and s.namespace == "kms" and s.lease_name == "aks-kms-operator"
    assert (s.lease_duration, s.renew_interval, s.renew_deadline) == (15, 5, 10)
    assert s.retry_interval == 2


def test_settings_from_env() -> None:
    s = LeaderSettings.from_env({"AKS_KMS_LEADER_ELECTION": "false", "AKS_KMS_LEASE_NAME": "x",
                                 "AKS_KMS_LEASE_DURATION_SECONDS": "30", "POD_NAMESPACE": "pod-ns"})
    assert not s.enabled and s.lease_name == "x" and s.namespace == "pod-ns"
    assert (s.lease_duration, s.renew_interval, s.renew_deadline) == (30, 10, 20)


def test_identity_without_pod_name_is_unique_per_process() -> None:
    import os

    assert LeaderSettings.from_env({}).identity.endswith(f"-{os.getpid()}")


@pytest.mark.parametrize("env", [
    {"AKS_KMS_LEASE_DURATION_SECONDS": "10", "AKS_KMS_LEASE_RENEW_DEADLINE_SECONDS": "10"},
    {"AKS_KMS_LEASE_RENEW_INTERVAL_SECONDS": "12"},
    {"AKS_KMS_LEASE_RENEW_INTERVAL_SECONDS": "0"},
])
def test_settings_refuse_timings_that_allow_two_leaders(env: dict[str, str]) -> None:
    """The deadline must end before a standby may consider the Lease expired."""
    with pytest.raises(ValueError, match="leader election"):
        LeaderSettings.from_env(env)
