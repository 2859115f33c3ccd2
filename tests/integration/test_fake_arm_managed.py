"""The fake ARM models AKS's KMS data encryption (the Managed experience, API 2026-07-01), driven through
the operator's gateway on the real azure-mgmt-containerservice client: what AKS accepts (PMK, CMK with a
versionless key, migration from legacy KMS v2), what it refuses (Kubernetes < 1.33, KMS v1, a versioned
key, a missing Key Vault Reader grant, an old API version) and that the mode is irreversible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from aks_kms_lab.fake_azure import FakeAzure
from aks_kms_operator.azure import AzureRejected, ClusterId, SdkManagedClusters

from .test_fake_azure import RG, SUB, VAULT, VAULT_ID, new_cluster, settings_for, writes_for

pytestmark = pytest.mark.integration
KEY_NAME = "managed-etcd"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzure]:
    with FakeAzure(tmp_path_factory.mktemp("fake-azure-managed")) as f:
        f.set_lro(seconds=0.05)
        f.add_vault(SUB, RG, VAULT)
        f.create_key(VAULT, KEY_NAME)
        yield f


@pytest.fixture(scope="module")
def clusters(fake: FakeAzure) -> Iterator[SdkManagedClusters]:
    gw = SdkManagedClusters(settings_for(fake))
    yield gw
    gw.close()


def versionless(fake: FakeAzure) -> str:
    return f"https://{VAULT}.vault.azure.net/keys/{KEY_NAME}"


def versioned(fake: FakeAzure) -> str:
    return fake.create_key(VAULT, KEY_NAME)


def cmk_cluster(fake: FakeAzure, **kwargs: Any) -> tuple[ClusterId, str]:
    cid, principal = new_cluster(fake, **kwargs)
    fake.grant_role(principal, VAULT_ID, "Key Vault Reader")
    return cid, principal


def managed_of(fake: FakeAzure, cid: ClusterId) -> str:
    sp = (fake.cluster(SUB, RG, cid.name) or {})["properties"]["securityProfile"]
    return (sp.get("kubernetesResourceObjectEncryptionProfile") or {}).get("infrastructureEncryption", "")


def refused(fake: FakeAzure, clusters: SdkManagedClusters, cid: ClusterId, text: str, **kms: Any) -> AzureRejected:
    before = fake.cluster(SUB, RG, cid.name)
    with pytest.raises(AzureRejected) as info:
        clusters.put_kms(clusters.get(cid), **kms)
    assert info.value.status == 400 and text in info.value.message, info.value
    assert fake.cluster(SUB, RG, cid.name) == before
    return info.value


def test_the_sdk_speaks_an_api_version_that_carries_the_managed_experience(clusters: SdkManagedClusters) -> None:
    assert clusters.api_version(SUB) >= "2026-07-01"


def test_platform_key_one_write_and_reported(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=False, managed=True), timeout=10)
    assert result.succeeded, result
    assert result.cluster is not None
    assert (result.cluster.experience, result.cluster.key_management) == ("Managed", "PlatformManaged")
    [write] = writes_for(fake, cid)
    assert write.summary["infrastructureEncryption"] == "Enabled"
    assert all(p.startswith("properties.securityProfile.") for p in write.summary["changed"])


def test_customer_key_versionless(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = cmk_cluster(fake)
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=versionless(fake), managed=True),
                           timeout=10)
    assert result.succeeded, result
    assert result.cluster is not None
    assert (result.cluster.experience, result.cluster.key_management) == ("Managed", "CustomerManaged")
    assert result.cluster.key_id == versionless(fake)


def test_migration_from_legacy_kms_v2_is_one_write(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = cmk_cluster(fake, kms={"enabled": True, "keyId": versioned(fake)})
    assert clusters.get(cid).state.experience == "Legacy"
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=versionless(fake), managed=True),
                           timeout=10)
    assert result.succeeded and result.cluster is not None and result.cluster.experience == "Managed"
    assert len(writes_for(fake, cid)) == 1


def test_refusals_before_anything_is_stored(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    old, _ = new_cluster(fake, kubernetes_version="1.32.7")
    refused(fake, clusters, old, "requires Kubernetes version 1.33.0 or later", enabled=False, managed=True)
    v1, _ = cmk_cluster(fake, kubernetes_version="1.26.9", kms={"enabled": True, "keyId": versioned(fake)})
    refused(fake, clusters, v1, "supported from KMS v2 only", enabled=False, managed=True)
    cid, _ = cmk_cluster(fake)
    refused(fake, clusters, cid, "A versioned keyId selects the legacy", enabled=True, key_id=versioned(fake),
            managed=True)
    no_reader, _ = new_cluster(fake)  # Crypto User only
    refused(fake, clusters, no_reader, "Key Vault Reader", enabled=True, key_id=versionless(fake), managed=True)


def test_irreversible(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = cmk_cluster(fake)
    assert clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=versionless(fake), managed=True),
                         timeout=10).succeeded
    # back to a versioned (legacy) key, Public -> Private: refused; the stored cluster is unchanged
    err = refused(fake, clusters, cid, "versioned keyId selects the legacy", enabled=True, key_id=versioned(fake))
    assert err.code == "OperationNotAllowed"
    refused(fake, clusters, cid, "Changing keyVaultNetworkAccess from Public to Private", enabled=True,
            key_id=versionless(fake), network_access="Private", vault_resource_id=VAULT_ID)
    # turning infrastructureEncryption off: raw body, as a client that tried would send it
    snap = clusters.get(cid)
    raw = dict(snap.raw)
    raw["properties"]["securityProfile"]["kubernetesResourceObjectEncryptionProfile"] = {
        "infrastructureEncryption": "Disabled"}
    with pytest.raises(AzureRejected, match="cannot be disabled"):
        clusters.put_kms(dataclasses.replace(snap, raw=raw), enabled=True, key_id=versionless(fake))
    assert managed_of(fake, cid) == "Enabled"
    # CMK -> PMK is allowed (documented)
    assert clusters.wait(clusters.put_kms(clusters.get(cid), enabled=False, managed=True), timeout=10).succeeded
    assert clusters.get(cid).state.key_management == "PlatformManaged"


def test_firewall_without_trusted_services_fails_the_operation(fake: FakeAzure,
                                                              clusters: SdkManagedClusters) -> None:
    fake.add_vault(SUB, RG, "kv-closed", default_action="Deny", bypass="None")
    key = fake.create_key("kv-closed", "etcd").rsplit("/", 1)[0]
    cid, principal = new_cluster(fake, role=None)
    vault_id = VAULT_ID.replace(VAULT, "kv-closed")
    for role in ("Key Vault Crypto User", "Key Vault Reader"):
        fake.grant_role(principal, vault_id, role)
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=key, managed=True), timeout=10)
    assert result.status == "Failed" and "trusted Azure services" in result.error_message
