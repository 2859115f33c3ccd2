"""The experience fields of spec.kms (issue 12): which KMS experience a policy asks for is never guessed
from the shape of keyId, and every combination AKS would refuse, or read differently, is refused at
admission with a message naming the field and the fix. Evaluated by ``api.validate`` (the CRD's own CEL
rules); tests/integration/test_admission.py and test_policy_validation.py hold the real API server to the
same answers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aks_kms_operator.api.schema import parse
from aks_kms_operator.api.v1alpha1 import PolicySpec
from aks_kms_operator.api.validate import validate_policy

VERSIONED = "https://kv1.vault.azure.net/keys/etcd/" + "a" * 32
VERSIONLESS = "https://kv1.vault.azure.net/keys/etcd"
VAULT = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/"
         "vaults/kv1")


def policy(kms: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy", "metadata": {"name": "p"},
            "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg",
                                 "name": "aks"}, "kms": copy.deepcopy(kms), **spec}}


def messages(obj: dict[str, Any]) -> list[str]:
    return [str(p) for p in validate_policy(obj)]


GOOD = {
    "legacy-default": {"enabled": True, "keyId": VERSIONED},
    "managed-pmk": {"enabled": True, "experience": "Managed", "keyManagement": "PlatformManaged"},
    "managed-cmk": {"enabled": True, "experience": "Managed", "keyId": VERSIONLESS},
    "managed-cmk-private": {"enabled": True, "experience": "Managed", "keyId": VERSIONLESS,
                            "keyVaultNetworkAccess": "Private", "keyVaultResourceId": VAULT},
    "migrate": {"enabled": True, "experience": "Managed", "keyId": VERSIONLESS, "migration": "Allow"},
}


@pytest.mark.parametrize("kms", GOOD.values(), ids=GOOD.keys())
def test_good_shapes_pass(kms: dict[str, Any]) -> None:
    assert messages(policy(kms)) == []


def test_defaults_keep_existing_policies_on_the_legacy_experience() -> None:
    spec = parse(PolicySpec, policy({"enabled": True, "keyId": VERSIONED})["spec"])
    assert (spec.kms.experience, spec.kms.key_management, spec.kms.migration) == ("Legacy", "CustomerManaged",
                                                                                  "Forbid")


BAD = [
    ("versioned-key-on-managed", {"enabled": True, "experience": "Managed", "keyId": VERSIONED}, {},
     "spec.kms.keyId must be versionless"),
    ("pmk-with-key", {"enabled": True, "experience": "Managed", "keyManagement": "PlatformManaged",
                      "keyId": VERSIONLESS}, {}, "spec.kms.keyId must be empty when spec.kms.keyManagement is"),
    ("pmk-private", {"enabled": True, "experience": "Managed", "keyManagement": "PlatformManaged",
                     "keyVaultNetworkAccess": "Private", "keyVaultResourceId": VAULT}, {},
     "spec.kms.keyId must be empty when spec.kms.keyManagement is"),
    ("pmk-on-legacy", {"enabled": True, "keyManagement": "PlatformManaged"}, {},
     "spec.kms.keyManagement PlatformManaged needs spec.kms.experience Managed"),
    ("managed-disabled", {"enabled": False, "experience": "Managed", "keyManagement": "PlatformManaged"}, {},
     "spec.kms.enabled must be true when spec.kms.experience is Managed"),
    ("cmk-without-key", {"enabled": True, "experience": "Managed"}, {},
     "spec.kms.keyId is required when spec.kms.enabled is true"),
    ("migration-on-legacy", {"enabled": True, "keyId": VERSIONED, "migration": "Allow"}, {},
     "spec.kms.migration Allow needs spec.kms.experience Managed"),
    ("follow-latest-on-managed", {"enabled": True, "experience": "Managed", "keyId": VERSIONLESS},
     {"rotation": {"followLatestVersion": True}}, "spec.rotation.followLatestVersion applies to the legacy"),
    ("versionless-legacy-without-follow", {"enabled": True, "experience": "Legacy", "keyId": VERSIONLESS}, {},
     "spec.kms.keyId must name a key version"),
    ("unknown-experience", {"enabled": True, "experience": "New", "keyId": VERSIONLESS}, {},
     "spec.kms.experience must be one of Legacy, Managed"),
]


@pytest.mark.parametrize(("kms", "spec", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_refusals_name_the_field_and_the_fix(kms: dict[str, Any], spec: dict[str, Any], expected: str) -> None:
    found = messages(policy(kms, **spec))
    assert any(m.startswith(expected) for m in found), found


def test_legacy_follow_latest_stays_explicit() -> None:
    """A versionless keyId is legacy only together with followLatestVersion: never an implicit Managed."""
    ok = policy({"enabled": True, "keyId": VERSIONLESS}, rotation={"followLatestVersion": True})
    assert messages(ok) == []
    assert parse(PolicySpec, ok["spec"]).kms.experience == "Legacy"
