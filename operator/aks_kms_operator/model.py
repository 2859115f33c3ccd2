"""Domain facts the operator observes, free of any SDK or Kubernetes type.

The Azure gateways (``aks_kms_operator.azure``) translate SDK responses into these; the planner and
the preflight checks consume only these. That keeps the safety logic pure and unit-testable.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TERMINAL_PROVISIONING_STATES = frozenset({"Succeeded", "Failed", "Canceled"})
IDENTITY = "identity"  # encryptedWith value when KMS is disabled: Secrets stored in plaintext.

_KEY_PATH = re.compile(r"^/keys/(?P<name>[A-Za-z0-9-]{1,127})(?:/(?P<version>[0-9A-Fa-f]{32}))?/?$")


@dataclass(frozen=True, order=True)
class KeyRef:
    """A Key Vault key, optionally at one version, parsed from its URL."""

    vault_url: str  # https://<vault>.vault.azure.net (no trailing slash, no :443)
    name: str
    version: str = ""

    @classmethod
    def parse(cls, key_id: str) -> KeyRef:
        parts = urlsplit(key_id.strip())
        match = _KEY_PATH.match(parts.path)
        if parts.scheme != "https" or not parts.hostname or not match:
            raise ValueError(f"not a Key Vault key URL: {key_id!r}")
        host = parts.hostname.lower()
        if parts.port and parts.port != 443:
            host = f"{host}:{parts.port}"
        return cls(vault_url=f"https://{host}", name=match["name"], version=(match["version"] or "").lower())

    @property
    def vault_host(self) -> str:
        return self.vault_url.removeprefix("https://")

    @property
    def vault_name(self) -> str:
        return self.vault_host.split(".", 1)[0]

    @property
    def versioned(self) -> bool:
        return bool(self.version)

    @property
    def key_id(self) -> str:
        base = f"{self.vault_url}/keys/{self.name}"
        return f"{base}/{self.version}" if self.version else base

    def at(self, version: str) -> KeyRef:
        return KeyRef(self.vault_url, self.name, version.lower())

    @property
    def display(self) -> str:
        """Short form for kubectl columns: vault/key/version-prefix."""
        return f"{self.vault_name}/{self.name}/{self.version[:8]}" if self.version else f"{self.vault_name}/{self.name}"


def same_key(a: str, b: str) -> bool:
    """Key URLs compare equal regardless of case, trailing slash or an explicit :443."""
    if not a or not b:
        return a == b
    try:
        return KeyRef.parse(a) == KeyRef.parse(b)
    except ValueError:
        return a == b


@dataclass(frozen=True)
class ClusterState:
    """What ARM reports about the managed cluster (the parts this operator cares about)."""

    kms_enabled: bool
    key_id: str
    network_access: str  # Public | Private
    vault_resource_id: str
    provisioning_state: str
    kubernetes_version: str
    identity_type: str  # UserAssigned | SystemAssigned | None
    user_assigned_identity_ids: tuple[str, ...] = ()
    api_server_vnet_integration: bool = False
    e_tag: str = ""
    location: str = ""
    # securityProfile.kubernetesResourceObjectEncryptionProfile.infrastructureEncryption: "Enabled" puts
    # the cluster on the Managed experience (KMS data encryption), for good. "" when AKS (or an older API
    # version) reports nothing.
    infrastructure_encryption: str = ""

    @property
    def managed(self) -> bool:
        """On the Managed experience: AKS rotates and re-encrypts itself, and it cannot be turned off."""
        return self.infrastructure_encryption.lower() == "enabled"

    @property
    def experience(self) -> str:
        """None, Legacy or Managed, as AKS reports it (what status.cluster.experience shows)."""
        if self.managed:
            return "Managed"
        return "Legacy" if self.kms_enabled else "None"

    @property
    def key_management(self) -> str:
        """PlatformManaged or CustomerManaged on the Managed experience; '' otherwise."""
        if not self.managed:
            return ""
        return "CustomerManaged" if self.kms_enabled else "PlatformManaged"

    @property
    def busy(self) -> bool:
        return self.provisioning_state not in TERMINAL_PROVISIONING_STATES

    @property
    def kubernetes_minor(self) -> tuple[int, int]:
        nums = re.findall(r"\d+", self.kubernetes_version)
        return (int(nums[0]), int(nums[1])) if len(nums) >= 2 else (0, 0)


@dataclass(frozen=True)
class KeyState:
    """One key version as Key Vault reports it. ``exists=False`` when Key Vault answered 404."""

    key_id: str
    exists: bool = True
    enabled: bool = True
    expires_on: dt.datetime | None = None
    not_before: dt.datetime | None = None
    key_type: str = "RSA"  # RSA | RSA-HSM | EC | EC-HSM | oct | oct-HSM
    key_ops: tuple[str, ...] = ("encrypt", "decrypt", "wrapKey", "unwrapKey")
    # Key Vault's creation time of this version: followLatestVersion rolls to the newest one, and
    # version IDs are random hex, so only this attribute orders them.
    created_on: dt.datetime | None = None

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_on is not None and self.expires_on <= now

    def expires_within(self, now: dt.datetime, window: dt.timedelta) -> bool:
        return self.expires_on is not None and self.expires_on <= now + window

    def not_yet_valid(self, now: dt.datetime) -> bool:
        return self.not_before is not None and self.not_before > now


@dataclass(frozen=True)
class AccessPolicy:
    object_id: str
    key_permissions: tuple[str, ...]


@dataclass(frozen=True)
class VaultState:
    """Key Vault properties that decide whether the KMS plugin can use the key."""

    resource_id: str
    tenant_id: str
    public_network_access: str = "Enabled"  # Enabled | Disabled
    network_default_action: str = "Allow"  # Allow | Deny
    network_bypass: str = "AzureServices"
    rbac_authorization: bool = True
    soft_delete: bool = True
    purge_protection: bool = True
    access_policies: tuple[AccessPolicy, ...] = ()


@dataclass(frozen=True)
class IdentityState:
    """The cluster's user-assigned managed identity."""

    resource_id: str
    principal_id: str
    client_id: str
    tenant_id: str


@dataclass(frozen=True)
class RoleGrant:
    """A role assignment of the identity, with the role definition's data actions resolved."""

    scope: str
    role_name: str
    actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    # A role grants what its (data) actions match minus what these match: a custom role with
    # dataActions "*" and notDataActions ".../keys/decrypt/action" does not let the plugin decrypt.
    not_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreflightFacts:
    """Everything the preflight checks look at, gathered before any ARM write."""

    cluster: ClusterState
    target_key: KeyState | None  # None when the plan disables KMS
    previous_key: KeyState | None  # the key AKS would keep in its previous slot
    vault: VaultState | None
    identity: IdentityState | None
    grants: tuple[RoleGrant, ...] = ()
    secret_count: int = 0
    conflicting_policies: tuple[str, ...] = ()
    subscription_tenant_id: str = ""
    network_access: str = "Public"
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    expiry_warning: dt.timedelta = dt.timedelta(days=30)
    # The write puts (or keeps) the cluster on the Managed experience, and the ARM API version the
    # operator's SDK speaks (the Managed experience needs 2026-07-01 or later).
    managed: bool = False
    api_version: str = ""
    # Only used to print runnable `az aks …` fixes; placeholders are printed when empty.
    cluster_resource_group: str = ""
    cluster_name: str = ""
