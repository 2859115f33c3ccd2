"""Where Azure is and how to talk to it, read from the environment.

The same code runs against Azure and against the lab's fake (one HTTPS port on 127.0.0.1); only
these values differ. Environment variables (all optional):

``AKS_KMS_ARM_ENDPOINT``
    ARM base URL. Default ``https://management.azure.com``.
``AKS_KMS_ARM_AUDIENCE``
    Token audience for ARM (scope is ``<audience>/.default``). Default ``https://management.azure.com``,
    also against the fake; set it for sovereign clouds.
``AZURE_AUTHORITY_HOST``
    Entra authority (azure-identity's own variable). Default ``https://login.microsoftonline.com``.
``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``
    Tenant and client (app or user-assigned identity) IDs, as azure-identity and the AKS workload
    identity webhook set them.
``AZURE_FEDERATED_TOKEN_FILE``
    Projected service account token: selects ``WorkloadIdentityCredential`` (the normal case in AKS).
``AZURE_CLIENT_SECRET``
    Selects ``ClientSecretCredential`` (lab, CI). Never logged.
``AKS_KMS_DISABLE_INSTANCE_DISCOVERY``
    ``true``/``false``; default true when the authority is not a known Azure cloud (the fake), because
    MSAL's instance discovery would otherwise call login.microsoftonline.com.
``AKS_KMS_CA_BUNDLE``
    PEM file trusted for every Azure connection (``connection_verify``); default: the system/certifi
    store. ``REQUESTS_CA_BUNDLE`` also works process-wide.
``AKS_KMS_KEYVAULT_ENDPOINT``
    Origin (``https://host:port``) that every Key Vault connection is sent to, keeping
    ``Host: <vault>.vault.azure.net`` and the real-looking vault URL inside the SDK. Empty (default):
    connect to the vault's own host. The lab sets it to the fake's URL.
``AKS_KMS_KEYVAULT_VERIFY_CHALLENGE_RESOURCE``
    ``true`` (default) keeps azure-keyvault-keys' check that the challenge's resource matches the vault
    host. With the endpoint override above the check still passes, so leave it on.
``AKS_KMS_LRO_POLLING_INTERVAL``
    Seconds between polls of an AKS operation when ARM sends no Retry-After. Default 15.
``AKS_KMS_RETRY_TOTAL``, ``AKS_KMS_RETRY_BACKOFF_FACTOR``, ``AKS_KMS_RETRY_BACKOFF_MAX``
    azure-core retries of 408/429/5xx and network errors inside one call. Defaults 3, 0.8 s, 30 s:
    a reconcile must not sit for minutes inside one call.
``AKS_KMS_MAX_INLINE_RETRY_AFTER``
    A 429/503 whose Retry-After is longer than this many seconds is not slept on inside the call but
    raised as ``AzureThrottled(retry_after)`` so the reconciler requeues. Default 10.
``AKS_KMS_HTTP_TIMEOUT``
    Connect and read timeout in seconds for one request. Default 60.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

PUBLIC_ARM = "https://management.azure.com"
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
KNOWN_AUTHORITIES = frozenset(
    {"login.microsoftonline.com", "login.chinacloudapi.cn", "login.microsoftonline.us", "login.microsoftonline.de"}
)


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _origin(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.path:
        raise ValueError(f"expected an https origin such as https://127.0.0.1:8443, got {value!r}")
    return value


@dataclass(frozen=True)
class AzureSettings:
    """Connection settings for the Azure gateways. See the module docstring for the variables."""

    arm_endpoint: str = PUBLIC_ARM
    arm_audience: str = PUBLIC_ARM
    authority_host: str = PUBLIC_AUTHORITY
    tenant_id: str = ""
    client_id: str = ""
    client_secret: str = ""
    federated_token_file: str = ""
    disable_instance_discovery: bool = False
    ca_bundle: str = ""
    keyvault_endpoint: str = ""
    keyvault_verify_challenge_resource: bool = True
    lro_polling_interval: float = 15.0
    retry_total: int = 3
    retry_backoff_factor: float = 0.8
    retry_backoff_max: float = 30.0
    max_inline_retry_after: float = 10.0
    http_timeout: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "keyvault_endpoint", _origin(self.keyvault_endpoint))
        object.__setattr__(self, "arm_endpoint", self.arm_endpoint.rstrip("/"))
        if self.lro_polling_interval < 0 or self.retry_total < 0 or self.http_timeout <= 0:
            raise ValueError("polling interval and retries must be >= 0, timeout > 0")

    def __repr__(self) -> str:  # the secret must never reach a log line
        secret = "<set>" if self.client_secret else ""
        fields = {k: v for k, v in self.__dict__.items() if k != "client_secret"}
        return f"AzureSettings(client_secret={secret!r}, " + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    @property
    def arm_scope(self) -> str:
        return self.arm_audience.rstrip("/") + "/.default"

    @property
    def connection_verify(self) -> str | bool:
        return self.ca_bundle or True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AzureSettings:
        e = os.environ if env is None else env
        authority = e.get("AZURE_AUTHORITY_HOST", "") or PUBLIC_AUTHORITY
        if "://" not in authority:
            authority = "https://" + authority
        known = (urlsplit(authority).hostname or "") in KNOWN_AUTHORITIES
        return cls(
            arm_endpoint=e.get("AKS_KMS_ARM_ENDPOINT", "") or PUBLIC_ARM,
            arm_audience=e.get("AKS_KMS_ARM_AUDIENCE", "") or PUBLIC_ARM,
            authority_host=authority.rstrip("/"),
            tenant_id=e.get("AZURE_TENANT_ID", ""),
            client_id=e.get("AZURE_CLIENT_ID", ""),
            client_secret=e.get("AZURE_CLIENT_SECRET", ""),
            federated_token_file=e.get("AZURE_FEDERATED_TOKEN_FILE", ""),
            disable_instance_discovery=_bool(e.get("AKS_KMS_DISABLE_INSTANCE_DISCOVERY"), not known),
            ca_bundle=e.get("AKS_KMS_CA_BUNDLE", ""),
            keyvault_endpoint=e.get("AKS_KMS_KEYVAULT_ENDPOINT", ""),
            keyvault_verify_challenge_resource=_bool(e.get("AKS_KMS_KEYVAULT_VERIFY_CHALLENGE_RESOURCE"), True),
            lro_polling_interval=float(e.get("AKS_KMS_LRO_POLLING_INTERVAL", "") or 15),
            retry_total=int(e.get("AKS_KMS_RETRY_TOTAL", "") or 3),
            retry_backoff_factor=float(e.get("AKS_KMS_RETRY_BACKOFF_FACTOR", "") or 0.8),
            retry_backoff_max=float(e.get("AKS_KMS_RETRY_BACKOFF_MAX", "") or 30),
            max_inline_retry_after=float(e.get("AKS_KMS_MAX_INLINE_RETRY_AFTER", "") or 10),
            http_timeout=float(e.get("AKS_KMS_HTTP_TIMEOUT", "") or 60),
        )
