"""``ManagedClusters`` on azure-mgmt-containerservice.

Writes follow ``reference/aks-arm-api.md``: GET the cluster, change only
``securityProfile.azureKeyVaultKms`` in the object just read, PUT the whole object with
``If-Match: <eTag>`` (``etag=..., match_condition=MatchConditions.IfNotModified``). The SDK model
built from the raw JSON drops read-only fields on serialisation and keeps fields this SDK version
does not know, so nothing else of the cluster changes.

Long-running operations are never waited on inside the PUT call: the poller is created with a
polling method that only records the initial response, and its continuation token goes into the
:class:`OperationHandle`. Each later :meth:`SdkManagedClusters.poll` resumes from that token with a
polling method that makes one status request, so a reconcile never blocks for minutes and an
operator restarted during an LRO resumes waiting without writing again.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.polling.base_polling import BadResponse, BadStatus
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.containerservice.models import ManagedCluster
from azure.mgmt.core.polling.arm_polling import ARMPolling

from ..model import TERMINAL_PROVISIONING_STATES, ClusterState
from .config import AzureSettings
from .errors import AzureConflict, retry_after_seconds, translate
from .interfaces import ClusterId, ClusterSnapshot, OperationHandle, OperationResult
from .pipeline import build_credential, client_kwargs


class _StartOnly(ARMPolling):
    """Initialise from the PUT response (status InProgress) and stop: no background polling."""

    def run(self) -> None:
        return None

    def initial_etag(self) -> str:
        try:
            return str(self._initial_response.http_response.json().get("eTag", ""))
        except Exception:
            return ""


class _OneStep(ARMPolling):
    """One status request per call; remembers a failed operation's error body."""

    error: dict[str, str] | None = None
    request_error: HttpResponseError | None = None

    def run(self) -> None:
        if self.finished():
            return
        try:
            self.update_status()
        except (BadStatus, BadResponse) as exc:
            self.request_error = HttpResponseError(response=self._pipeline_response.http_response, message=str(exc))
            return
        if self.status().lower() in ("failed", "canceled"):
            try:
                body = self._pipeline_response.http_response.json()
            except Exception:
                body = {}
            err = body.get("error") if isinstance(body, dict) else None
            self.error = err if isinstance(err, dict) else {}

    def retry_after(self) -> float:
        return retry_after_seconds(self._pipeline_response.http_response.headers)


def cluster_state(raw: dict[str, Any]) -> ClusterState:
    props = raw.get("properties") or {}
    kms = (props.get("securityProfile") or {}).get("azureKeyVaultKms") or {}
    identity = raw.get("identity") or {}
    return ClusterState(
        kms_enabled=bool(kms.get("enabled")),
        key_id=kms.get("keyId") or "",
        network_access=kms.get("keyVaultNetworkAccess") or "Public",
        vault_resource_id=kms.get("keyVaultResourceId") or "",
        provisioning_state=props.get("provisioningState") or "",
        kubernetes_version=props.get("currentKubernetesVersion") or props.get("kubernetesVersion") or "",
        identity_type=identity.get("type") or "None",
        user_assigned_identity_ids=tuple(sorted((identity.get("userAssignedIdentities") or {}).keys())),
        api_server_vnet_integration=bool((props.get("apiServerAccessProfile") or {}).get("enableVnetIntegration")),
        e_tag=raw.get("eTag") or "",
        location=raw.get("location") or "",
        infrastructure_encryption=str(
            ((props.get("securityProfile") or {}).get("kubernetesResourceObjectEncryptionProfile") or {}).get(
                "infrastructureEncryption") or ""),
    )


# The first ARM API version whose managedClusters schema carries kubernetesResourceObjectEncryptionProfile
# and reads a versionless keyId as the Managed experience (reference aks-arm-api.md 2).
MANAGED_EXPERIENCE_API_VERSION = "2026-07-01"


def kms_body(
    current: dict[str, Any], *, enabled: bool, key_id: str, network_access: str, vault_resource_id: str
) -> dict[str, Any]:
    """The KMS block ``az aks update`` would send (azure-cli ``update_azure_keyvault_kms``).

    Enable sets every field, with an explicit empty vault ID for Public. Disable only flips
    ``enabled`` and keeps the other fields as read, as the CLI does.
    """
    if not enabled:
        return {**current, "enabled": False}
    return {
        **current,
        "enabled": True,
        "keyId": key_id,
        "keyVaultNetworkAccess": network_access,
        "keyVaultResourceId": vault_resource_id if network_access == "Private" else "",
    }


class SdkManagedClusters:
    """ManagedClusters gateway over ``ContainerServiceClient`` (one client per subscription)."""

    def __init__(self, settings: AzureSettings, credential: Any | None = None) -> None:
        self._settings = settings
        self._credential = credential or build_credential(settings)
        self._clients: dict[str, ContainerServiceClient] = {}

    def _client(self, subscription_id: str) -> ContainerServiceClient:
        client = self._clients.get(subscription_id)
        if client is None:
            client = ContainerServiceClient(
                self._credential,
                subscription_id,
                base_url=self._settings.arm_endpoint,
                credential_scopes=[self._settings.arm_scope],
                polling_interval=self._settings.lro_polling_interval,
                **client_kwargs(self._settings),
            )
            self._clients[subscription_id] = client
        return client

    def api_version(self, subscription_id: str) -> str:
        """The managedClusters API version this SDK sends (preflight's ApiVersionTooOld reads it)."""
        return str(getattr(self._client(subscription_id)._config, "api_version", "") or "")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def get(self, cluster: ClusterId) -> ClusterSnapshot:
        ops = self._client(cluster.subscription_id).managed_clusters
        try:
            raw = ops.get(
                cluster.resource_group,
                cluster.name,
                cls=lambda pipeline_response, *_: pipeline_response.http_response.json(),
            )
        except Exception as exc:
            raise translate(exc) from exc
        state = cluster_state(raw)
        return ClusterSnapshot(id=cluster, state=state, e_tag=state.e_tag, raw=raw)

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
        """PUT the cluster with the KMS block changed; ``managed`` also sets
        ``kubernetesResourceObjectEncryptionProfile.infrastructureEncryption: Enabled`` (the Managed
        experience: with ``enabled`` a customer-managed versionless key, without it the platform key)."""
        if managed and self.api_version(snapshot.id.subscription_id) < MANAGED_EXPERIENCE_API_VERSION:
            raise ValueError(f"the Managed KMS experience needs ARM API {MANAGED_EXPERIENCE_API_VERSION} or later; "
                             f"this SDK speaks {self.api_version(snapshot.id.subscription_id)}: "
                             "pip install 'azure-mgmt-containerservice>=41.7.0'")
        if snapshot.state.provisioning_state not in TERMINAL_PROVISIONING_STATES:
            # Invariant 2: AKS rejects it anyway, and each refused PUT still costs write quota.
            raise AzureConflict(
                f"Managed cluster is in provisioning state {snapshot.state.provisioning_state}; not writing.",
                code="OperationNotAllowed",
            )
        body = copy.deepcopy(dict(snapshot.raw))
        security = body.setdefault("properties", {}).setdefault("securityProfile", {}) or {}
        body["properties"]["securityProfile"] = security
        security["azureKeyVaultKms"] = kms_body(
            security.get("azureKeyVaultKms") or {},
            enabled=enabled,
            key_id=key_id,
            network_access=network_access,
            vault_resource_id=vault_resource_id,
        )
        if managed:
            security["kubernetesResourceObjectEncryptionProfile"] = {"infrastructureEncryption": "Enabled"}
        ops = self._client(snapshot.id.subscription_id).managed_clusters
        started = dt.datetime.now(dt.UTC)
        start = _StartOnly(timeout=self._settings.lro_polling_interval)
        try:
            poller = ops.begin_create_or_update(
                snapshot.id.resource_group,
                snapshot.id.name,
                ManagedCluster(body),
                etag=snapshot.e_tag,
                match_condition=MatchConditions.IfNotModified,
                polling=start,
            )
            token = poller.continuation_token()
        except Exception as exc:
            raise translate(exc) from exc
        return OperationHandle(cluster=snapshot.id, token=token, started_at=started, e_tag=start.initial_etag())

    def poll(self, operation: OperationHandle) -> OperationResult:
        ops = self._client(operation.cluster.subscription_id).managed_clusters
        method = _OneStep(timeout=self._settings.lro_polling_interval)
        try:
            poller = ops.begin_create_or_update(
                operation.cluster.resource_group,
                operation.cluster.name,
                {},  # ignored when resuming from a continuation token
                continuation_token=operation.token,
                polling=method,
            )
            poller.wait()
        except Exception as exc:
            raise translate(exc) from exc
        if method.request_error is not None:
            raise translate(method.request_error) from method.request_error
        status = method.status()
        if not status or status.lower() not in ("succeeded", "failed", "canceled"):
            return OperationResult(status="InProgress", retry_after=method.retry_after())
        cluster = self.get(operation.cluster).state
        canonical = {"succeeded": "Succeeded", "failed": "Failed", "canceled": "Canceled"}[status.lower()]
        err = method.error or {}
        return OperationResult(
            status=canonical,
            error_code=str(err.get("code", "")),
            error_message=str(err.get("message", "")),
            cluster=cluster,
        )

    def wait(self, operation: OperationHandle, timeout: float) -> OperationResult:
        deadline = time.monotonic() + timeout
        while True:
            result = self.poll(operation)
            remaining = deadline - time.monotonic()
            if result.done or remaining <= 0:
                return result
            time.sleep(min(remaining, result.retry_after or self._settings.lro_polling_interval))
