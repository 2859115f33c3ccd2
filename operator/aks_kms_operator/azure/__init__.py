"""Azure behind small interfaces owned by the operator (design.md 2.5).

``interfaces`` declares what the operator needs (Protocols returning ``model.py`` facts);
``clusters``, ``keys`` and ``arm_reader`` implement them with the official SDKs; ``config`` reads
endpoints, trust and retry settings from the environment; ``errors`` is the small set of
exceptions the reconciler distinguishes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arm_reader import SdkArmReader
from .clusters import SdkManagedClusters
from .config import AzureSettings
from .errors import (
    AzureAuthFailed,
    AzureConflict,
    AzureGatewayError,
    AzureNotFound,
    AzureRejected,
    AzureThrottled,
    AzureTransient,
)
from .interfaces import (
    ArmReader,
    ClusterId,
    ClusterSnapshot,
    KeyVault,
    ManagedClusters,
    OperationHandle,
    OperationResult,
)
from .keys import SdkKeyVault
from .pipeline import build_credential


@dataclass(frozen=True)
class AzureGateways:
    clusters: ManagedClusters
    keys: KeyVault
    arm: ArmReader


def build_gateways(settings: AzureSettings | None = None) -> AzureGateways:
    """The production gateways, sharing one credential (one token cache)."""
    settings = settings or AzureSettings.from_env()
    credential = build_credential(settings)
    return AzureGateways(
        clusters=SdkManagedClusters(settings, credential),
        keys=SdkKeyVault(settings, credential),
        arm=SdkArmReader(settings, credential),
    )


__all__ = [
    "ArmReader",
    "AzureAuthFailed",
    "AzureConflict",
    "AzureGatewayError",
    "AzureGateways",
    "AzureNotFound",
    "AzureRejected",
    "AzureSettings",
    "AzureThrottled",
    "AzureTransient",
    "ClusterId",
    "ClusterSnapshot",
    "KeyVault",
    "ManagedClusters",
    "OperationHandle",
    "OperationResult",
    "SdkArmReader",
    "SdkKeyVault",
    "SdkManagedClusters",
    "build_credential",
    "build_gateways",
]
