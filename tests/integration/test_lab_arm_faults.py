"""The fake ARM's ambiguous outcomes, driven through the real azure-mgmt-containerservice client.

Each fault is one a reconcile loop must survive without losing track of a write that happened:

* "PUT committed, response lost": the PUT is applied (operation launched, eTag changed) but the
  client sees a 504, a connection closed without an answer, or nothing until its read timeout. The
  SDK's retry of the same If-Match PUT then gets 412: from the client's side, a conflict; in truth,
  its own write.
* "operation Failed after the key was applied": the API servers were rolled onto the new key and
  the operation still ends Failed.
* 409 / 429 storms: N answers in a row with Retry-After before the service answers again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.policies import RetryPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ClientSecretCredential
from azure.mgmt.containerservice import ContainerServiceClient

from aks_kms_lab.fake_azure import FakeAzure

pytestmark = pytest.mark.integration

SUB = "00000000-0000-0000-0000-0000000000bb"
RG = "rg-faults"
VAULT = "kv-faults"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.KeyVault/vaults/{VAULT}"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzure]:
    with FakeAzure(tmp_path_factory.mktemp("fake-azure-faults")) as f:
        f.add_vault(SUB, RG, VAULT)
        yield f


@pytest.fixture(autouse=True)
def _reset(fake: FakeAzure) -> Iterator[None]:
    fake.set_lro(seconds=0.05)
    yield
    fake.wait_idle()
    fake.clear_faults()
    fake.set_lro(seconds=0.05)
    fake.on_kms_change = None


def sdk_client(fake: FakeAzure, *, read_timeout: float = 10, retries: int = 3) -> ContainerServiceClient:
    """The SDK as an application would build it: client-secret credential, azure-core's own retry."""
    ca = str(fake.ca_pem_path)
    credential = ClientSecretCredential(fake.tenant_id, fake.client_id, fake.client_secret,
                                        authority=fake.authority, disable_instance_discovery=True,
                                        connection_verify=ca)
    return ContainerServiceClient(
        credential, SUB, base_url=fake.url, polling_interval=0.02,
        transport=RequestsTransport(connection_verify=ca, connection_timeout=5, read_timeout=read_timeout),
        retry_policy=RetryPolicy(retry_total=retries, retry_backoff_factor=0.01, retry_backoff_max=0.05),
    )


def new_cluster(fake: FakeAzure) -> tuple[str, str]:
    """A fresh cluster whose identity may use a fresh key; returns (cluster name, key URL)."""
    name = f"aks-{uuid.uuid4().hex[:8]}"
    obj = fake.add_cluster(SUB, RG, name)
    principal = next(iter(obj["identity"]["userAssignedIdentities"].values()))["principalId"]
    fake.grant_role(principal, VAULT_ID, "Key Vault Crypto User")
    return name, fake.create_key(VAULT, f"etcd-{name}")


def with_kms(body: Any, key_id: str) -> Any:
    body.security_profile.azure_key_vault_kms = {"enabled": True, "keyId": key_id, "keyVaultNetworkAccess": "Public"}
    return body


def cluster_puts(fake: FakeAzure, name: str) -> list[Any]:
    return [r for r in fake.requests if r.method == "PUT" and r.path.endswith(f"/managedClusters/{name}")]


def writes(fake: FakeAzure, name: str) -> list[Any]:
    return [w for w in fake.writes if w.method == "PUT" and w.path.endswith(f"/managedClusters/{name}")]


@pytest.mark.parametrize("mode", ["504", "drop", "hang"])
def test_lost_put_response_is_applied_and_the_sdk_retry_gets_412(fake: FakeAzure, mode: str) -> None:
    name, key = new_cluster(fake)
    client = sdk_client(fake, read_timeout=1.0)
    hooks: list[dict[str, Any]] = []
    fake.on_kms_change = lambda _cluster, _old, new: hooks.append(new)
    body = client.managed_clusters.get(RG, name)
    before_etag = body.e_tag
    fake.inject_lost_response("PUT", f"/managedClusters/{name}$", mode, hold_seconds=4.0)

    with pytest.raises(HttpResponseError) as info:
        client.managed_clusters.begin_create_or_update(
            RG, name, with_kms(body, key), etag=before_etag, match_condition=MatchConditions.IfNotModified)

    # What the client saw: its own retry refused as a conflict.
    assert info.value.status_code == 412
    assert [r.status for r in cluster_puts(fake, name)] == [504 if mode == "504" else 0, 412]
    # What happened: the first PUT was applied once, and its operation ran to the end.
    fake.wait_idle()
    [write] = writes(fake, name)
    assert write.summary["responseLost"] == mode and write.summary["ifMatch"] == f'"{before_etag}"'
    stored = fake.cluster(SUB, RG, name) or {}
    assert stored["eTag"] != before_etag
    assert stored["properties"]["securityProfile"]["azureKeyVaultKms"]["keyId"] == key
    assert stored["properties"]["provisioningState"] == "Succeeded"
    assert [h["keyId"] for h in hooks] == [key]
    client.close()


def test_lost_response_only_hits_successful_requests(fake: FakeAzure) -> None:
    """A PUT refused (412) answers normally and leaves the lost-response fault armed for the next
    accepted one."""
    name, key = new_cluster(fake)
    client = sdk_client(fake, retries=0)
    body = client.managed_clusters.get(RG, name)
    fake.inject_lost_response("PUT", f"/managedClusters/{name}$", "504")
    with pytest.raises(HttpResponseError) as stale:
        client.managed_clusters.begin_create_or_update(
            RG, name, with_kms(body, key), etag='"not-the-etag"', match_condition=MatchConditions.IfNotModified)
    assert stale.value.status_code == 412
    with pytest.raises(HttpResponseError) as lost:
        client.managed_clusters.begin_create_or_update(
            RG, name, with_kms(body, key), etag=body.e_tag, match_condition=MatchConditions.IfNotModified)
    assert lost.value.status_code == 504
    assert [r.status for r in cluster_puts(fake, name)] == [412, 504]
    assert len(writes(fake, name)) == 1
    client.close()


def test_operation_fails_after_the_key_reached_the_api_servers(fake: FakeAzure) -> None:
    name, key = new_cluster(fake)
    client = sdk_client(fake)
    applied: list[str] = []
    fake.on_kms_change = lambda _cluster, _old, new: applied.append(new["keyId"])
    fake.set_lro(seconds=0.05, fail_after_apply=True)
    body = client.managed_clusters.get(RG, name)
    poller = client.managed_clusters.begin_create_or_update(
        RG, name, with_kms(body, key), etag=body.e_tag, match_condition=MatchConditions.IfNotModified)
    with pytest.raises(HttpResponseError) as info:
        poller.result()
    assert "InternalOperationError" in str(info.value)
    assert applied == [key]  # AKS-sim rolled the API servers onto the key before the operation failed
    after = client.managed_clusters.get(RG, name)
    assert after.provisioning_state == "Failed"
    assert after.security_profile.azure_key_vault_kms.key_id == key
    # One operation only: the next one is not failed.
    again = client.managed_clusters.begin_create_or_update(
        RG, name, after, etag=after.e_tag, match_condition=MatchConditions.IfNotModified).result()
    assert again.provisioning_state == "Succeeded"
    client.close()


def test_failure_before_apply_never_touches_the_api_servers(fake: FakeAzure) -> None:
    """The counterpart: without ``fail_after_apply`` the failed operation never reached AKS-sim."""
    name, key = new_cluster(fake)
    client = sdk_client(fake)
    applied: list[str] = []
    fake.on_kms_change = lambda _cluster, _old, new: applied.append(new["keyId"])
    fake.set_lro(seconds=0.05, fail_with=("InternalOperationError", "node image pull failed"))
    body = client.managed_clusters.get(RG, name)
    with pytest.raises(HttpResponseError):
        client.managed_clusters.begin_create_or_update(
            RG, name, with_kms(body, key), etag=body.e_tag, match_condition=MatchConditions.IfNotModified).result()
    assert applied == []
    client.close()


@pytest.mark.parametrize(("status", "code"), [(429, "TooManyRequests"), (409, "OperationNotAllowed")])
def test_storm_of_n_answers_with_retry_after_then_the_service_answers(fake: FakeAzure, status: int,
                                                                      code: str) -> None:
    name, _ = new_cluster(fake)
    path = f"/managedClusters/{name}$"

    def seen() -> list[int]:
        return [r.status for r in fake.requests if r.path.endswith(f"/managedClusters/{name}")]

    # azure-core's own retry sleeps Retry-After (for any status that carries it) and outlasts a storm
    # shorter than its budget...
    fake.inject_storm("GET", path, status, times=3, retry_after=0.05)
    patient = sdk_client(fake, retries=5)
    assert patient.managed_clusters.get(RG, name).name == name
    assert seen() == [status, status, status, 200]
    patient.close()

    # ... and surfaces one longer than its budget, with the service's code and Retry-After.
    fake.inject_storm("GET", path, status, times=3, retry_after=0.05)
    hasty = sdk_client(fake, retries=1)
    with pytest.raises(HttpResponseError) as info:
        hasty.managed_clusters.get(RG, name)
    assert info.value.status_code == status
    assert info.value.error is not None and info.value.error.code == code
    assert info.value.response is not None and info.value.response.headers["Retry-After"] == "0.05"
    assert hasty.managed_clusters.get(RG, name).name == name  # the third answer of the storm was retried
    assert seen()[4:] == [status, status, status, 200]
    hasty.close()


def test_storm_refuses_other_statuses(fake: FakeAzure, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        fake.inject_storm("GET", "x", 500)
    with pytest.raises(ValueError):
        fake.inject_lost_response("PUT", "x", "teapot")
