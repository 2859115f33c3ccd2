"""Key wrappers: what the KMS plugin does with the API server's DEK seed.

A :class:`KeyWrapper` stands for exactly one Key Vault key *version* (as one Azure/kubernetes-kms
instance does) and wraps/unwraps with RSA-OAEP-256. Two implementations:

* :class:`KeyVaultWrapper`: azure-keyvault-keys' ``CryptographyClient`` against a real or fake Key
  Vault. The SDK fetches the public key once and wraps locally; unwrap always calls the vault, so a
  disabled, expired or unreachable key shows up on the first unwrap (the plugin's health check does
  a wrap + unwrap for that reason).
* :class:`LocalRsaWrapper`: an in-memory RSA key with Key Vault's enabled/expiry rules, for unit
  tests and for a lab without the fake Azure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHM = "RSA-OAEP-256"  # the only algorithm Azure/kubernetes-kms uses (RSA keys only)


def key_id_for(key_url: str) -> str:
    """The KMS v2 key ID AKS's plugin reports for a versioned key URL: hex SHA-256 of the URL."""
    return hashlib.sha256(key_url.encode()).hexdigest()


class KeyUnavailableError(Exception):
    """The key cannot be used right now (disabled, expired, not yet valid, vault unreachable)."""


@dataclass(frozen=True)
class Wrapped:
    key_url: str  # the versioned key URL (``kid``) that wrapped
    ciphertext: bytes


@runtime_checkable
class KeyWrapper(Protocol):
    """One Key Vault key version that wraps and unwraps data keys."""

    @property
    def key_url(self) -> str:
        """The versioned key URL, ``https://<vault>.vault.azure.net/keys/<name>/<version>``."""
        ...

    def wrap(self, plaintext: bytes) -> Wrapped:
        """Wrap with RSA-OAEP-256; raises :class:`KeyUnavailableError` when the key cannot be used."""
        ...

    def unwrap(self, ciphertext: bytes) -> bytes:
        """Unwrap with RSA-OAEP-256; raises :class:`KeyUnavailableError` when the key cannot be used."""
        ...


_OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class LocalRsaWrapper:
    """An RSA key in memory that follows Key Vault's rules for disabled and expired keys.

    ``enabled``, ``expires_on`` and ``not_before`` may be changed at any time (tests flip them to
    watch the plugin turn unhealthy). Messages mimic Key Vault's, e.g. "Operation unwrapKey is not
    allowed on an expired key."
    """

    def __init__(self, key_url: str, private_key: rsa.RSAPrivateKey | None = None, *, enabled: bool = True,
                 expires_on: dt.datetime | None = None, not_before: dt.datetime | None = None) -> None:
        self._key_url = key_url
        self.private_key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.enabled = enabled
        self.expires_on = expires_on
        self.not_before = not_before

    @classmethod
    def from_pem_file(cls, key_url: str, path: Path) -> LocalRsaWrapper:
        """Load an RSA private key from PEM, creating (mode 0600) one if the file does not exist."""
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path}: not an RSA private key")
        return cls(key_url, key)

    @property
    def key_url(self) -> str:
        return self._key_url

    def _check(self, operation: str) -> None:
        now = dt.datetime.now(dt.UTC)
        if not self.enabled:
            raise KeyUnavailableError(f"Operation {operation} is not allowed on a disabled key.")
        if self.expires_on is not None and now >= self.expires_on:
            raise KeyUnavailableError(f"Operation {operation} is not allowed on an expired key.")
        if self.not_before is not None and now < self.not_before:
            raise KeyUnavailableError(f"Operation {operation} is not allowed on a key that is not yet valid.")

    def wrap(self, plaintext: bytes) -> Wrapped:
        self._check("wrapKey")
        return Wrapped(self._key_url, self.private_key.public_key().encrypt(plaintext, _OAEP_SHA256))

    def unwrap(self, ciphertext: bytes) -> bytes:
        self._check("unwrapKey")
        try:
            return self.private_key.decrypt(ciphertext, _OAEP_SHA256)
        except ValueError as e:
            raise ValueError("ciphertext was not wrapped by this key") from e


# ---------------------------------------------------------------------------------- Key Vault


def keyvault_client_options(env: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """(credential, CryptographyClient kwargs) from the environment, exactly as the operator builds them.

    The plugin reads the operator's variables (``aks_kms_operator.azure.config``): ``AZURE_TENANT_ID``,
    ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET`` or ``AZURE_FEDERATED_TOKEN_FILE``,
    ``AZURE_AUTHORITY_HOST``, ``AKS_KMS_CA_BUNDLE``, ``AKS_KMS_KEYVAULT_ENDPOINT`` (send vault traffic
    to e.g. the fake Azure, keeping ``Host: <vault>.vault.azure.net`` so key URLs and key IDs are
    Azure's) and ``AKS_KMS_KEYVAULT_VERIFY_CHALLENGE_RESOURCE``. Retries and timeouts are capped:
    the API server gives every plugin call 3 s by default, so one slow vault call must not hang.
    """
    from aks_kms_operator.azure.config import AzureSettings
    from aks_kms_operator.azure.pipeline import build_credential, client_kwargs

    settings = AzureSettings.from_env(env)
    settings = replace(settings, retry_total=min(settings.retry_total, 1),
                       http_timeout=min(settings.http_timeout, 5.0))
    kwargs = client_kwargs(settings, key_vault=True)
    kwargs["verify_challenge_resource"] = settings.keyvault_verify_challenge_resource
    return build_credential(settings), kwargs


class KeyVaultWrapper:
    """One Key Vault key version through azure-keyvault-keys' ``CryptographyClient``."""

    def __init__(self, key_url: str, credential: Any, **client_kwargs: Any) -> None:
        from azure.keyvault.keys.crypto import CryptographyClient

        parts = urlsplit(key_url)
        segments = parts.path.strip("/").split("/")
        if parts.scheme != "https" or len(segments) != 3 or segments[0] != "keys" or not segments[2]:
            raise ValueError(f"a KMS plugin needs a versioned key URL (https://<vault>/keys/<name>/<version>), "
                             f"got {key_url!r}")
        self._key_url = key_url
        self._client = CryptographyClient(key_url, credential, **client_kwargs)
        self._lock = threading.Lock()  # CryptographyClient's lazy key download is not thread-safe

    @classmethod
    def from_env(cls, key_url: str, env: dict[str, str] | None = None) -> KeyVaultWrapper:
        credential, kwargs = keyvault_client_options(env)
        return cls(key_url, credential, **kwargs)

    @property
    def key_url(self) -> str:
        return self._key_url

    def wrap(self, plaintext: bytes) -> Wrapped:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        try:
            with self._lock:
                result = self._client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, plaintext)
        except (AzureError, ValueError) as e:
            raise KeyUnavailableError(_azure_message(e)) from e
        return Wrapped(result.key_id or self._key_url, result.encrypted_key)

    def unwrap(self, ciphertext: bytes) -> bytes:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        try:
            return self._client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, ciphertext).key
        except (AzureError, ValueError) as e:
            raise KeyUnavailableError(_azure_message(e)) from e

    def close(self) -> None:
        self._client.close()


def _azure_message(error: Exception) -> str:
    inner = getattr(getattr(error, "error", None), "innererror", None) or {}
    code = inner.get("code") if isinstance(inner, dict) else None
    message = str(getattr(error, "message", "") or error).splitlines()[0]
    return f"{code}: {message}" if code else message
