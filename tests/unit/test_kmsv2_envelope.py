"""EncryptedObject parsing and opening, and how the verifier classifies stored values."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from aks_kms_lab.etcdraw import Classifier, prefix_range_end
from aks_kms_lab.kmsv2 import EnvelopeError, LocalRsaWrapper, key_id_for, open_value, parse
from aks_kms_lab.kmsv2.encrypted_object_pb2 import AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED, EncryptedObject

KEY_A = "https://labvault.vault.azure.net/keys/etcd/0123456789abcdef0123456789abcdef"
KEY_B = "https://labvault.vault.azure.net/keys/etcd/fedcba9876543210fedcba9876543210"
ETCD_KEY = "/registry/secrets/team-a/db"
PLAIN = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret"


def seal_seed_mode(wrapper: LocalRsaWrapper, plaintext: bytes, etcd_key: str) -> EncryptedObject:
    """What the API server stores in seed mode, built the way the reference describes it."""
    seed = os.urandom(32)
    info, nonce = os.urandom(32), os.urandom(12)
    key = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(seed)
    sealed = AESGCM(key).encrypt(nonce, plaintext, etcd_key.encode())
    return EncryptedObject(encryptedData=info + nonce + sealed, keyID=key_id_for(wrapper.key_url),
                           encryptedDEKSource=wrapper.wrap(seed).ciphertext,
                           annotations={"version.azure.akv.io": b"1"},
                           encryptedDEKSourceType=HKDF_SHA256_XNONCE_AES_GCM_SEED)


def stored(obj: EncryptedObject, provider: str = "akv-01234567") -> bytes:
    return f"k8s:enc:kms:v2:{provider}:".encode() + obj.SerializeToString()


def test_parse_and_open_seed_mode() -> None:
    wrapper = LocalRsaWrapper(KEY_A)
    value = parse(stored(seal_seed_mode(wrapper, PLAIN, ETCD_KEY)))
    assert value.provider == "akv-01234567"
    assert value.key_id == key_id_for(KEY_A)
    assert value.obj.encryptedDEKSourceType == HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert dict(value.obj.annotations) == {"version.azure.akv.io": b"1"}
    assert open_value(value, ETCD_KEY, wrapper.unwrap) == PLAIN


def test_open_checks_the_etcd_key_as_aad() -> None:
    wrapper = LocalRsaWrapper(KEY_A)
    value = parse(stored(seal_seed_mode(wrapper, PLAIN, ETCD_KEY)))
    with pytest.raises(InvalidTag):  # a value copied under another etcd key does not open
        open_value(value, "/registry/secrets/team-b/db", wrapper.unwrap)


def test_open_aes_gcm_key_mode() -> None:
    wrapper = LocalRsaWrapper(KEY_A)
    dek, nonce = AESGCM.generate_key(256), os.urandom(12)
    obj = EncryptedObject(encryptedData=nonce + AESGCM(dek).encrypt(nonce, PLAIN, ETCD_KEY.encode()),
                          keyID=key_id_for(KEY_A), encryptedDEKSource=wrapper.wrap(dek).ciphertext,
                          encryptedDEKSourceType=AES_GCM_KEY)
    assert open_value(parse(stored(obj)), ETCD_KEY, wrapper.unwrap) == PLAIN


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"k8s:enc:kms:v2:", "without a provider"),
        (b"k8s:enc:kms:v2:p:\xff\xff\xff", "does not decode"),
        (stored(EncryptedObject(keyID="k", encryptedDEKSource=b"d")), "encryptedData is empty"),
        (stored(EncryptedObject(encryptedData=b"x", encryptedDEKSource=b"d")), "keyID"),
        (stored(EncryptedObject(encryptedData=b"x", keyID="k")), "encryptedDEKSource"),
        (stored(EncryptedObject(encryptedData=b"x", keyID="k", encryptedDEKSource=b"d" * 1025)), "1 KiB"),
        (stored(EncryptedObject(encryptedData=b"x", keyID="k", encryptedDEKSource=b"d",
                                encryptedDEKSourceType=7)), "unknown encryptedDEKSourceType"),  # type: ignore[arg-type]
    ],
)
def test_parse_rejects_malformed_envelopes(value: bytes, problem: str) -> None:
    with pytest.raises(EnvelopeError, match=problem):
        parse(value)


def test_classifier_names_every_kind_of_stored_value() -> None:
    wrapper = LocalRsaWrapper(KEY_A)
    under_a = stored(seal_seed_mode(wrapper, PLAIN, ETCD_KEY))
    under_unknown = stored(seal_seed_mode(LocalRsaWrapper(KEY_B), PLAIN, ETCD_KEY), "akv-fedcba98")
    classify = Classifier([KEY_A]).classify
    assert classify(under_a).label == KEY_A
    assert classify(under_a).provider == "akv-01234567"
    unknown = classify(under_unknown)
    assert (unknown.kind, unknown.key_url, unknown.label) == ("kms-v2", None, f"kms-v2-unknown-key:{key_id_for(KEY_B)}")
    assert classify(PLAIN).label == "identity"
    assert classify(b"k8s:enc:aescbc:v1:key1:" + os.urandom(48)).label == "aescbc:v1:key1"
    assert classify(b"k8s:enc:kms:v1:legacy:" + os.urandom(48)).label == "kms:v1:legacy"
    assert classify(b"k8s:enc:kms:v2:p:\xff\xff").label == "unreadable"
    assert classify(b"garbage").label == "unreadable"
    assert classify(b"k8s:enc:aescbc").label == "unreadable"


def test_prefix_range_end() -> None:
    assert prefix_range_end(b"/registry/secrets/") == b"/registry/secrets0"
    assert prefix_range_end(b"a\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\x00"
