"""api.validate: a policy file is refused with the CRD's own messages (the CEL subset, structural checks)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from aks_kms_operator.api.validate import CelUnsupported, apply_defaults, cel, spec_schema, validate_policy

KEY = "https://kv1.vault.azure.net/keys/etcd/" + "a" * 32
GOOD: dict[str, Any] = {
    "apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy", "metadata": {"name": "default"},
    "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg",
                         "name": "aks"},
             "kms": {"enabled": True, "keyId": KEY}},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = obj
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return obj


def messages(obj: Any, **kw: Any) -> list[str]:
    return [str(p) for p in validate_policy(obj, **kw)]


def test_a_good_policy_passes() -> None:
    assert messages(GOOD) == []


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("spec.kms.keyId", "https://kv1.vault.azure.net/keys/etcd", "spec.kms.keyId must name a key version"),
    ("spec.kms.keyId", "http://kv1.vault.azure.net/keys/etcd/" + "a" * 32, "spec.kms.keyId must be an https"),
    ("spec.kms.keyVaultNetworkAccess", "Private", "spec.kms.keyVaultResourceId is required when"),
    ("spec.kms.keyVaultNetworkAccess", "private", "spec.kms.keyVaultNetworkAccess must be one of Public, Private"),
    ("spec.kms.keyVaultResourceId", "/subscriptions/x", "spec.kms.keyVaultResourceId must be a Microsoft.KeyVault"),
    ("spec.kms.enabled", "yes", "spec.kms.enabled must be true or false"),
    ("spec.kms.keyid", KEY, "spec.kms.keyid is not a field of the ClusterEncryptionPolicy API (did you mean keyId?)"),
    ("spec.cluster.subscriptionId", "sub", "spec.cluster.subscriptionId must be a subscription GUID"),
    ("spec.rewrite", {"concurrency": 0}, "spec.rewrite.concurrency must be between 1 and 256"),
    ("spec.rewrite", {"maxWritesPerSecond": -1}, "spec.rewrite.maxWritesPerSecond must be 0 (no cap)"),
    ("spec.rotation", {"checkInterval": "1 hour"}, "spec.rotation.checkInterval must be a duration"),
    ("spec.deletionPolicy", "Delete", "spec.deletionPolicy must be one of Retain, Disable"),
    ("kind", "Policy", "kind must be ClusterEncryptionPolicy"),
    ("metadata.name", "Default", "metadata.name 'Default' must be a lowercase DNS subdomain name"),
])
def test_each_mistake_names_the_field_and_the_fix(path: str, value: Any, expected: str) -> None:
    found = messages(with_(path, value))
    assert any(m.startswith(expected) for m in found), found


def test_enabled_without_key() -> None:
    obj = copy.deepcopy(GOOD)
    del obj["spec"]["kms"]["keyId"]
    assert messages(obj) == ["spec.kms.keyId is required when spec.kms.enabled is true: set it to the Key Vault "
                             "key URL (or, on experience Managed, set keyManagement: PlatformManaged)"]


def test_missing_cluster_is_required() -> None:
    obj = copy.deepcopy(GOOD)
    del obj["spec"]["cluster"]
    assert "spec.cluster is required" in messages(obj)


def test_versionless_key_is_fine_when_following_the_latest_version() -> None:
    obj = with_("spec.kms.keyId", "https://kv1.vault.azure.net/keys/etcd")
    obj["spec"]["rotation"] = {"followLatestVersion": True}
    assert messages(obj) == []


def test_cluster_is_immutable_against_the_stored_policy() -> None:
    stored = copy.deepcopy(GOOD["spec"])
    stored["cluster"]["name"] = "other"
    assert any(m.startswith("spec.cluster is immutable") for m in messages(GOOD, old_spec=stored))
    assert messages(GOOD, old_spec=GOOD["spec"]) == []


def _rules(schema: dict[str, Any], value: Any) -> Iterator[tuple[str, Any]]:
    for rule in schema.get("x-kubernetes-validations") or []:
        yield rule["rule"], value
    for name, prop in (schema.get("properties") or {}).items():
        if isinstance(value, dict) and name in value:
            yield from _rules(prop, value[name])


def test_every_rule_of_the_crd_is_in_the_supported_cel_subset() -> None:
    """A rule written with CEL this module cannot evaluate fails here, not silently in plan."""
    value = apply_defaults(spec_schema(), copy.deepcopy(GOOD["spec"]))
    rules = list(_rules(spec_schema(), value))
    assert len(rules) >= 10
    for rule, self_value in rules:
        assert cel(rule, self_value, self_value) in (True, False), rule


def test_unsupported_cel_is_an_error_not_a_pass() -> None:
    with pytest.raises(CelUnsupported):
        cel("self.size() > 1", "ab")
    with pytest.raises(CelUnsupported):
        cel("has(self.x)", {})


@pytest.mark.parametrize(("expr", "value", "expected"), [
    ("self == '' || self.matches(r'^a+$')", "", True),
    ("self == '' || self.matches(r'^a+$')", "ab", False),
    ("!self.enabled || self.keyId != ''", {"enabled": True, "keyId": ""}, False),
    ("self >= 1 && self <= 256", 256, True),
    ("self >= 0.0", -0.5, False),
    ("(self == 'a')", "a", True),
])
def test_cel_subset(expr: str, value: Any, expected: bool) -> None:
    assert cel(expr, value) is expected
