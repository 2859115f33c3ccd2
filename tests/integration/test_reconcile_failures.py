"""What must NOT happen: preflight blocks write nothing, a second policy does nothing, faults do not
duplicate writes, and a killed operator resumes its rewrite without redoing finished namespaces."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aks_kms_lab.encryption import provider_name
from aks_kms_lab.seed import seed
from aks_kms_lab.world import PUBLIC_VAULT, SUBSCRIPTION
from aks_kms_operator.kube import Credentials

from .aks_env import AksEnv, condition

pytestmark = pytest.mark.integration
NAME = "default"
SECRETS = 80
NAMESPACES = 8


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("aksf"), audit=True)
    try:
        os.environ["KUBECONFIG"] = str(env.cp.kubeconfig)
        asyncio.run(seed(Credentials.login(), SECRETS, NAMESPACES))
        env.start_operator()
        env.apply_policy(env.world.policy(NAME, enabled=False))
        env.wait_ready(NAME)
        yield env
    finally:
        env.stop()


def _past() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


def _future() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=7)


# Each case breaks one prerequisite and returns the keyId (or the whole spec.kms) to enable with, plus
# how to undo it.
Case = Callable[[AksEnv], tuple[str | dict[str, Any], Callable[[], None]]]
DISABLED = {"enabled": False, "keyId": "", "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""}


def disabled_key(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    kid = aks.world.key_versions[2]
    aks.fake.set_key_attributes(kid, enabled=False)
    return kid, lambda: aks.fake.set_key_attributes(kid, enabled=True)


def expired_key(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    kid = aks.world.key_versions[2]
    aks.fake.set_key_attributes(kid, expires_on=_past())
    return kid, lambda: aks.fake.set_key_attributes(kid, expires_on=None)


def not_yet_valid_key(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    kid = aks.world.key_versions[2]
    aks.fake.set_key_attributes(kid, not_before=_future())
    return kid, lambda: aks.fake.set_key_attributes(kid, not_before=None)


def ec_key(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    return aks.fake.create_key(PUBLIC_VAULT, "ec-key", kty="EC"), lambda: None


def sign_only_key(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    return aks.fake.create_key(PUBLIC_VAULT, "sign-key", ops=("sign", "verify")), lambda: None


def missing_key(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    base = aks.world.key_versions[0].rsplit("/", 1)[0]
    return f"{base}/{'0' * 32}", lambda: None


def no_permission(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    aks.fake.revoke_roles(aks.world.principal_id)

    def undo() -> None:
        aks.fake.grant_role(aks.world.principal_id, aks.world.public_vault_id, "Key Vault Crypto User")
        aks.fake.grant_role(aks.world.principal_id, aks.world.private_vault_id, "Key Vault Crypto User")
        aks.fake.grant_role(aks.world.principal_id, aks.world.private_vault_id, "Key Vault Contributor")

    return aks.world.key_versions[2], undo


def firewalled_vault(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    vault_id = aks.fake.add_vault(SUBSCRIPTION, "lab-rg", "fwvault", public_network_access="Disabled",
                                  default_action="Deny")
    aks.fake.grant_role(aks.world.principal_id, vault_id, "Key Vault Crypto User")
    return aks.fake.create_key("fwvault", "etcd"), lambda: None


def private_kms(aks: AksEnv) -> dict[str, Any]:
    return {"enabled": True, "keyId": aks.world.private_key_versions[0], "keyVaultNetworkAccess": "Private",
            "keyVaultResourceId": aks.world.private_vault_id}


def no_vnet_integration(aks: AksEnv) -> tuple[dict[str, Any], Callable[[], None]]:
    aks.fake.set_cluster(SUBSCRIPTION, "lab-rg", "lab-aks", apiServerAccessProfile={"enableVnetIntegration": False})
    return private_kms(aks), lambda: aks.fake.set_cluster(
        SUBSCRIPTION, "lab-rg", "lab-aks", apiServerAccessProfile={"enableVnetIntegration": True})


def no_private_link_permission(aks: AksEnv) -> tuple[dict[str, Any], Callable[[], None]]:
    _, undo = no_permission(aks)
    aks.fake.grant_role(aks.world.principal_id, aks.world.private_vault_id, "Key Vault Crypto User")
    return private_kms(aks), undo


def other_tenant_vault(aks: AksEnv) -> tuple[str, Callable[[], None]]:
    vault_id = aks.fake.add_vault(SUBSCRIPTION, "lab-rg", "othertenantvault",
                                  tenant_id="99999999-8888-7777-6666-555555555555")
    aks.fake.grant_role(aks.world.principal_id, vault_id, "Key Vault Crypto User")
    return aks.fake.create_key("othertenantvault", "etcd"), lambda: None


CASES: list[tuple[str, Case]] = [
    ("KeyDisabled", disabled_key),
    ("KeyExpired", expired_key),
    ("KeyNotYetValid", not_yet_valid_key),
    ("KeyNotRSA", ec_key),
    ("KeyOperationsMissing", sign_only_key),
    ("KeyNotFound", missing_key),
    ("IdentityLacksKeyPermission", no_permission),
    ("KeyVaultFirewallBlocksPlugin", firewalled_vault),
    ("KeyVaultInOtherTenant", other_tenant_vault),
    ("PrivateVaultNeedsVnetIntegration", no_vnet_integration),
    ("IdentityLacksPrivateLinkPermission", no_private_link_permission),
]


@pytest.mark.parametrize(("reason", "case"), CASES, ids=[c[0] for c in CASES])
def test_blocking_preflight_writes_nothing(aks: AksEnv, reason: str, case: Case) -> None:
    before = len(aks.fake.writes)
    wanted, undo = case(aks)
    kms = wanted if isinstance(wanted, dict) else {"enabled": True, "keyId": wanted}
    try:
        aks.patch_spec(NAME, {"kms": kms})
        status = aks.wait_stalled(NAME, reason)
        assert status["phase"] == "Blocked"
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert "Fix:" in status["message"] or "fix" in stalled["message"].lower() or stalled["message"], status
        time.sleep(1)
        assert aks.cluster_puts() == [w.summary for w in aks.fake.writes[:before]
                                      if w.method == "PUT" and "managedClusters" in w.path], \
            "a blocked preflight must not write to ARM"
    finally:
        undo()
        aks.patch_spec(NAME, {"kms": DISABLED})
        aks.wait_ready(NAME)


def test_busy_cluster_waits_without_stalling_or_writing(aks: AksEnv) -> None:
    puts = len(aks.cluster_puts())
    aks.fake.set_cluster(SUBSCRIPTION, "lab-rg", "lab-aks", provisioningState="Upgrading")
    try:
        aks.patch_spec(NAME, {"kms": {"enabled": True, "keyId": aks.world.key_versions[0]}})
        status = aks.wait_status(NAME, lambda s: condition(s, "Reconciling") == "True"
                                 and "Upgrading" in s.get("message", ""), what="waiting on a busy cluster")
        assert condition(status, "Stalled") == "False"
        time.sleep(2)
        assert len(aks.cluster_puts()) == puts, "never PUT while provisioningState is not terminal"
    finally:
        aks.fake.set_cluster(SUBSCRIPTION, "lab-rg", "lab-aks", provisioningState="Succeeded")
    aks.wait_ready(NAME)
    assert len(aks.cluster_puts()) == puts + 1
    aks.patch_spec(NAME, {"kms": DISABLED})
    aks.wait_ready(NAME)


def test_second_policy_for_the_same_cluster_conflicts(aks: AksEnv) -> None:
    puts = len(aks.cluster_puts())
    aks.apply_policy(aks.world.policy("intruder", key_id=aks.world.key_versions[0]))
    status = aks.wait_stalled("intruder", "Conflict")
    assert "default" in status["message"]
    assert len(aks.cluster_puts()) == puts
    aks.cp.request("PATCH", "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/intruder",
                   {"metadata": {"finalizers": None}}, content_type="application/merge-patch+json")
    aks.cp.request("DELETE", "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/intruder")


def test_faults_converge_without_duplicate_writes(aks: AksEnv) -> None:
    puts = len(aks.cluster_puts())
    cluster = r"/managedClusters/lab-aks"
    aks.fake.inject("PUT", cluster, 412, times=1)
    aks.fake.inject("PUT", cluster, 409, times=1,
                    body={"error": {"code": "OperationNotAllowed", "message": "Another operation is in progress"}})
    aks.fake.inject("GET", cluster + r"\?", 429, times=2, retry_after=1)
    aks.fake.inject("GET", cluster + r"\?", 503, times=2)
    aks.fake.inject("GET", r"/keys/", 500, times=1)
    aks.patch_spec(NAME, {"kms": {"enabled": True, "keyId": aks.world.key_versions[0]}})
    status = aks.wait_ready(NAME, timeout=240)
    new = aks.cluster_puts()[puts:]
    assert len(new) == 1, f"exactly one accepted write for one plan step, got {new}"
    assert status["encryptedWith"] == aks.world.key_versions[0]


def test_rotation_away_from_an_unusable_current_key_is_blocked(aks: AksEnv) -> None:
    """A rotation keeps the current key loaded as AKS's previous key: it must stay valid."""
    v1, v2 = aks.world.key_versions[:2]
    aks.wait_status(NAME, lambda s: s.get("encryptedWith") == v1, what="encrypted with v1")
    puts = len(aks.cluster_puts())
    aks.fake.set_key_attributes(v1, enabled=False)
    try:
        aks.patch_spec(NAME, {"kms": {"keyId": v2}})
        aks.wait_stalled(NAME, "PreviousKeyInvalid")
        time.sleep(1)
        assert len(aks.cluster_puts()) == puts
    finally:
        aks.fake.set_key_attributes(v1, enabled=True)
        aks.patch_spec(NAME, {"kms": {"keyId": v1}})
    aks.wait_ready(NAME)
    assert len(aks.cluster_puts()) == puts


def test_operator_killed_mid_rewrite_resumes_without_redoing_namespaces(aks: AksEnv) -> None:
    v2 = aks.world.key_versions[1]
    aks.patch_spec(NAME, {"kms": {"enabled": True, "keyId": v2, "keyVaultNetworkAccess": "Public",
                                  "keyVaultResourceId": ""},
                          "rewrite": {"concurrency": 1, "maxWritesPerSecond": 5}})

    def mid_run(s: dict[str, Any]) -> bool:
        rw = s.get("rewrite") or {}
        # past the first seeded namespace, with at least three still to go (system namespaces
        # sort first and hold almost nothing)
        done, total = int(rw.get("namespacesDone") or 0), int(rw.get("namespacesTotal") or 0)
        return (rw.get("targetKeyId") == v2 and str(rw.get("lastNamespace") or "") >= "team-00"
                and done <= total - 3)

    status = aks.wait_status(NAME, mid_run, timeout=180, what="rewrite half done")
    aks.kill_operator(9)
    checkpoint = status["rewrite"]["lastNamespace"]
    killed_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    aks.start_operator()
    status = aks.wait_ready(NAME, timeout=240)
    assert status["encryptedWith"] == v2 and condition(status, "SecretsEncrypted") == "True"
    # The verification pass after the rewrite writes every Secret again (design.md invariant 10): only the
    # resumed rewrite's writes, up to the second it completed, count here.
    done_at = status["rewrite"]["completedAt"][:19]
    after = [w for w in aks.cp.secret_writes() if killed_at <= w["time"][:19] < done_at
             and w["namespace"].startswith("team-")]
    rewritten = {w["namespace"] for w in after}
    assert rewritten, "the resumed run wrote nothing"
    assert all(ns > checkpoint for ns in rewritten), (checkpoint, sorted(rewritten))
    assert aks.stored_under() == {provider_name(v2): SECRETS}
    aks.patch_spec(NAME, {"rewrite": {"concurrency": 8, "maxWritesPerSecond": 0}})


def _gone(aks: AksEnv, name: str) -> bool:
    try:
        code, _ = aks.cp.request("GET", f"/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/{name}")
    except OSError:  # the API server rolls while AKS disables KMS
        return False
    return code == 404


def test_deletion_policy_disable_disables_and_rewrites_before_letting_go(aks: AksEnv) -> None:
    from ..support import wait_for

    status = aks.wait_ready(NAME)
    assert status["cluster"]["kmsEnabled"] is True
    puts = len(aks.cluster_puts())
    aks.patch_spec(NAME, {"deletionPolicy": "Disable"})
    aks.wait_ready(NAME)
    aks.cp.request("DELETE", f"/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/{NAME}")
    wait_for(lambda: _gone(aks, NAME), timeout=240, interval=0.5, what="policy deleted after disabling")
    new = aks.cluster_puts()[puts:]
    assert [p["kms"]["enabled"] for p in new] == [False], new
    assert aks.stored_under() == {"plaintext": SECRETS}


def test_deletion_policy_retain_leaves_aks_alone(aks: AksEnv) -> None:
    from ..support import wait_for

    aks.apply_policy(aks.world.policy("retained", key_id=aks.world.key_versions[0]))
    aks.wait_ready("retained")
    puts = len(aks.cluster_puts())
    aks.cp.request("DELETE", "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/retained")
    wait_for(lambda: _gone(aks, "retained"), timeout=60, interval=0.5, what="policy deleted")
    assert len(aks.cluster_puts()) == puts
    assert aks.fake.cluster(SUBSCRIPTION, "lab-rg", "lab-aks")["properties"]["securityProfile"][
        "azureKeyVaultKms"]["enabled"] is True
