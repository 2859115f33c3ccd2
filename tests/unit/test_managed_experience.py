"""The Managed KMS experience (issue 12) in the pure parts: preflight's reason codes for what AKS would
refuse, and the planner: one ARM write per scenario, the explicit migration opt-in, the refusals of what
AKS forbids (disable, downgrade, Public↔Private), no rewrite of ours after AKS's own rotation, and the
verification pass on demand."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from aks_kms_operator.api.schema import parse
from aks_kms_operator.api.v1alpha1 import PolicySpec, PolicyStatus
from aks_kms_operator.model import ClusterState, PreflightFacts, RoleGrant, VaultState
from aks_kms_operator.planning import (
    PLATFORM_KEY,
    PlannedStep,
    Step,
    plan_next_step,
    status_after_verify_pass,
    status_after_write,
)
from aks_kms_operator.preflight import Severity, run_preflight

from .test_preflight import CRYPTO_USER, KA, NOW, VAULT_ID, facts

VERSIONLESS = "https://kv1.vault.azure.net/keys/etcd"
READER = RoleGrant(VAULT_ID, "Key Vault Reader", actions=("Microsoft.KeyVault/vaults/*/read",))
SUB = "00000000-0000-0000-0000-000000000000"


def managed_facts(**changes: Any) -> PreflightFacts:
    """A legacy KMS v2 cluster on 1.33 about to migrate to CMK: passes every check."""
    base = facts(cluster=dataclasses.replace(facts().cluster, kubernetes_version="1.33.2"),
                 target_key=dataclasses.replace(facts().target_key, key_id=VERSIONLESS),  # type: ignore[arg-type]
                 grants=(CRYPTO_USER, READER), managed=True, api_version="2026-08-01")
    return dataclasses.replace(base, **changes)


def cluster(**changes: Any) -> ClusterState:
    return dataclasses.replace(managed_facts().cluster, **changes)


MANAGED_TRIGGERED: list[tuple[str, Callable[[], PreflightFacts], str]] = [
    ("ApiVersionTooOld", lambda: managed_facts(api_version="2025-10-01"), "azure-mgmt-containerservice >= 41.7.0"),
    ("MigrationFromKmsV1", lambda: managed_facts(cluster=cluster(kubernetes_version="1.26.3")), "KMS v2 first"),
    ("ManagedNeedsKubernetes133", lambda: managed_facts(cluster=cluster(kubernetes_version="1.32.5")),
     "--kubernetes-version 1.33"),
    ("IdentityLacksKeyVaultReader", lambda: managed_facts(grants=(CRYPTO_USER,)), '--role "Key Vault Reader"'),
    ("KeyVaultFirewallNoTrustedServices",
     lambda: managed_facts(vault=VaultState(VAULT_ID, facts().vault.tenant_id,  # type: ignore[union-attr]
                                            network_default_action="Deny", network_bypass="None")),
     "--bypass AzureServices"),
]


@pytest.mark.parametrize(("reason", "make", "fix"), MANAGED_TRIGGERED, ids=[t[0] for t in MANAGED_TRIGGERED])
def test_managed_reason_codes(reason: str, make: Callable[[], PreflightFacts], fix: str) -> None:
    found = run_preflight(make())
    reasons = [f.reason for f in found if f.blocks]
    assert reason in reasons, found
    finding = next(f for f in found if f.reason == reason)
    assert finding.severity is Severity.BLOCK and fix in finding.fix


def test_a_good_migration_passes_and_skips_the_legacy_private_link_checks() -> None:
    assert [f for f in run_preflight(managed_facts()) if f.blocks] == []
    # Private on Managed: trusted-services bypass, no VNet integration, no Key Vault Contributor
    private = managed_facts(network_access="Private", cluster=cluster(api_server_vnet_integration=False),
                            vault=VaultState(VAULT_ID, facts().vault.tenant_id,  # type: ignore[union-attr]
                                             network_default_action="Deny", network_bypass="AzureServices"))
    assert [f for f in run_preflight(private) if f.blocks] == []


# ---------------------------------------------------------------------------------------- planner


def spec(**kms: Any) -> PolicySpec:
    return parse(PolicySpec, {"cluster": {"subscriptionId": SUB, "resourceGroup": "rg", "name": "aks"},
                              "kms": kms})


def aks(*, kms: bool = False, key: str = "", infra: str = "", version: str = "1.33.2", busy: bool = False,
        access: str = "Public") -> ClusterState:
    return ClusterState(kms_enabled=kms, key_id=key, network_access=access, vault_resource_id="",
                        provisioning_state="Updating" if busy else "Succeeded", kubernetes_version=version,
                        identity_type="UserAssigned", infrastructure_encryption=infra)


PMK = {"enabled": True, "experience": "Managed", "keyManagement": "PlatformManaged"}
CMK = {"enabled": True, "experience": "Managed", "keyId": VERSIONLESS}
IN_SYNC_LEGACY = PolicyStatus(encrypted_with=KA)


def writes_of(decision: Any) -> list[str]:
    return [str(s) for s in decision.steps if s.writes]


@pytest.mark.parametrize(("kms", "cluster_state", "status", "write"), [
    (PMK, aks(), PolicyStatus(encrypted_with="identity"), "Enable(Managed, PlatformManaged)"),
    (CMK, aks(), PolicyStatus(encrypted_with="identity"), "Enable(Managed, CustomerManaged)"),
    ({**CMK, "migration": "Allow"}, aks(kms=True, key=KA), IN_SYNC_LEGACY, "Migrate(Managed, CustomerManaged)"),
    ({**PMK, "migration": "Allow"}, aks(kms=True, key=KA), IN_SYNC_LEGACY, "Migrate(Managed, PlatformManaged)"),
    (CMK, aks(infra="Enabled"), PolicyStatus(), "Update(Managed, CustomerManaged)"),  # PMK -> CMK
    (PMK, aks(kms=True, key=VERSIONLESS, infra="Enabled"), PolicyStatus(), "Update(Managed, PlatformManaged)"),
])
def test_one_write_behind_a_check_and_no_rewrite_of_ours(kms: dict[str, Any], cluster_state: ClusterState,
                                                          status: PolicyStatus, write: str) -> None:
    d = plan_next_step(spec(**kms), cluster_state, status)
    assert d.next_step is Step.CHECK
    assert [str(s) for s in d.steps] == ["Check", write]  # no WaitForKeySwitch, Rewrite, Verify: AKS does it
    go = plan_next_step(spec(**kms), cluster_state, status, findings=[])
    assert go.writes and str(go.step) == write and go.step is not None and go.step.managed


def test_migration_says_what_aks_will_do() -> None:
    d = plan_next_step(spec(**CMK, migration="Allow"), aks(kms=True, key=KA), IN_SYNC_LEGACY, findings=[])
    assert d.next_step is Step.MIGRATE and d.reason == "Migrating"
    assert "re-encrypts every Secret itself" in d.message and "cannot be undone" in d.message


def test_migration_needs_the_explicit_opt_in() -> None:
    d = plan_next_step(spec(**CMK), aks(kms=True, key=KA), IN_SYNC_LEGACY, findings=[])
    assert (d.next_step, d.reason) == (Step.BLOCKED, "MigrationNotAllowed")
    assert "spec.kms.migration: Allow" in d.fix and not d.writes


def test_migration_waits_for_the_legacy_rewrite_first() -> None:
    """Invariant 1 still holds: a legacy cluster whose Secrets are not all under its key is caught up first."""
    d = plan_next_step(spec(**CMK, migration="Allow"), aks(kms=True, key=KA), PolicyStatus(encrypted_with="identity"))
    assert d.next_step is Step.WAIT_FOR_KEY_SWITCH
    assert [s.step for s in d.steps][-2:] == [Step.CHECK, Step.MIGRATE]


@pytest.mark.parametrize(("kms", "cluster_state", "text"), [
    ({"enabled": False}, aks(infra="Enabled"), "disable KMS"),
    ({"enabled": True, "keyId": KA}, aks(kms=True, key=VERSIONLESS, infra="Enabled"), "return to the legacy"),
    ({**CMK, "keyVaultNetworkAccess": "Private", "keyVaultResourceId": VAULT_ID},
     aks(kms=True, key=VERSIONLESS, infra="Enabled"), "from Public to Private"),
])
def test_what_aks_forbids_is_refused_not_attempted(kms: dict[str, Any], cluster_state: ClusterState,
                                                   text: str) -> None:
    d = plan_next_step(spec(**kms), cluster_state, PolicyStatus(), findings=[])
    assert (d.next_step, d.reason) == (Step.BLOCKED, "ManagedIrreversible")
    assert text in d.message and "AKS forbids" in d.message and d.steps == ()


def test_deleting_with_disable_leaves_a_managed_cluster_alone() -> None:
    s = dataclasses.replace(spec(**PMK), deletion_policy="Disable")
    d = plan_next_step(s, aks(infra="Enabled"), PolicyStatus(), deleting=True)
    assert (d.next_step, d.reason) == (Step.READY, "ManagedIrreversible") and d.steps == ()


def test_no_rewrite_after_aks_rotates_and_verify_runs_on_demand() -> None:
    cmk = aks(kms=True, key=VERSIONLESS, infra="Enabled")
    ready = plan_next_step(spec(**CMK), cmk, PolicyStatus(encrypted_with=KA))
    assert ready.next_step is Step.READY and "spec.verify.requestedAt" in ready.message
    asked = dataclasses.replace(spec(**CMK), verify=dataclasses.replace(spec().verify, requested_at="t1"))
    d = plan_next_step(asked, cmk, PolicyStatus(encrypted_with=KA))
    assert d.next_step is Step.VERIFY and d.step is not None and d.step.key_id == VERSIONLESS
    done = status_after_verify_pass(PolicyStatus(encrypted_with=KA), VERSIONLESS, reencrypted=0, failed=0, at=NOW,
                                    retry_after=dt.timedelta(seconds=90), requested_at="t1")
    assert done.encrypted_with == VERSIONLESS and done.verification.requested_at == "t1"
    assert plan_next_step(asked, cmk, done).next_step is Step.READY


def test_migration_records_where_it_came_from() -> None:
    step = PlannedStep(Step.MIGRATE, VERSIONLESS, "Public", "", KA, managed=True)
    after = status_after_write(IN_SYNC_LEGACY, step, at=NOW)
    assert after.managed.migrated_from == KA and after.managed.migrated_at
    assert after.operation.step == "Migrate"


def test_in_flight_managed_write_is_waited_on_without_a_rewrite_tail() -> None:
    step = PlannedStep(Step.ENABLE, PLATFORM_KEY, "Public", "", "identity", managed=True)
    status = status_after_write(PolicyStatus(encrypted_with="identity"), step, at=NOW)
    d = plan_next_step(spec(**PMK), aks(infra="Enabled", busy=True), status)
    assert (d.next_step, d.reason) == (Step.WAIT, "ClusterUpdating") and len(d.steps) == 1
    done = plan_next_step(spec(**PMK), aks(infra="Enabled"), status)
    assert done.next_step is Step.READY and done.discard_operation


@pytest.mark.parametrize(("cluster_state", "reason"), [
    (aks(kms=True, key=KA, version="1.26.3"), "MigrationFromKmsV1"),
    (aks(kms=True, key=KA, version="1.32.1"), "ManagedNeedsKubernetes133"),
    (aks(version="1.32.1"), "ManagedNeedsKubernetes133"),
])
def test_cluster_facts_refuse_before_anything_else(cluster_state: ClusterState, reason: str) -> None:
    """Refused at once, even before a pending legacy rewrite: no canary, no write, the fix in status."""
    d = plan_next_step(spec(**CMK, migration="Allow"), cluster_state, PolicyStatus())
    assert (d.next_step, d.reason) == (Step.BLOCKED, reason) and d.steps == () and d.fix


def test_plan_view_shows_the_managed_write() -> None:
    from aks_kms_operator.planview import _step_text, arm_changes

    step = PlannedStep(Step.MIGRATE, VERSIONLESS, "Public", "", KA, managed=True)
    [(before, after)] = arm_changes({"enabled": True, "keyId": KA, "keyVaultNetworkAccess": "Public",
                                     "keyVaultResourceId": ""}, [step])
    assert after["keyId"] == VERSIONLESS and after["infrastructureEncryption"] == "Enabled" and before["keyId"] == KA
    assert "irreversible" in _step_text(step, None, None)
    pmk = PlannedStep(Step.ENABLE, PLATFORM_KEY, "Public", "", "identity", managed=True)
    [(_, after)] = arm_changes({"enabled": False}, [pmk])
    assert after["enabled"] is False and after["infrastructureEncryption"] == "Enabled"
