"""aks_kms_operator.metrics: bounded labels, checkpoint deltas, key slots, the listen address.

Pure logic on prometheus-client's real registry; the running operator's /metrics is checked in
tests/integration/test_reconcile.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from prometheus_client import REGISTRY

from aks_kms_operator import metrics
from aks_kms_operator.model import KeyState
from aks_kms_operator.rewrite.checkpoint import MemoryStore, RewriteCheckpoint
from aks_kms_operator.rewrite.counters import RewriteCounters

KEY = "https://kv.vault.azure.net/keys/etcd/" + "a" * 32


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.parametrize(("service", "method", "url", "operation"), [
    ("arm", "GET", "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/"
                   "Microsoft.ContainerService/managedClusters/aks?api-version=2025-01-01", "GET managedClusters"),
    ("arm", "PUT", "https://m/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/"
                   "managedClusters/aks", "PUT managedClusters"),
    ("arm", "GET", "https://m/subscriptions/s/providers/Microsoft.ContainerService/locations/westeurope/"
                   "operations/0f1e", "GET operations"),
    ("arm", "GET", "https://m/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv/"
                   "providers/Microsoft.Authorization/roleAssignments", "GET roleAssignments"),
    ("arm", "GET", "https://m/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/x", "GET other"),
    ("arm", "BREW", "https://m/", "OTHER other"),
    ("keyvault", "GET", "https://kv.vault.azure.net/keys/etcd/" + "a" * 32 + "?api-version=7.5", "GetKey"),
    ("keyvault", "GET", "https://kv.vault.azure.net/keys/etcd", "GetKey"),
    ("keyvault", "GET", "https://kv.vault.azure.net/keys/etcd/versions", "ListKeyVersions"),
    ("keyvault", "POST", "https://kv.vault.azure.net/keys/etcd/rotate", "RotateKey"),
    ("keyvault", "GET", "https://kv.vault.azure.net/keys/etcd/rotationpolicy", "GetKeyRotationPolicy"),
    ("keyvault", "DELETE", "https://kv.vault.azure.net/keys/etcd", "other"),
])
def test_azure_operations_are_a_fixed_vocabulary(service: str, method: str, url: str, operation: str) -> None:
    """Resource names never become label values: one label value per kind of call."""
    assert metrics.azure_operation(service, method, url) == operation


def test_throttles_are_counted_with_the_request() -> None:
    before = value("aks_kms_azure_throttles_total", service="arm", operation="GET managedClusters") or 0
    metrics.observe_azure("arm", "GET managedClusters", "429", 0.2)
    metrics.observe_azure("arm", "GET managedClusters", "200", 0.1)
    assert value("aks_kms_azure_throttles_total", service="arm", operation="GET managedClusters") == before + 1
    assert value("aks_kms_azure_requests_total", service="arm", operation="GET managedClusters", code="429")


@pytest.mark.parametrize(("text", "expected"), [
    ("", None), ("  ", None), (":8081", ("0.0.0.0", 8081)), ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:9000", ("::1", 9000)),
])
def test_metrics_address(text: str, expected: tuple[str, int] | None) -> None:
    assert metrics.parse_address(text) == expected


@pytest.mark.parametrize("text", ["8081", "host:", "host:http", "0.0.0.0:70000"])
def test_bad_metrics_address_names_the_flag_and_the_fix(text: str) -> None:
    with pytest.raises(ValueError, match=r"--metrics-address.*0\.0\.0\.0:8081"):
        metrics.parse_address(text)


def checkpoint(seen: int, reencrypted: int, current: int = 0, *, done: int = 0, total: int = 4) -> RewriteCheckpoint:
    return RewriteCheckpoint(KEY, counters=RewriteCounters(seen=seen, reencrypted=reencrypted,
                                                           already_current=current),
                             namespaces_total=total, namespaces_done=done, writes_per_second=12.5)


def test_checkpoints_become_counter_increments_without_double_counting_a_resume() -> None:
    async def run() -> None:
        # a run resumed from a checkpoint with 10 Secrets already counted by the previous process
        store = metrics.MeteredCheckpoints(MemoryStore(checkpoint(10, 10, done=1)), "p-resume", "rewrite")
        assert await store.load() is not None
        await store.save(checkpoint(15, 14, 1, done=2))
        await store.save(checkpoint(20, 18, 2, done=4))
        # a new run: its counters start from zero again
        await store.save(checkpoint(3, 3, done=1))

    asyncio.run(run())
    labels = {"policy": "p-resume", "pass": "rewrite"}
    assert value("aks_kms_rewrite_secrets_seen_total", **labels) == 10 + 3
    assert value("aks_kms_rewrite_secrets_total", outcome="reencrypted", **labels) == 8 + 3
    assert value("aks_kms_rewrite_secrets_total", outcome="already_current", **labels) == 2
    assert value("aks_kms_rewrite_secrets_total", outcome="failed", **labels) == 0  # present at zero
    assert value("aks_kms_rewrite_namespaces_done", **labels) == 1
    assert value("aks_kms_rewrite_namespaces", **labels) == 4
    assert value("aks_kms_rewrite_writes_per_second", **labels) == 12.5


def test_key_slots_and_phase() -> None:
    expiry = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    slots = {"current": metrics.SlotFacts(KEY, KeyState(KEY, expires_on=expiry), True),
             "previous": metrics.SlotFacts(KEY.replace("a", "b"), KeyState(KEY.replace("a", "b"), enabled=False),
                                           False)}
    metrics.record_policy("p-slots", phase="Rewriting", ready=False, slots=slots, encrypted_with=KEY,
                          newer_version=True)
    assert value("aks_kms_policy_phase", policy="p-slots", phase="Rewriting") == 1
    assert value("aks_kms_policy_phase", policy="p-slots", phase="Ready") == 0
    assert value("aks_kms_policy_ready", policy="p-slots") == 0
    assert value("aks_kms_key_expiry_timestamp_seconds", policy="p-slots", slot="current") == expiry.timestamp()
    assert value("aks_kms_key_expiry_timestamp_seconds", policy="p-slots", slot="previous") is None  # no expiry
    assert value("aks_kms_key_enabled", policy="p-slots", slot="previous") == 0
    assert value("aks_kms_key_protects_secrets", policy="p-slots", slot="current") == 1
    assert value("aks_kms_key_newer_version_available", policy="p-slots") == 1
    assert value("aks_kms_encrypted_with_info", policy="p-slots", key_id=KEY, key_version="a" * 32) == 1
    # AKS unreadable this time: the key series keep their values (an alert must not resolve on a failed read)
    metrics.record_policy("p-slots", phase="Pending", ready=False, slots=None, encrypted_with=KEY, newer_version=None)
    assert value("aks_kms_key_expiry_timestamp_seconds", policy="p-slots", slot="current") == expiry.timestamp()
    assert value("aks_kms_key_newer_version_available", policy="p-slots") == 1
    # the previous slot emptied: its series go
    metrics.record_policy("p-slots", phase="Ready", ready=True, slots={"current": slots["current"]},
                          encrypted_with=KEY, newer_version=None)
    assert value("aks_kms_key_enabled", policy="p-slots", slot="previous") is None
    assert value("aks_kms_key_newer_version_available", policy="p-slots") is None  # not following
    metrics.forget_policy("p-slots")
    assert value("aks_kms_policy_ready", policy="p-slots") is None
    assert value("aks_kms_key_expiry_timestamp_seconds", policy="p-slots", slot="current") is None


def test_key_switch_outcomes() -> None:
    metrics.init_key_switch("p-switch")
    metrics.record_key_switch("p-switch", reason="KeySwitchTimeout", probes=40, seconds=900)
    assert value("aks_kms_key_switch_total", policy="p-switch", outcome="timeout") == 1
    assert value("aks_kms_key_switch_total", policy="p-switch", outcome="switched") == 0
    assert value("aks_kms_key_switch_probes_total", policy="p-switch") == 40
    assert value("aks_kms_key_switch_wait_seconds_count", policy="p-switch") == 1
