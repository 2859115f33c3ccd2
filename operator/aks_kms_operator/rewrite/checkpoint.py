"""Where a rewrite run keeps its progress so a restarted operator resumes instead of starting over.

``RewriteCheckpoint`` holds the target key id, the last *finished* namespace (namespaces are
processed in sorted order, so "finished" means every namespace up to and including it), the
counters and the timestamps. ``CheckpointStore`` is the interface the engine uses;
``PolicyStatusStore`` keeps it in ``status.rewrite`` of a ClusterEncryptionPolicy (JSON merge patch
on the status subresource) and ``MemoryStore`` keeps it in memory (tests, dry runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..kube import MERGE_PATCH, KubeClient
from .counters import RewriteCounters

POLICY_PATH = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"


@dataclass
class RewriteCheckpoint:
    target_key_id: str
    last_namespace: str = ""  # every namespace <= this one (sorted order) is finished
    counters: RewriteCounters = field(default_factory=RewriteCounters)
    started_at: str = ""
    completed_at: str = ""  # set once the run finished every namespace
    namespaces_total: int = 0
    namespaces_done: int = 0
    current_namespace: str = ""
    secrets_total: int = 0
    writes_per_second: float = 0.0

    @property
    def completed(self) -> bool:
        return bool(self.completed_at)

    def copy(self) -> RewriteCheckpoint:
        return replace(self, counters=self.counters.copy())

    def to_status(self) -> dict[str, Any]:
        """The ``status.rewrite`` object (field names of ``api.v1alpha1.RewriteStatus``)."""
        total = self.secrets_total
        return {
            "targetKeyId": self.target_key_id,
            "startedAt": self.started_at,
            "completedAt": self.completed_at,
            "namespacesTotal": self.namespaces_total,
            "namespacesDone": self.namespaces_done,
            "lastNamespace": self.last_namespace,
            "currentNamespace": self.current_namespace,
            "secretsTotal": total,
            **self.counters.to_status(),
            "writesPerSecond": round(self.writes_per_second, 2),
            "progress": f"{self.counters.seen}/{total}" if total else str(self.counters.seen),
        }

    @classmethod
    def from_status(cls, data: dict[str, Any]) -> RewriteCheckpoint:
        return cls(
            target_key_id=str(data.get("targetKeyId") or ""),
            last_namespace=str(data.get("lastNamespace") or ""),
            counters=RewriteCounters.from_status(data),
            started_at=str(data.get("startedAt") or ""),
            completed_at=str(data.get("completedAt") or ""),
            namespaces_total=int(data.get("namespacesTotal") or 0),
            namespaces_done=int(data.get("namespacesDone") or 0),
            current_namespace=str(data.get("currentNamespace") or ""),
            secrets_total=int(data.get("secretsTotal") or 0),
            writes_per_second=float(data.get("writesPerSecond") or 0.0),
        )


class CheckpointStore(Protocol):
    async def load(self) -> RewriteCheckpoint | None:
        """The last saved checkpoint, or None if there is none."""
        ...

    async def save(self, checkpoint: RewriteCheckpoint) -> None:
        ...


class MemoryStore:
    """Keeps the checkpoint in memory; ``saves`` records every save (tests read it)."""

    def __init__(self, checkpoint: RewriteCheckpoint | None = None) -> None:
        self.checkpoint = checkpoint
        self.saves: list[RewriteCheckpoint] = []

    async def load(self) -> RewriteCheckpoint | None:
        return self.checkpoint.copy() if self.checkpoint else None

    async def save(self, checkpoint: RewriteCheckpoint) -> None:
        self.checkpoint = checkpoint.copy()
        self.saves.append(self.checkpoint)


class PolicyStatusStore:
    """``status.rewrite`` of the named ClusterEncryptionPolicy (cluster-scoped).

    Saves are JSON merge patches of ``{"status": {"rewrite": {...}}}`` on the status subresource:
    they touch nothing else in status and need no resourceVersion (the engine is the only writer
    of ``status.rewrite`` while it runs).
    """

    def __init__(self, client: KubeClient, policy_name: str) -> None:
        self.client = client
        self.path = f"{POLICY_PATH}/{policy_name}"

    async def load(self) -> RewriteCheckpoint | None:
        policy = await self.client.request("GET", self.path)
        data = (policy.get("status") or {}).get("rewrite") or {}
        return RewriteCheckpoint.from_status(data) if data.get("targetKeyId") else None

    async def save(self, checkpoint: RewriteCheckpoint) -> None:
        await self.client.request("PATCH", f"{self.path}/status",
                                  body={"status": {"rewrite": checkpoint.to_status()}}, content_type=MERGE_PATCH)


class VerificationStore:
    """``status.verification`` of the named policy, as the checkpoint of verification pass ``number``.

    Same contract as ``PolicyStatusStore``; a stored checkpoint of another pass loads as None (the
    pass starts from the first namespace), and every save records the pass number with it. The
    fields that summarise earlier passes (``passes``, ``lastPassReencrypted`` …) are left alone.
    """

    def __init__(self, client: KubeClient, policy_name: str, number: int) -> None:
        self.client = client
        self.path = f"{POLICY_PATH}/{policy_name}"
        self.number = number

    async def load(self) -> RewriteCheckpoint | None:
        policy = await self.client.request("GET", self.path)
        data = (policy.get("status") or {}).get("verification") or {}
        if not data.get("targetKeyId") or int(data.get("pass") or 0) != self.number:
            return None
        return RewriteCheckpoint.from_status(data)

    async def save(self, checkpoint: RewriteCheckpoint) -> None:
        body = {"status": {"verification": {**checkpoint.to_status(), "pass": self.number}}}
        await self.client.request("PATCH", f"{self.path}/status", body=body, content_type=MERGE_PATCH)
