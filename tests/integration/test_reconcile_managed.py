"""The real operator on the Managed KMS experience (issue 12), against the fake ARM and AKS-sim on a real
API server: migration legacy → customer-managed key only with the explicit opt-in (one ARM write; AKS-sim
re-encrypts every Secret itself), AKS following a new Key Vault key version with no write and no rewrite of
the operator, spec.verify on demand, and refusals of what AKS forbids. Scenarios run in order on one cluster.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from aks_kms_lab.encryption import provider_name
from aks_kms_lab.seed import seed
from aks_kms_lab.world import KEY_NAME, PUBLIC_VAULT, RESOURCE_GROUP, SUBSCRIPTION
from aks_kms_operator.kube import Credentials

from .aks_env import AksEnv, StatusRecorder, condition, reason_of

pytestmark = pytest.mark.integration
NAME = "default"
SECRETS = 30
VERSIONLESS = f"https://{PUBLIC_VAULT}.vault.azure.net/keys/{KEY_NAME}"


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("aks-managed"))
    try:
        os.environ["KUBECONFIG"] = str(env.cp.kubeconfig)
        asyncio.run(seed(Credentials.login(), SECRETS, 3))
        env.start_operator()
        yield env
    finally:
        env.stop()


def managed_spec(**extra: object) -> dict[str, object]:
    return {"kms": {"experience": "Managed", "keyManagement": "CustomerManaged", "keyId": VERSIONLESS,
                    "keyVaultNetworkAccess": "Public", **extra}}


def test_legacy_first(aks: AksEnv) -> None:
    v1 = aks.world.key_versions[0]
    aks.apply_policy(aks.world.policy(NAME, key_id=v1))
    status = aks.wait_ready(NAME)
    assert status["cluster"]["experience"] == "Legacy" and status["encryptedWith"] == v1
    assert aks.stored_under() == {provider_name(v1): SECRETS}


def test_editing_the_experience_alone_does_not_migrate(aks: AksEnv) -> None:
    puts = len(aks.cluster_puts())
    aks.patch_spec(NAME, managed_spec())
    status = aks.wait_stalled(NAME, "MigrationNotAllowed")
    assert "spec.kms.migration: Allow" in status["message"] and "cannot be undone" in status["message"]
    assert len(aks.cluster_puts()) == puts


def test_migration_is_one_write_and_aks_re_encrypts(aks: AksEnv) -> None:
    v1, newest = aks.world.key_versions[0], aks.world.key_versions[-1]
    puts = len(aks.cluster_puts())
    rewrites = aks.kms.reencryptions
    aks.patch_spec(NAME, {"kms": {"migration": "Allow"}})
    status = aks.wait_status(NAME, lambda s: (s.get("cluster") or {}).get("experience") == "Managed"
                             and condition(s, "Ready") == "True", what="Managed and Ready")
    new_puts = aks.cluster_puts()[puts:]
    assert len(new_puts) == 1 and new_puts[0]["infrastructureEncryption"] == "Enabled", new_puts
    assert new_puts[0]["kms"]["keyId"] == VERSIONLESS
    assert status["cluster"]["keyManagement"] == "CustomerManaged"
    assert status["managed"]["migratedFrom"] == v1 and status["managed"]["keyVersion"] == newest
    assert aks.kms.reencryptions == rewrites + 1  # AKS's own rewrite, not the operator's
    assert aks.stored_under() == {provider_name(newest): SECRETS}


def test_aks_follows_a_new_key_version_and_the_operator_only_observes(aks: AksEnv) -> None:
    puts = len(aks.cluster_puts())
    v_new = aks.fake.new_key_version(PUBLIC_VAULT, KEY_NAME)
    assert aks.kms.follow_new_version()  # the detector's round, without waiting for its interval
    assert aks.stored_under() == {provider_name(v_new): SECRETS}
    with StatusRecorder(aks.cp, NAME) as recorded:
        aks.patch_spec(NAME, {"verify": {"requestedAt": "2026-12-01T09:00:00Z"}})
        status = aks.wait_status(NAME, lambda s: (s.get("verification") or {}).get("requestedAt")
                                 == "2026-12-01T09:00:00Z", what="verification pass on demand")
    # The status the pass itself writes already says what it proved: never "Verifying" with Ready False
    # next to a finished pass (it did, until the reconcile after it corrected it).
    done = [s for s in recorded.statuses if (s.get("verification") or {}).get("requestedAt") == "2026-12-01T09:00:00Z"]
    assert done and all(s["phase"] == "Ready" and condition(s, "Ready") == "True" for s in done), \
        [(s.get("phase"), s.get("message"), condition(s, "Ready")) for s in done]
    assert status["managed"]["keyVersion"] == v_new
    assert status["managed"]["previousKeyVersion"] == aks.world.key_versions[-1]
    assert status["verification"]["lastPassReencrypted"] == 0 and status["encryptedWith"] == VERSIONLESS
    assert condition(status, "Ready") == "True" and reason_of(status, "KeyHealthy") == "KeysValid", \
        status.get("conditions")
    assert len(aks.cluster_puts()) == puts  # no ARM write, no rewrite of ours


def test_downgrade_is_refused_not_attempted(aks: AksEnv) -> None:
    puts = len(aks.cluster_puts())
    aks.patch_spec(NAME, {"kms": {"experience": "Legacy", "migration": "Forbid",
                                  "keyId": aks.world.key_versions[0]}})
    status = aks.wait_stalled(NAME, "ManagedIrreversible")
    assert "AKS forbids" in status["message"]
    assert len(aks.cluster_puts()) == puts


def test_migration_from_kms_v1_is_refused(aks: AksEnv) -> None:
    aks.fake.add_cluster(SUBSCRIPTION, RESOURCE_GROUP, "old-aks", kubernetes_version="1.26.3",
                         identity_id=aks.world.identity_id,
                         kms={"enabled": True, "keyId": aks.world.key_versions[0]})
    body = aks.world.policy("v1", key_id=VERSIONLESS)
    body["spec"]["cluster"]["name"] = "old-aks"
    body["spec"]["kms"].update({"experience": "Managed", "migration": "Allow"})
    puts = len(aks.cluster_puts())
    aks.apply_policy(body)
    status = aks.wait_stalled("v1", "MigrationFromKmsV1")
    assert reason_of(status, "Stalled") == "MigrationFromKmsV1" and "KMS v2" in status["message"]
    assert len(aks.cluster_puts()) == puts
