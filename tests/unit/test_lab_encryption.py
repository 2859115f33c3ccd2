"""The lab's model of AKS's two KMS slots and the EncryptionConfiguration it derives."""

from __future__ import annotations

from pathlib import Path

from aks_kms_lab.encryption import (
    KeySlots,
    aescbc_provider,
    encryption_configuration,
    key_id_hash,
    kms_v2_provider,
    provider_name,
)

A = "https://v.vault.azure.net/keys/etcd/" + "a" * 32
B = "https://v.vault.azure.net/keys/etcd/" + "b" * 32
C = "https://v.vault.azure.net/keys/etcd/" + "c" * 32
SOCKETS = {k: Path(f"/tmp/{k[-1]}.sock") for k in (A, B, C)}


def providers(slots: KeySlots) -> list[str]:
    kms = encryption_configuration(slots, kms_v2_provider(SOCKETS.__getitem__))["resources"][0]["providers"]
    aes = encryption_configuration(slots, aescbc_provider)["resources"][0]["providers"]
    names = ["identity" if "identity" in p else p["kms"]["name"] for p in kms]
    assert names == ["identity" if "identity" in p else p["aescbc"]["keys"][0]["name"] for p in aes]
    return names


def test_enable_rotate_rotate_disable() -> None:
    s = KeySlots().apply(True, A)
    assert providers(s) == [provider_name(A), "identity"]
    s = s.apply(True, B)
    assert (s.current, s.previous) == (B, A)
    assert providers(s) == [provider_name(B), provider_name(A), "identity"]
    s = s.apply(True, C)
    assert s.loaded() == [C, B], "the oldest key drops out on the second rotation"
    s = s.apply(False, "")
    assert providers(s) == ["identity", provider_name(C)]


def test_reapplying_the_same_key_changes_nothing() -> None:
    s = KeySlots().apply(True, A).apply(True, B)
    assert s.apply(True, B) == s


def test_key_id_is_sha256_of_the_versioned_url() -> None:
    # sha256sum of the URL bytes, computed independently
    assert key_id_hash(A) == "83bceaf385c9a75a67521bc06421f9985292d3e53ca683c84800197c811a82e5"
    assert key_id_hash(A) != key_id_hash(B)
    assert provider_name(A).startswith("akv-")
