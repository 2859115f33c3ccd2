"""KMS v2 values as stored in etcd: ``k8s:enc:kms:v2:<provider>:`` + an ``EncryptedObject``.

:func:`parse` is what the verifier needs (which key ID encrypted a value). :func:`open_value` goes
further and decrypts, given the plugin's unwrap; the lab uses it to prove that what the API server
stored really is our plugin's envelope around the object, not just something with the right prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from google.protobuf.message import DecodeError

from .encrypted_object_pb2 import AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED, EncryptedObject

PREFIX = b"k8s:enc:kms:v2:"
_INFO_SIZE = 32  # random per-object HKDF info in seed mode
_NONCE_SIZE = 12


class EnvelopeError(ValueError):
    """The value is not a well-formed KMS v2 envelope."""


@dataclass(frozen=True)
class KmsV2Value:
    provider: str  # the provider name from the EncryptionConfiguration (in the prefix)
    obj: EncryptedObject

    @property
    def key_id(self) -> str:
        return self.obj.keyID


def parse(value: bytes) -> KmsV2Value:
    """Split the prefix and decode the ``EncryptedObject``, checking what the API server checks."""
    if not value.startswith(PREFIX):
        raise EnvelopeError("not a KMS v2 value")
    provider, sep, payload = value[len(PREFIX):].partition(b":")
    if not sep or not provider:
        raise EnvelopeError("KMS v2 prefix without a provider name")
    obj = EncryptedObject()
    try:
        obj.ParseFromString(payload)
    except DecodeError as e:
        raise EnvelopeError(f"EncryptedObject does not decode: {e}") from e
    if obj.encryptedDEKSourceType not in (AES_GCM_KEY, HKDF_SHA256_XNONCE_AES_GCM_SEED):
        raise EnvelopeError(f"unknown encryptedDEKSourceType {obj.encryptedDEKSourceType}")
    if not obj.encryptedData:
        raise EnvelopeError("encryptedData is empty")
    if not obj.keyID or len(obj.keyID) > 1024:
        raise EnvelopeError("keyID is empty or longer than 1 KiB")
    if not obj.encryptedDEKSource or len(obj.encryptedDEKSource) > 1024:
        raise EnvelopeError("encryptedDEKSource is empty or longer than 1 KiB")
    return KmsV2Value(provider.decode(errors="replace"), obj)


def open_value(value: KmsV2Value, etcd_key: str, unwrap: Callable[[bytes], bytes]) -> bytes:
    """Decrypt a stored object: unwrap the DEK source, derive the data key, AES-GCM with AAD = etcd key."""
    obj = value.obj
    dek_source = unwrap(obj.encryptedDEKSource)
    data = obj.encryptedData
    if obj.encryptedDEKSourceType == HKDF_SHA256_XNONCE_AES_GCM_SEED:
        info, data = data[:_INFO_SIZE], data[_INFO_SIZE:]
        key = HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(dek_source)
    else:
        key = dek_source
    nonce, sealed = data[:_NONCE_SIZE], data[_NONCE_SIZE:]
    return AESGCM(key).decrypt(nonce, sealed, etcd_key.encode())
