"""plan's offline validation agrees with the real API server's admission of the CRD (server-side dry run).

For each object, the API server (dryRun=All: validated, nothing stored) and ``api.validate`` must
agree on accepted or refused, and every message ``api.validate`` gives must be in the API server's
answer: a plan of a file fails exactly when `kubectl apply` of it would, with the same words.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aks_kms_lab.controlplane import ControlPlane
from aks_kms_operator.api.validate import validate_policy

pytestmark = pytest.mark.integration
POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"
KEY = "https://kv1.vault.azure.net/keys/etcd/" + "a" * 32
VAULT = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/"
         "vaults/kv1")


def policy(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000",
                                        "resourceGroup": "rg", "name": "aks"},
                            "kms": {"enabled": True, "keyId": KEY}}
    for path, value in spec.items():
        *parents, last = path.split("__")
        node = body
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return {"apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy",
            "metadata": {"name": "dry-run"}, "spec": body}


CASES = {
    "good": policy(),
    "good-private": policy(kms__keyVaultNetworkAccess="Private", kms__keyVaultResourceId=VAULT),
    "good-follow-latest": policy(kms__keyId="https://kv1.vault.azure.net/keys/etcd",
                                 rotation__followLatestVersion=True),
    "good-disabled": policy(kms={"enabled": False}),
    "versionless": policy(kms__keyId="https://kv1.vault.azure.net/keys/etcd"),
    "not-a-key-url": policy(kms__keyId="https://example.com/keys/etcd/" + "a" * 32),
    "private-without-vault": policy(kms__keyVaultNetworkAccess="Private"),
    "public-with-vault": policy(kms__keyVaultResourceId=VAULT),
    "bad-vault-id": policy(kms__keyVaultNetworkAccess="Private", kms__keyVaultResourceId="/subscriptions/x"),
    "enabled-without-key": policy(kms={"enabled": True}),
    "bad-enum": policy(kms__keyVaultNetworkAccess="private"),
    "bad-subscription": policy(cluster__subscriptionId="my-sub"),
    "empty-name": policy(cluster__name=""),
    "concurrency-0": policy(rewrite__concurrency=0),
    "negative-rate": policy(rewrite__maxWritesPerSecond=-1),
    "bad-duration": policy(rotation__expiryWarning="30 days"),
    "bad-deletion-policy": policy(deletionPolicy="Delete"),
    "too-many-resources": policy(rewrite__resources=["secrets", "secrets"]),
    "good-managed-pmk": policy(kms={"enabled": True, "experience": "Managed", "keyManagement": "PlatformManaged"}),
    "good-managed-cmk": policy(kms={"enabled": True, "experience": "Managed",
                                    "keyId": "https://kv1.vault.azure.net/keys/etcd", "migration": "Allow"}),
    "managed-versioned": policy(kms__experience="Managed"),
    "pmk-with-key": policy(kms__experience="Managed", kms__keyManagement="PlatformManaged"),
    "pmk-on-legacy": policy(kms={"enabled": True, "keyManagement": "PlatformManaged"}),
    "managed-disabled": policy(kms={"enabled": False, "experience": "Managed", "keyManagement": "PlatformManaged"}),
    "migration-on-legacy": policy(kms__migration="Allow"),
    "follow-on-managed": policy(kms={"enabled": True, "experience": "Managed",
                                     "keyId": "https://kv1.vault.azure.net/keys/etcd"},
                                rotation__followLatestVersion=True),
    "good-verify-requested": policy(verify__requestedAt="2026-12-01T09:00:00Z"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_offline_validation_agrees_with_admission(crd_installed: ControlPlane, case: str) -> None:
    obj = copy.deepcopy(CASES[case])
    code, answer = crd_installed.request("POST", f"{POLICIES}?dryRun=All&fieldValidation=Strict", obj)
    problems = validate_policy(obj)
    assert (code == 201) == (not problems), (code, answer, problems)
    assert case.startswith("good") == (code == 201), (code, answer)
    server = str((answer or {}).get("message", ""))
    for problem in problems:
        if case in CEL_CASES:  # the CRD's own message, word for word
            assert problem.message in server, (problem, server)
        else:  # structural: the API server words it (Unsupported value, Too many), for the same field
            assert problem.field in server, (problem, server)


CEL_CASES = {"versionless", "not-a-key-url", "private-without-vault", "public-with-vault", "bad-vault-id",
             "enabled-without-key", "bad-subscription", "empty-name", "concurrency-0", "negative-rate",
             "bad-duration", "managed-versioned", "pmk-with-key", "pmk-on-legacy", "managed-disabled",
             "migration-on-legacy", "follow-on-managed"}
