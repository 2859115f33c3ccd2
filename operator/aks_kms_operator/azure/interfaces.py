"""What the operator needs from Azure, as Protocols it owns (the way cert-manager wraps cloud DNS).

The planner and handlers depend on these, never on an SDK type: they receive ``model.py`` facts and
the small handle types below. Production implementations live in ``clusters.py``, ``keys.py`` and
``arm_reader.py``; unit tests can supply in-memory ones.

Errors: every method raises only ``errors.AzureGatewayError`` subclasses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model import ClusterState, IdentityState, KeyState, RoleGrant, VaultState


@dataclass(frozen=True)
class ClusterId:
    subscription_id: str
    resource_group: str
    name: str

    def __str__(self) -> str:
        return f"{self.subscription_id}/{self.resource_group}/{self.name}"


@dataclass(frozen=True)
class ClusterSnapshot:
    """A cluster as just read: the facts, plus the full object and eTag a PUT must be based on.

    ``raw`` is opaque to the planner; it exists so that a KMS change PUTs back exactly what was read,
    with only the KMS block changed (the ARM API has no PATCH for it).
    """

    id: ClusterId
    state: ClusterState
    e_tag: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class OperationHandle:
    """A running AKS operation. ``token`` is the SDK's LRO continuation token: store it (status) so a
    restarted operator resumes waiting instead of writing again."""

    cluster: ClusterId
    token: str = field(repr=False)
    started_at: dt.datetime
    e_tag: str = ""  # eTag the PUT returned


@dataclass(frozen=True)
class OperationResult:
    status: str  # InProgress | Succeeded | Failed | Canceled
    error_code: str = ""
    error_message: str = ""
    cluster: ClusterState | None = None  # read after the operation ended
    retry_after: float = 0.0  # ARM's hint for the next poll, 0 when none

    @property
    def done(self) -> bool:
        return self.status.lower() in ("succeeded", "failed", "canceled")

    @property
    def succeeded(self) -> bool:
        return self.status.lower() == "succeeded"


class ManagedClusters(Protocol):
    def get(self, cluster: ClusterId) -> ClusterSnapshot:
        """GET the managed cluster. Raises AzureNotFound."""
        ...

    def put_kms(
        self,
        snapshot: ClusterSnapshot,
        *,
        enabled: bool,
        key_id: str = "",
        network_access: str = "Public",
        vault_resource_id: str = "",
        managed: bool = False,
    ) -> OperationHandle:
        """PUT ``snapshot.raw`` with only the KMS block changed, If-Match ``snapshot.e_tag``.

        ``managed`` also sets ``kubernetesResourceObjectEncryptionProfile.infrastructureEncryption:
        Enabled`` (the Managed experience; irreversible on AKS).

        Refuses (AzureConflict, nothing sent) when the snapshot is not in a terminal provisioning
        state. 412/409 → AzureConflict: read again. Does not wait for the operation.
        """
        ...

    def api_version(self, subscription_id: str) -> str:
        """The managedClusters ARM API version the client sends."""
        ...

    def poll(self, operation: OperationHandle) -> OperationResult:
        """One status request; never blocks for the operation."""
        ...

    def wait(self, operation: OperationHandle, timeout: float) -> OperationResult:
        """Poll until the operation ends or ``timeout`` seconds pass (then status is InProgress)."""
        ...


class KeyVault(Protocol):
    def key_state(self, key_id: str) -> KeyState:
        """State of one key version (or the latest, for a versionless ID). 404 → exists=False."""
        ...

    def list_versions(self, key_id: str) -> tuple[KeyState, ...]:
        """Every version of the key, oldest first; key_type is "" (the listing carries no key material)."""
        ...

    def newest_usable_version(self, key_id: str, now: dt.datetime) -> KeyState | None:
        """The newest version that is enabled, not expired and already valid, fully read."""
        ...


class ArmReader(Protocol):
    def vault(self, resource_id: str) -> VaultState: ...

    def find_vault(self, subscription_id: str, vault_name: str) -> str | None:
        """Resource ID of the vault with this name in the subscription, or None."""
        ...

    def identity(self, resource_id: str) -> IdentityState: ...

    def role_grants(self, principal_id: str, scope: str) -> tuple[RoleGrant, ...]:
        """Role assignments of the principal at or above ``scope``, role definitions resolved."""
        ...
