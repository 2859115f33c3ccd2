"""The fake Azure driven through the operator's gateways and the real Azure SDKs over HTTPS.

One fake per module; every test seeds its own cluster (unique name) so tests do not share state.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core import MatchConditions
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceExistsError
from azure.identity import ClientSecretCredential, WorkloadIdentityCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, KeyWrapAlgorithm
from azure.mgmt.containerservice import ContainerServiceClient

from aks_kms_lab.fake_azure import FakeAzure
from aks_kms_operator.azure import (
    AzureConflict,
    AzureNotFound,
    AzureRejected,
    AzureSettings,
    AzureThrottled,
    AzureTransient,
    ClusterId,
    SdkArmReader,
    SdkKeyVault,
    SdkManagedClusters,
    build_credential,
)
from aks_kms_operator.azure.errors import translate
from aks_kms_operator.azure.pipeline import client_kwargs

pytestmark = pytest.mark.integration

SUB = "00000000-0000-0000-0000-0000000000aa"
RG = "rg-lab"
VAULT = "kv-lab"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{VAULT}"
PERMISSION_CODE = "AzureKeyVaultKmsValidateIdentityPermissionCustomerError"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzure]:
    with FakeAzure(tmp_path_factory.mktemp("fake-azure")) as f:
        f.set_lro(seconds=0.05)
        f.add_vault(SUB, RG, VAULT)
        yield f


@pytest.fixture(autouse=True)
def _reset(fake: FakeAzure) -> Iterator[None]:
    yield
    fake.wait_idle()
    fake.clear_faults()
    fake.set_lro(seconds=0.05)
    fake.on_kms_change = None


def settings_for(fake: FakeAzure, **overrides: Any) -> AzureSettings:
    base: dict[str, Any] = {
        "arm_endpoint": fake.url,
        "authority_host": fake.url,
        "tenant_id": fake.tenant_id,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "disable_instance_discovery": True,
        "ca_bundle": str(fake.ca_pem_path),
        "keyvault_endpoint": fake.url,
        "lro_polling_interval": 0.02,
        "retry_total": 0,
        "retry_backoff_factor": 0.01,
    }
    base.update(overrides)
    return AzureSettings(**base)


@pytest.fixture(scope="module")
def settings(fake: FakeAzure) -> AzureSettings:
    return settings_for(fake)


@pytest.fixture(scope="module")
def clusters(settings: AzureSettings) -> Iterator[SdkManagedClusters]:
    gw = SdkManagedClusters(settings)
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def keys(settings: AzureSettings) -> Iterator[SdkKeyVault]:
    gw = SdkKeyVault(settings)
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def arm_reader(settings: AzureSettings) -> Iterator[SdkArmReader]:
    gw = SdkArmReader(settings)
    yield gw
    gw.close()


def new_cluster(fake: FakeAzure, *, role: str | None = "Key Vault Crypto User", **kwargs: Any) -> tuple[ClusterId, str]:
    """A fresh cluster; returns its ID and its identity's principal ID (granted ``role`` on the vault)."""
    name = f"aks-{uuid.uuid4().hex[:8]}"
    obj = fake.add_cluster(SUB, RG, name, **kwargs)
    identities = (obj.get("identity") or {}).get("userAssignedIdentities") or {}
    principal = next(iter(identities.values()))["principalId"] if identities else ""
    if role and principal:
        fake.grant_role(principal, VAULT_ID, role)
    return ClusterId(SUB, RG, name), principal


def writes_for(fake: FakeAzure, cid: ClusterId) -> list[Any]:
    return [w for w in fake.writes if w.summary.get("cluster") == str(cid).lower()]


def fake_jwt(aud: str = "api://AzureADTokenExchange") -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part({'aud': [aud], 'sub': 'system:serviceaccount:x:y'})}.c2ln"


# ------------------------------------------------------------------------------------------ Entra


def test_client_secret_flow_issues_token_and_wrong_secret_gets_aadsts(fake: FakeAzure, settings: AzureSettings) -> None:
    cred = build_credential(settings)
    assert isinstance(cred, ClientSecretCredential)
    token = cred.get_token(settings.arm_scope)
    assert token.token and token.expires_on > time.time() + 3000

    bad = build_credential(dataclasses.replace(settings, client_secret="wrong"))
    with pytest.raises(ClientAuthenticationError) as info:
        bad.get_token(settings.arm_scope)
    assert "AADSTS7000215" in str(info.value)


def test_workload_identity_token_file_authenticates_arm_calls(fake: FakeAzure, tmp_path: Path) -> None:
    cid, _ = new_cluster(fake)
    ident_id = fake.cluster(*vars(cid).values())["identity"]["userAssignedIdentities"]  # type: ignore[index]
    uami_client_id = next(iter(ident_id.values()))["clientId"]
    token_file = tmp_path / "token"
    token_file.write_text(fake_jwt())
    env = {
        "AKS_KMS_ARM_ENDPOINT": fake.url,
        "AZURE_AUTHORITY_HOST": fake.url,
        "AZURE_TENANT_ID": fake.tenant_id,
        "AZURE_CLIENT_ID": uami_client_id,
        "AZURE_FEDERATED_TOKEN_FILE": str(token_file),
        "AKS_KMS_CA_BUNDLE": str(fake.ca_pem_path),
    }
    wi_settings = AzureSettings.from_env(env)
    assert wi_settings.disable_instance_discovery is True  # authority is not a known cloud
    assert isinstance(build_credential(wi_settings), WorkloadIdentityCredential)
    gw = SdkManagedClusters(wi_settings)
    assert gw.get(cid).state.identity_type == "UserAssigned"
    gw.close()

    token_file.write_text("not-a-jwt")
    with pytest.raises(ClientAuthenticationError) as info:
        build_credential(wi_settings).get_token(wi_settings.arm_scope)
    assert "AADSTS50027" in str(info.value)


def test_arm_refuses_calls_without_a_fake_token(fake: FakeAzure, settings: AzureSettings) -> None:
    cid, _ = new_cluster(fake)
    path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerService/managedClusters"
    url = f"{fake.url}{path}/{cid.name}"
    anonymous = requests.get(url, params={"api-version": "2026-08-01"}, verify=str(fake.ca_pem_path), timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "AuthenticationFailed"
    forged = requests.get(url, headers={"Authorization": "Bearer forged"}, verify=str(fake.ca_pem_path), timeout=10)
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_settings_from_env_defaults_and_secret_never_in_repr() -> None:
    s = AzureSettings.from_env({"AZURE_CLIENT_SECRET": "s3cr3t", "AKS_KMS_KEYVAULT_ENDPOINT": "https://127.0.0.1:9/"})
    assert s.arm_endpoint == "https://management.azure.com"
    assert s.authority_host == "https://login.microsoftonline.com"
    assert s.disable_instance_discovery is False
    assert s.keyvault_endpoint == "https://127.0.0.1:9"
    assert s.keyvault_verify_challenge_resource is True
    assert s.connection_verify is True
    assert "s3cr3t" not in repr(s)
    with pytest.raises(ValueError):
        AzureSettings.from_env({"AKS_KMS_KEYVAULT_ENDPOINT": "http://127.0.0.1:9"})


# ------------------------------------------------------------------------------------------ ARM: clusters


def test_get_cluster_reports_state_and_etag(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake, kubernetes_version="1.34.2", api_server_vnet_integration=True)
    snap = clusters.get(cid)
    stored = fake.cluster(SUB, RG, cid.name)
    assert stored is not None
    assert snap.e_tag == stored["eTag"] == snap.state.e_tag
    assert snap.state.kubernetes_version == "1.34.2"
    assert snap.state.identity_type == "UserAssigned"
    assert snap.state.api_server_vnet_integration is True
    assert snap.state.provisioning_state == "Succeeded"
    assert snap.state.kms_enabled is False and snap.state.key_id == ""
    with pytest.raises(AzureNotFound):
        clusters.get(ClusterId(SUB, RG, "does-not-exist"))


def test_enable_kms_puts_full_object_with_if_match_and_lro_succeeds(
    fake: FakeAzure, clusters: SdkManagedClusters
) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-enable")
    before = fake.cluster(SUB, RG, cid.name)
    assert before is not None
    calls: list[tuple[str, dict[str, Any], dict[str, Any], str]] = []

    def hook(key: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        stored = fake.cluster(SUB, RG, cid.name) or {}
        calls.append((key, old, new, stored["properties"]["provisioningState"]))

    fake.on_kms_change = hook
    fake.set_lro(seconds=0.4)
    snap = clusters.get(cid)
    op = clusters.put_kms(snap, enabled=True, key_id=kid, network_access="Public")

    assert clusters.poll(op).status == "InProgress"
    assert (fake.cluster(SUB, RG, cid.name) or {})["properties"]["provisioningState"] == "Updating"
    result = clusters.wait(op, timeout=10)
    assert result.succeeded, result
    assert result.cluster is not None
    assert result.cluster.kms_enabled and result.cluster.key_id == kid
    assert result.cluster.provisioning_state == "Succeeded"

    assert calls == [
        (
            str(cid).lower(),
            {"enabled": False, "keyId": "", "keyVaultNetworkAccess": "Public", "keyVaultResourceId": "",
             "infrastructureEncryption": ""},
            {"enabled": True, "keyId": kid, "keyVaultNetworkAccess": "Public", "keyVaultResourceId": "",
             "infrastructureEncryption": ""},
            "Updating",
        )
    ]
    [write] = writes_for(fake, cid)
    assert write.method == "PUT"
    assert write.summary["ifMatch"] == f'"{snap.e_tag}"'
    assert write.summary["dropped"] == []
    assert write.summary["changed"] and all(
        p.startswith("properties.securityProfile.azureKeyVaultKms.") for p in write.summary["changed"]
    )
    after = fake.cluster(SUB, RG, cid.name) or {}
    assert after["properties"]["agentPoolProfiles"] == before["properties"]["agentPoolProfiles"]
    assert after["properties"]["networkProfile"] == before["properties"]["networkProfile"]


def test_disable_keeps_key_fields_as_read(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    kid = fake.create_key(VAULT, "etcd-disable")
    cid, _ = new_cluster(fake, kms={"enabled": True, "keyId": kid, "keyVaultNetworkAccess": "Public"})
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=False), timeout=10)
    assert result.succeeded
    kms = (fake.cluster(SUB, RG, cid.name) or {})["properties"]["securityProfile"]["azureKeyVaultKms"]
    assert kms == {"enabled": False, "keyId": kid, "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""}


def test_stale_etag_is_412_mapped_to_conflict_and_nothing_written(
    fake: FakeAzure, clusters: SdkManagedClusters
) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-stale")
    snap = clusters.get(cid)
    fake.set_cluster(SUB, RG, cid.name)  # someone else wrote: new eTag
    with pytest.raises(AzureConflict) as info:
        clusters.put_kms(snap, enabled=True, key_id=kid)
    assert info.value.status == 412 and info.value.code == "PreconditionFailed"
    assert writes_for(fake, cid) == []


def test_put_while_operation_runs_is_refused(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-busy")
    fake.set_lro(seconds=1.0)
    op = clusters.put_kms(clusters.get(cid), enabled=True, key_id=kid)
    busy = clusters.get(cid)
    assert busy.state.provisioning_state == "Updating"

    sent_before = len(fake.requests)
    with pytest.raises(AzureConflict) as guarded:  # the gateway does not even send it
        clusters.put_kms(busy, enabled=False)
    assert guarded.value.code == "OperationNotAllowed" and len(fake.requests) == sent_before

    pretend_idle = dataclasses.replace(busy, state=dataclasses.replace(busy.state, provisioning_state="Succeeded"))
    with pytest.raises(AzureConflict) as server:
        clusters.put_kms(pretend_idle, enabled=False)
    assert server.value.status == 409 and server.value.code == "OperationNotAllowed"
    assert "Another operation (Updating) is in progress" in server.value.message
    assert clusters.wait(op, timeout=10).succeeded
    assert len(writes_for(fake, cid)) == 1


def test_if_none_match_rules(fake: FakeAzure, settings: AzureSettings) -> None:
    cid, _ = new_cluster(fake)
    client = ContainerServiceClient(
        build_credential(settings), SUB, base_url=fake.url, polling_interval=0.02, **client_kwargs(settings)
    )
    body = client.managed_clusters.get(RG, cid.name)
    with pytest.raises(ResourceExistsError) as exists:
        client.managed_clusters.begin_create_or_update(RG, cid.name, body, match_condition=MatchConditions.IfMissing)
    assert exists.value.status_code == 412

    token = build_credential(settings).get_token(settings.arm_scope).token
    both = requests.put(
        f"{fake.url}{body['id']}",
        params={"api-version": "2026-08-01"},
        headers={"Authorization": f"Bearer {token}", "If-Match": '"x"', "If-None-Match": "*"},
        json={},
        verify=str(fake.ca_pem_path),
        timeout=10,
    )
    assert both.status_code == 400 and both.json()["error"]["code"] == "BadRequest"
    client.close()


def test_resume_from_continuation_token_after_restart_never_writes_again(
    fake: FakeAzure, settings: AzureSettings
) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-resume")
    fake.set_lro(seconds=0.5)
    first = SdkManagedClusters(settings)
    op = first.put_kms(first.get(cid), enabled=True, key_id=kid)
    first.close()

    restarted = SdkManagedClusters(settings)  # a new process would rebuild the handle from status
    result = restarted.wait(op, timeout=10)
    restarted.close()
    assert result.succeeded and result.cluster is not None and result.cluster.key_id == kid
    assert len(writes_for(fake, cid)) == 1
    puts = [r for r in fake.requests if r.method == "PUT" and r.path.endswith(cid.name)]
    assert len(puts) == 1


def test_failed_lro_reports_code_and_cluster_can_be_written_again(
    fake: FakeAzure, clusters: SdkManagedClusters
) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-fail")
    fake.set_lro(fail_with=("InternalOperationError", "node image pull failed"))
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=kid), timeout=10)
    assert result.status == "Failed"
    assert (result.error_code, result.error_message) == ("InternalOperationError", "node image pull failed")
    assert result.cluster is not None and result.cluster.provisioning_state == "Failed"
    # Failed is terminal: the next PUT is accepted and succeeds (the failure was for one operation).
    again = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=kid), timeout=10)
    assert again.succeeded


def test_kms_hook_exception_fails_the_operation(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-hook")

    def broken(*_: Any) -> None:
        raise RuntimeError("kube-apiserver did not come back")

    fake.on_kms_change = broken
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=kid), timeout=10)
    assert result.status == "Failed" and result.error_code == "InternalOperationError"
    assert "kube-apiserver did not come back" in result.error_message


# ------------------------------------------------------------------------------------------ throttling, 5xx


def test_short_429_is_retried_inside_the_call(fake: FakeAzure, settings: AzureSettings) -> None:
    cid, _ = new_cluster(fake)
    gw = SdkManagedClusters(dataclasses.replace(settings, retry_total=2))
    fake.inject("GET", f"managedClusters/{cid.name}$", 429, retry_after=0.1)
    assert gw.get(cid).state.provisioning_state == "Succeeded"
    statuses = [r.status for r in fake.requests if r.path.endswith(cid.name)]
    assert statuses[-2:] == [429, 200]
    gw.close()


def test_long_retry_after_surfaces_as_throttled_without_retry(fake: FakeAzure, settings: AzureSettings) -> None:
    cid, _ = new_cluster(fake)
    gw = SdkManagedClusters(dataclasses.replace(settings, retry_total=3, max_inline_retry_after=5))
    fake.inject("GET", f"managedClusters/{cid.name}$", 429, retry_after=120)
    with pytest.raises(AzureThrottled) as info:
        gw.get(cid)
    assert info.value.retry_after == 120 and info.value.code == "TooManyRequests"
    assert [r.status for r in fake.requests if r.path.endswith(cid.name)] == [429]
    gw.close()


def test_5xx_retried_then_surfaced_as_transient(fake: FakeAzure, settings: AzureSettings) -> None:
    cid, _ = new_cluster(fake)
    gw = SdkManagedClusters(dataclasses.replace(settings, retry_total=2, retry_backoff_factor=0.01))
    fake.inject("GET", f"managedClusters/{cid.name}$", 503, times=1)
    assert gw.get(cid).state.provisioning_state == "Succeeded"
    fake.inject("GET", f"managedClusters/{cid.name}$", 500, times=5)
    with pytest.raises(AzureTransient) as info:
        gw.get(cid)
    assert info.value.status == 500
    assert [r.status for r in fake.requests if r.path.endswith(cid.name)] == [503, 200, 500, 500, 500]
    gw.close()


def test_409_with_retry_after_is_not_retried(fake: FakeAzure, settings: AzureSettings) -> None:
    cid, _ = new_cluster(fake)
    gw = SdkManagedClusters(dataclasses.replace(settings, retry_total=3))
    fake.inject("GET", f"managedClusters/{cid.name}$", 409, retry_after=0.1)
    with pytest.raises(AzureConflict):
        gw.get(cid)
    assert [r.status for r in fake.requests if r.path.endswith(cid.name)] == [409]
    gw.close()


# ------------------------------------------------------------------------------------------ AKS validation


def _expect_rejected(
    fake: FakeAzure, clusters: SdkManagedClusters, cid: ClusterId, code: str, text: str, **kms: Any
) -> None:
    before = fake.cluster(SUB, RG, cid.name)
    with pytest.raises(AzureRejected) as info:
        clusters.put_kms(clusters.get(cid), **kms)
    assert info.value.status == 400
    assert info.value.code == code
    assert text in info.value.message
    assert writes_for(fake, cid) == []
    assert fake.cluster(SUB, RG, cid.name) == before


def test_system_assigned_identity_refused(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake, identity_type="SystemAssigned")
    kid = fake.create_key(VAULT, "etcd-sys")
    _expect_rejected(
        fake,
        clusters,
        cid,
        "InvalidParameter",
        "AzureKeyVaultKms feature does not support cluster identity type SystemAssigned, supported value is "
        "'UserAssigned'",
        enabled=True,
        key_id=kid,
    )


def test_private_without_vault_id_refused(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake, api_server_vnet_integration=True)
    kid = fake.create_key(VAULT, "etcd-priv")
    _expect_rejected(
        fake,
        clusters,
        cid,
        "InvalidParameter",
        "KeyVault resource ID is empty when KeyVault network access is Private.",
        enabled=True,
        key_id=kid,
        network_access="Private",
    )


def test_private_without_vnet_integration_refused(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-novnet")
    _expect_rejected(
        fake,
        clusters,
        cid,
        "InvalidParameter",
        "API Server VNet Integration is required",
        enabled=True,
        key_id=kid,
        network_access="Private",
        vault_resource_id=VAULT_ID,
    )


def test_public_with_vault_id_refused_through_the_raw_sdk(fake: FakeAzure, settings: AzureSettings) -> None:
    # The gateway itself never sends a vault ID with Public (az CLI rule), so use the SDK directly.
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-pubid")
    client = ContainerServiceClient(build_credential(settings), SUB, base_url=fake.url, **client_kwargs(settings))
    body = client.managed_clusters.get(RG, cid.name)
    body.security_profile.azure_key_vault_kms = {  # type: ignore[union-attr,assignment]
        "enabled": True,
        "keyId": kid,
        "keyVaultNetworkAccess": "Public",
        "keyVaultResourceId": VAULT_ID,
    }
    with pytest.raises(HttpResponseError) as info:
        client.managed_clusters.begin_create_or_update(
            RG, cid.name, body, etag=body.e_tag, match_condition=MatchConditions.IfNotModified
        )
    err = translate(info.value)
    assert isinstance(err, AzureRejected) and err.code == "InvalidParameter"
    assert "must be empty when KeyVault network access is Public" in err.message
    client.close()


def test_changing_network_access_while_enabled_refused(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    kid = fake.create_key(VAULT, "etcd-mode")
    cid, principal = new_cluster(
        fake, api_server_vnet_integration=True, kms={"enabled": True, "keyId": kid, "keyVaultNetworkAccess": "Public"}
    )
    fake.grant_role(principal, VAULT_ID, "Key Vault Contributor")
    _expect_rejected(
        fake,
        clusters,
        cid,
        "InvalidParameter",
        "Changing KeyVault network access from Public to Private is not supported",
        enabled=True,
        key_id=kid,
        network_access="Private",
        vault_resource_id=VAULT_ID,
    )


def test_versionless_key_refused_for_legacy_kms(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-versionless")
    _expect_rejected(
        fake,
        clusters,
        cid,
        "InvalidParameter",
        "must be a versioned key ID",
        enabled=True,
        key_id=kid.rsplit("/", 1)[0],
    )


def test_non_rsa_key_refused(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-ec", kty="EC")
    _expect_rejected(fake, clusters, cid, PERMISSION_CODE, "has key type EC", enabled=True, key_id=kid)


@pytest.mark.parametrize("role", [None, "Key Vault Crypto Service Encryption User", "Key Vault Reader"])
def test_identity_without_encrypt_decrypt_refused(
    fake: FakeAzure, clusters: SdkManagedClusters, role: str | None
) -> None:
    cid, _ = new_cluster(fake, role=role)
    kid = fake.create_key(VAULT, "etcd-noperm")
    _expect_rejected(
        fake,
        clusters,
        cid,
        PERMISSION_CODE,
        "The identity does not have keys encrypt/decrypt permission on key vault kv-lab",
        enabled=True,
        key_id=kid,
    )


def test_access_policy_vault_needs_encrypt_and_decrypt(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    ok_cluster, ok_principal = new_cluster(fake, role=None)
    bad_cluster, bad_principal = new_cluster(fake, role=None)
    fake.add_vault(
        SUB,
        RG,
        "kv-policies",
        rbac=False,
        access_policies=[
            (ok_principal, ("get", "encrypt", "decrypt")),
            (bad_principal, ("get", "wrapKey", "unwrapKey")),
        ],
    )
    kid = fake.create_key("kv-policies", "etcd")
    assert clusters.wait(clusters.put_kms(clusters.get(ok_cluster), enabled=True, key_id=kid), timeout=10).succeeded
    _expect_rejected(
        fake, clusters, bad_cluster, PERMISSION_CODE, "encrypt/decrypt permission", enabled=True, key_id=kid
    )


def test_expired_key_fails_the_operation_asynchronously(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    kid = fake.create_key(VAULT, "etcd-expired", expires_on=yesterday)
    result = clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=kid), timeout=10)
    assert result.status == "Failed"
    assert result.error_code == "KeyExpired"
    assert result.error_message == "Operation encrypt is not allowed on an expired key"
    assert result.cluster is not None and result.cluster.provisioning_state == "Failed"


def test_private_vault_needs_contributor_for_the_private_link(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    kid = fake.create_key(VAULT, "etcd-private")
    cid, principal = new_cluster(fake, api_server_vnet_integration=True)
    kms = {"enabled": True, "key_id": kid, "network_access": "Private", "vault_resource_id": VAULT_ID}
    failed = clusters.wait(clusters.put_kms(clusters.get(cid), **kms), timeout=10)
    assert failed.status == "Failed" and failed.error_code == "InternalOperationError"
    assert "Key Vault Contributor" in failed.error_message

    fake.grant_role(principal, VAULT_ID, "Key Vault Contributor")
    retried = clusters.wait(clusters.put_kms(clusters.get(cid), **kms), timeout=10)
    assert retried.succeeded and retried.cluster is not None
    assert (retried.cluster.network_access, retried.cluster.vault_resource_id) == ("Private", VAULT_ID)


# ------------------------------------------------------------------------------------------ Key Vault


def test_key_vault_challenge_names_the_fake_tenant(fake: FakeAzure) -> None:
    kid = fake.create_key(VAULT, "etcd-challenge")
    path = kid.split(".net", 1)[1]
    response = requests.get(
        f"{fake.url}{path}",
        params={"api-version": "2025-07-01"},
        headers={"Host": f"{VAULT}.vault.azure.net"},
        verify=str(fake.ca_pem_path),
        timeout=10,
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{fake.url}/{fake.tenant_id}", resource="https://vault.azure.net"'
    )


def test_key_state_attributes_and_versions(fake: FakeAzure, keys: SdkKeyVault, settings: AzureSettings) -> None:
    v1 = fake.create_key(VAULT, "etcd-versions")
    v2 = fake.new_key_version(VAULT, "etcd-versions")
    v3 = fake.new_key_version(VAULT, "etcd-versions")
    state = keys.key_state(v1)
    assert (state.exists, state.enabled, state.key_type, state.expires_on) == (True, True, "RSA", None)
    assert {"encrypt", "decrypt"} <= set(state.key_ops)
    assert keys.key_state(v1.rsplit("/", 1)[0]).key_id == v3  # versionless = latest

    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).replace(microsecond=0)
    client = KeyClient(
        f"https://{VAULT}.vault.azure.net", build_credential(settings), **client_kwargs(settings, key_vault=True)
    )
    client.update_key_properties("etcd-versions", v2.rsplit("/", 1)[1], expires_on=expiry)
    client.update_key_properties("etcd-versions", v3.rsplit("/", 1)[1], enabled=False)
    client.close()
    patches = [w for w in fake.writes if w.method == "PATCH" and w.summary["kid"] in (v2, v3)]
    assert [w.summary["attributes"] for w in patches] == [{"exp": int(expiry.timestamp())}, {"enabled": False}]

    assert keys.key_state(v2).expires_on == expiry
    disabled = keys.key_state(v3)  # Key Vault refuses GET on it: read from the listing
    assert (disabled.exists, disabled.enabled, disabled.key_type) == (True, False, "")
    assert [s.key_id for s in keys.list_versions(v1)] == [v1, v2, v3]
    assert all(s.created_on is not None for s in keys.list_versions(v1))
    newest = keys.newest_usable_version(v1, dt.datetime.now(dt.UTC))
    assert newest is not None and newest.key_id == v2 and newest.key_type == "RSA"
    missing = keys.key_state(f"https://{VAULT}.vault.azure.net/keys/nope/{uuid.uuid4().hex}")
    assert missing.exists is False


def test_wrap_unwrap_and_encrypt_decrypt_roundtrip(fake: FakeAzure, settings: AzureSettings) -> None:
    kid = fake.create_key(VAULT, "etcd-crypto")
    crypto = CryptographyClient(kid, build_credential(settings), **client_kwargs(settings, key_vault=True))
    dek = bytes(range(32))
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek)
    assert wrapped.key_id == kid and len(wrapped.encrypted_key) == 256 and wrapped.encrypted_key != dek
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == dek
    sealed = crypto.encrypt(EncryptionAlgorithm.rsa_oaep, b"hello etcd")
    assert crypto.decrypt(EncryptionAlgorithm.rsa_oaep, sealed.ciphertext).plaintext == b"hello etcd"
    remote = [r.path for r in fake.requests if r.host == f"{VAULT}.vault.azure.net" and "etcd-crypto" in r.path]
    assert any(p.endswith("/unwrapkey") for p in remote) and any(p.endswith("/decrypt") for p in remote)
    crypto.close()


@pytest.mark.parametrize(
    ("attrs", "inner", "message"),
    [
        ({"expires_on": "past"}, "KeyExpired", "Operation unwrapKey is not allowed on an expired key."),
        ({"enabled": False}, "KeyDisabled", "Operation unwrapKey is not allowed on a disabled key."),
        ({"not_before": "future"}, "KeyNotYetValid", "Operation unwrapKey is not allowed before"),
    ],
)
def test_crypto_refused_on_unusable_key(
    fake: FakeAzure, settings: AzureSettings, attrs: dict[str, Any], inner: str, message: str
) -> None:
    kid = fake.create_key(VAULT, f"etcd-refused-{inner.lower()}")
    crypto = CryptographyClient(kid, build_credential(settings), **client_kwargs(settings, key_vault=True))
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)  # while still usable
    now = dt.datetime.now(dt.UTC)
    fake.set_key_attributes(
        kid,
        enabled=attrs.get("enabled"),
        **({"expires_on": now - dt.timedelta(hours=1)} if "expires_on" in attrs else {}),
        **({"not_before": now + dt.timedelta(hours=1)} if "not_before" in attrs else {}),
    )
    with pytest.raises(HttpResponseError) as info:
        crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    err = translate(info.value)
    assert (err.status, err.code, err.inner_code) == (403, "Forbidden", inner)
    assert isinstance(err, AzureRejected) and message in err.message
    crypto.close()


# ------------------------------------------------------------------------------------------ ARM reader


def test_arm_reader_vault_identity_and_role_grants(fake: FakeAzure, arm_reader: SdkArmReader) -> None:
    cid, principal = new_cluster(fake)
    fake.add_vault(SUB, RG, "kv-firewalled", public_network_access="Disabled", default_action="Deny", bypass="None")
    fake.grant_role(principal, f"/subscriptions/{SUB}/resourceGroups/{RG}", "Key Vault Reader")
    other_vault = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/kv-firewalled"
    fake.grant_role(principal, other_vault, "Key Vault Administrator")  # not on our vault: must not appear

    assert arm_reader.find_vault(SUB, VAULT) == VAULT_ID
    assert arm_reader.find_vault(SUB, "kv-missing") is None
    vault = arm_reader.vault(other_vault)
    assert (vault.public_network_access, vault.network_default_action, vault.network_bypass) == (
        "Disabled",
        "Deny",
        "None",
    )
    assert vault.tenant_id == fake.tenant_id and vault.rbac_authorization

    stored = fake.cluster(SUB, RG, cid.name) or {}
    ident_id = next(iter(stored["identity"]["userAssignedIdentities"]))
    ident = arm_reader.identity(ident_id)
    assert ident.principal_id == principal and ident.tenant_id == fake.tenant_id

    grants = arm_reader.role_grants(principal, f"{VAULT_ID}/keys/etcd")
    assert sorted((g.role_name, g.scope) for g in grants) == [
        ("Key Vault Crypto User", VAULT_ID),
        ("Key Vault Reader", f"/subscriptions/{SUB}/resourceGroups/{RG}"),
    ]
    crypto_user = next(g for g in grants if g.role_name == "Key Vault Crypto User")
    assert "Microsoft.KeyVault/vaults/keys/decrypt/action" in crypto_user.data_actions
    with pytest.raises(AzureNotFound):
        arm_reader.vault(f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/kv-none")


# ------------------------------------------------------------------------------------------ write log, lifecycle


def test_write_log_is_persisted_as_jsonl(fake: FakeAzure, clusters: SdkManagedClusters) -> None:
    cid, _ = new_cluster(fake)
    kid = fake.create_key(VAULT, "etcd-log")
    clusters.wait(clusters.put_kms(clusters.get(cid), enabled=True, key_id=kid), timeout=10)
    lines = [json.loads(x) for x in (fake.state_dir / "writes.jsonl").read_text().splitlines()]
    assert len(lines) == len(fake.writes)
    mine = [x for x in lines if x["summary"].get("cluster") == str(cid).lower()]
    assert len(mine) == 1 and mine[0]["method"] == "PUT" and mine[0]["summary"]["kms"]["keyId"] == kid
    assert all(w.time.tzinfo is not None for w in fake.writes)


def test_stop_leaves_no_thread_behind_even_with_an_operation_running(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    with FakeAzure(tmp_path) as local:
        local.set_lro(seconds=30)
        local.add_vault(SUB, RG, VAULT)
        kid = local.create_key(VAULT, "etcd")
        cid, principal = ClusterId(SUB, RG, "aks-stop"), ""
        obj = local.add_cluster(SUB, RG, cid.name)
        principal = next(iter(obj["identity"]["userAssignedIdentities"].values()))["principalId"]
        local.grant_role(principal, VAULT_ID, "Key Vault Crypto User")
        gw = SdkManagedClusters(settings_for(local))
        gw.put_kms(gw.get(cid), enabled=True, key_id=kid)  # keep-alive connection + LRO thread open
        started = time.monotonic()
    assert time.monotonic() - started < 10
    gw.close()
    assert set(threading.enumerate()) - before == set()
    assert (tmp_path / "ca.pem").exists()


# ------------------------------------------------------------ where real clients look (issue 10)


def arm_get(fake: FakeAzure, path: str, token: str | None, **params: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{fake.url}{path}", params={"api-version": "2022-12-01", **params}, headers=headers,
                        verify=str(fake.ca_pem_path), timeout=10)


def arm_send(fake: FakeAzure, method: str, path: str, token: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{fake.url}{path}", params={"api-version": "2022-04-01"}, json=body,
                            headers={"Authorization": f"Bearer {token}"}, verify=str(fake.ca_pem_path), timeout=10)


@pytest.fixture(scope="module")
def arm_token(fake: FakeAzure, settings: AzureSettings) -> str:
    # The Azure CLI's default audience, which real ARM accepts as well as https://management.azure.com.
    return build_credential(settings).get_token("https://management.core.windows.net//.default").token


def test_arm_accepts_the_cli_audience_and_lists_subscriptions_and_groups(fake: FakeAzure, arm_token: str) -> None:
    subs = arm_get(fake, "/subscriptions", arm_token)
    assert subs.status_code == 200, subs.text
    assert [s["subscriptionId"] for s in subs.json()["value"]] == [SUB]
    assert subs.json()["value"][0]["tenantId"] == fake.tenant_id
    assert arm_get(fake, f"/subscriptions/{SUB}", arm_token).json()["state"] == "Enabled"
    assert arm_get(fake, "/subscriptions/00000000-0000-0000-0000-00000000dead", arm_token).json()["error"][
        "code"] == "SubscriptionNotFound"
    group = arm_get(fake, f"/subscriptions/{SUB}/resourcegroups/{RG}", arm_token, **{"api-version": "2024-11-01"})
    assert group.status_code == 200 and group.json()["name"] == RG
    missing = arm_get(fake, f"/subscriptions/{SUB}/resourcegroups/nope", arm_token)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "ResourceGroupNotFound")
    assert arm_get(fake, "/tenants", arm_token).json()["value"][0]["tenantId"] == fake.tenant_id


def test_metadata_endpoints_served_without_a_token(fake: FakeAzure) -> None:
    clouds = arm_get(fake, "/metadata/endpoints", None, **{"api-version": "2022-09-01"})
    assert clouds.status_code == 200, clouds.text
    cloud = clouds.json()[0]
    assert cloud["name"] == "AzureCloud" and cloud["resourceManager"] == f"{fake.url}/"
    assert cloud["suffixes"]["keyVaultDns"] == "vault.azure.net"
    assert "https://management.core.windows.net/" in cloud["authentication"]["audiences"]


def test_cluster_lists_and_kubelet_identity_through_the_sdk(fake: FakeAzure, settings: AzureSettings,
                                                             arm_token: str) -> None:
    cid, _ = new_cluster(fake)
    client = ContainerServiceClient(build_credential(settings), SUB, base_url=fake.url,
                                    connection_verify=str(fake.ca_pem_path), retry_total=0)
    with client:
        everywhere = [c.name for c in client.managed_clusters.list()]
        in_group = [c.name for c in client.managed_clusters.list_by_resource_group(RG)]
        mc = client.managed_clusters.get(RG, cid.name)
    assert cid.name in everywhere and cid.name in in_group
    kubelet = mc.identity_profile["kubeletidentity"]
    assert kubelet.object_id and kubelet.client_id and kubelet.resource_id
    ident = arm_get(fake, kubelet.resource_id, arm_token, **{"api-version": "2023-01-31"})
    assert ident.status_code == 200 and ident.json()["properties"]["principalId"] == kubelet.object_id


def test_put_cluster_and_running_operation_carry_retry_after(fake: FakeAzure, clusters: SdkManagedClusters,
                                                             arm_token: str) -> None:
    cid, _ = new_cluster(fake)
    fake.set_lro(seconds=1)
    path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ContainerService/managedClusters/{cid.name}"
    body = arm_get(fake, path, arm_token).json()
    body["tags"] = {"touched": "yes"}
    put = arm_send(fake, "PUT", path, arm_token, body)
    assert put.status_code == 200 and put.headers["Retry-After"] == "1", put.text
    running = requests.get(put.headers["Azure-AsyncOperation"], headers={"Authorization": f"Bearer {arm_token}"},
                           verify=str(fake.ca_pem_path), timeout=10)
    assert running.json()["status"] == "InProgress" and running.headers["Retry-After"] == "1"


def test_identity_put_get_delete(fake: FakeAzure, arm_token: str) -> None:
    path = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ManagedIdentity"
            f"/userAssignedIdentities/id-{uuid.uuid4().hex[:6]}")
    created = arm_send(fake, "PUT", path, arm_token, {"location": "westeurope"})
    assert created.status_code == 201, created.text
    again = arm_send(fake, "PUT", path, arm_token, {"location": "westeurope"})
    assert again.status_code == 200 and again.json()["properties"] == created.json()["properties"]
    assert arm_send(fake, "GET", path, arm_token).json()["properties"]["principalId"]
    assert arm_send(fake, "DELETE", path, arm_token).status_code == 200
    assert arm_send(fake, "GET", path, arm_token).status_code == 404
    assert arm_send(fake, "DELETE", path, arm_token).status_code == 204


def test_role_assignment_put_duplicate_409_and_delete(fake: FakeAzure, arm_reader: SdkArmReader,
                                                      arm_token: str) -> None:
    stranger = str(uuid.uuid4())
    principal = fake.add_identity(f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ManagedIdentity/"
                                  f"userAssignedIdentities/ra-{uuid.uuid4().hex[:6]}").principal_id
    crypto_user = "12338af0-0e69-4776-bea7-57ae8d297424"
    role_id = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{crypto_user}"
    body = {"properties": {"roleDefinitionId": role_id, "principalId": principal, "principalType": "ServicePrincipal"}}
    first = arm_send(fake, "PUT", f"{VAULT_ID}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}",
                     arm_token, body)
    assert first.status_code == 201, first.text
    duplicate = arm_send(fake, "PUT", f"{VAULT_ID}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}",
                         arm_token, body)
    assert (duplicate.status_code, duplicate.json()["error"]["code"]) == (409, "RoleAssignmentExists")
    unknown = arm_send(fake, "PUT", f"{VAULT_ID}/providers/Microsoft.Authorization/roleAssignments/{uuid.uuid4()}",
                       arm_token, {"properties": {**body["properties"], "principalId": stranger}})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "PrincipalNotFound")
    listed = arm_get(fake, f"{VAULT_ID}/providers/Microsoft.Authorization/roleAssignments", arm_token,
                     **{"$filter": f"principalId eq '{principal}'"})
    assert [a["id"] for a in listed.json()["value"]] == [first.json()["id"]]
    assert arm_send(fake, "DELETE", first.json()["id"], arm_token).status_code == 200
    assert arm_get(fake, f"{VAULT_ID}/providers/Microsoft.Authorization/roleAssignments", arm_token,
                   **{"$filter": f"principalId eq '{principal}'"}).json()["value"] == []


def test_private_vault_refuses_the_public_network_and_serves_its_private_link(fake: FakeAzure, arm_token: str,
                                                                              settings: AzureSettings) -> None:
    from aks_kms_lab.fake_azure.server import AZURE_HOSTS
    from aks_kms_lab.proxy import AzureProxy

    name = f"kvp{uuid.uuid4().hex[:8]}"
    path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{name}"
    bad = arm_send(fake, "PUT", path.replace(name, "9-bad"), arm_token, {"properties": {"tenantId": fake.tenant_id}})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "VaultNameNotValid")
    created = arm_send(fake, "PUT", path, arm_token, {"location": "westeurope", "properties": {
        "tenantId": fake.tenant_id, "sku": {"family": "A", "name": "standard"}, "enableRbacAuthorization": True}})
    assert created.status_code == 201 and created.json()["properties"]["publicNetworkAccess"] == "Enabled"
    credential = build_credential(settings)
    proxy = AzureProxy(fake.public_port, AZURE_HOSTS).start()
    try:
        outside = KeyClient(f"https://{name}.vault.azure.net", credential, proxies={"https": proxy.url},
                            connection_verify=str(fake.ca_pem_path), retry_total=0)
        inside = KeyClient(f"https://{name}.vault.azure.net", credential, **client_kwargs(settings, key_vault=True))
        kid = outside.create_rsa_key("k").id  # public access: the host may create keys
        body = arm_send(fake, "GET", path, arm_token).json()
        body["properties"]["publicNetworkAccess"] = "Disabled"
        assert arm_send(fake, "PUT", path, arm_token, body).status_code == 200
        with pytest.raises(HttpResponseError) as refused:
            outside.get_key("k")
        assert refused.value.status_code == 403
        assert refused.value.error is not None and refused.value.error.code == "Forbidden"
        assert "not from a trusted service nor via an approved private link" in str(refused.value.message)
        assert inside.get_key("k").id == kid  # the fake's own address is the cluster's private link
    finally:
        proxy.stop()


def test_proxy_tunnels_only_azure_hosts_on_443(fake: FakeAzure) -> None:
    import socket

    from aks_kms_lab.fake_azure.server import AZURE_HOSTS
    from aks_kms_lab.proxy import AzureProxy

    proxy = AzureProxy(fake.public_port, AZURE_HOSTS).start()

    def first_line(request: bytes) -> str:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(request)
            return s.recv(4096).split(b"\r\n", 1)[0].decode()

    try:
        assert first_line(b"CONNECT management.azure.com:443 HTTP/1.1\r\n\r\n").endswith("200 Connection established")
        assert first_line(b"CONNECT kv1.vault.azure.net:443 HTTP/1.1\r\n\r\n").endswith("200 Connection established")
        assert " 403 " in first_line(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        assert " 403 " in first_line(b"CONNECT a.b.vault.azure.net:443 HTTP/1.1\r\n\r\n")
        assert " 403 " in first_line(b"CONNECT management.azure.com:80 HTTP/1.1\r\n\r\n")
        assert " 405 " in first_line(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        assert proxy.refused == ["example.com:443", "a.b.vault.azure.net:443", "management.azure.com:80"]
    finally:
        proxy.stop()


def test_user_password_sign_in_and_graph_me(fake: FakeAzure, settings: AzureSettings) -> None:
    """``az login -u -p`` (ROPC through the Azure CLI's public client) and Graph's ``/me``, as az reaches
    them: Azure's own host names through the lab's proxy (MSAL's user-realm lookup ignores the port of a
    custom authority, so only the real names work for this flow)."""
    import warnings

    from azure.identity import UsernamePasswordCredential

    from aks_kms_lab.fake_azure.server import AZURE_HOSTS
    from aks_kms_lab.proxy import AzureProxy

    az_client = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    proxy = AzureProxy(fake.public_port, AZURE_HOSTS).start()
    via = {"proxies": {"https": proxy.url}, "connection_verify": str(fake.ca_pem_path)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ROPC is deprecated; az still signs in with it
            user = UsernamePasswordCredential(az_client, fake.user_name, fake.user_password, **via)
            wrong = UsernamePasswordCredential(az_client, fake.user_name, "not-it", **via)
            arm = user.get_token("https://management.core.windows.net//.default").token
            with pytest.raises(ClientAuthenticationError, match="AADSTS50126"):
                wrong.get_token("https://management.core.windows.net//.default")
            graph = user.get_token("https://graph.microsoft.com/.default").token
        assert [s["subscriptionId"] for s in arm_get(fake, "/subscriptions", arm).json()["value"]] == [SUB]

        def me(token: str) -> requests.Response:
            return requests.get("https://graph.microsoft.com/v1.0/me", headers={"Authorization": f"Bearer {token}"},
                                proxies={"https": proxy.url}, verify=str(fake.ca_pem_path), timeout=10)

        signed_in = me(graph)
        assert signed_in.status_code == 200 and signed_in.json()["id"] == fake.user_object_id
        assert signed_in.json()["userPrincipalName"] == fake.user_name
        app = me(build_credential(settings).get_token("https://graph.microsoft.com/.default").token)
        assert app.status_code == 400 and "delegated authentication flow" in app.json()["error"]["message"]
        assert me(arm).status_code == 401  # an ARM token is not a Graph token
    finally:
        proxy.stop()
