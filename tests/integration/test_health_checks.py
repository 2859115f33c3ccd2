"""What Argo CD (our Lua health check) and Flux (kstatus) conclude from each status the operator writes.

Both tools run for real: ``.cache/bin/argocd-lua`` evaluates ``manifests/argocd/health.lua`` in
gopher-lua with the libraries Argo CD opens, ``.cache/bin/kstatus`` is cli-utils' kstatus as Flux uses
it (both built by ``make tools``). The status objects are built with the operator's own helpers
(``status.set_condition`` and ``status.summarize``), so Ready is derived exactly as at run time.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aks_kms_lab.controlplane import tool
from aks_kms_operator import status as st
from aks_kms_operator.api import v1alpha1 as api

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "manifests" / "argocd" / "health.lua"
GENERATION = 4
KEY = "https://myvault.vault.azure.net/keys/etcd/0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Case:
    id: str
    phase: str | None
    message: str = ""
    # condition type -> (status, reason, message); Ready is never listed: summarize() derives it
    conditions: dict[str, tuple[bool | str, str, str]] = field(default_factory=dict)
    observed_generation: int | None = GENERATION
    deleting: bool = False
    argocd: str = ""
    flux: str = ""


def _c(ok: bool | str, reason: str, message: str = "") -> tuple[bool | str, str, str]:
    return (ok, reason, message)


CASES = [
    Case("no-status-yet", None, argocd="Progressing",
         # kstatus treats an object without status as Current: see docs/install.md (Flux) for the CEL fix
         flux="Current"),
    Case("accepted", "Pending", "accepted; waiting for the first reconcile",
         {st.RECONCILING: _c(True, "Pending"), st.STALLED: _c(False, "Pending")},
         argocd="Progressing", flux="InProgress"),
    Case("checking", "Checking", "checking key, vault and identity",
         {st.RECONCILING: _c(True, "Checking"), st.STALLED: _c(False, "Checking")},
         argocd="Progressing", flux="InProgress"),
    Case("waiting-for-cluster", "Checking", "AKS is Updating (someone else's operation); retrying in 60s",
         {st.RECONCILING: _c(True, "ClusterBusy", "provisioningState Updating"), st.STALLED: _c(False, "Waiting")},
         argocd="Progressing", flux="InProgress"),
    Case("updating-cluster", "UpdatingCluster", "az aks update: enabling KMS",
         {st.RECONCILING: _c(True, "UpdatingCluster"), st.STALLED: _c(False, "UpdatingCluster"),
          st.CLUSTER_IN_SYNC: _c(False, "KmsDisabled", "AKS has KMS disabled"),
          st.KEY_HEALTHY: _c(True, "KeyValid")},
         argocd="Progressing", flux="InProgress"),
    Case("waiting-for-key-switch", "WaitingForKeySwitch", "canary not yet written with the new key",
         {st.RECONCILING: _c(True, "WaitingForKeySwitch"), st.STALLED: _c(False, "WaitingForKeySwitch"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeyValid"),
          st.SECRETS_ENCRYPTED: _c(False, "KeyChanged", "Secrets are under the previous key")},
         argocd="Progressing", flux="InProgress"),
    Case("rewriting", "Rewriting", "re-encrypting for key etcd/0123…: 4,120 of 10,000 secrets, namespace team-17",
         {st.RECONCILING: _c(True, "Rewriting"), st.STALLED: _c(False, "Rewriting"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeyValid"),
          st.SECRETS_ENCRYPTED: _c(False, "Rewriting", "4120/10000")},
         argocd="Progressing", flux="InProgress"),
    Case("verifying", "Verifying", "verification pass 1 for etcd/0123…",
         {st.RECONCILING: _c(True, "Verifying"), st.STALLED: _c(False, "Verifying"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeyValid"),
          st.SECRETS_ENCRYPTED: _c(False, "RewritePending", "not proven until a clean verification pass")},
         argocd="Progressing", flux="InProgress"),
    # A pass re-encrypted Secrets: a replica was behind. Waiting for the next pass is progress, not failure.
    Case("replica-behind", "Verifying", "verification pass 1 re-encrypted 12 Secrets; passing again at 10:02",
         {st.RECONCILING: _c(True, "ReplicaBehind"), st.STALLED: _c(False, "ReplicaBehind"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeyValid"),
          st.SECRETS_ENCRYPTED: _c(False, "RewritePending")},
         argocd="Progressing", flux="InProgress"),
    Case("ready", "Ready", "every Secret is encrypted with etcd/0123…",
         {st.RECONCILING: _c(False, "Reconciled"), st.STALLED: _c(False, "Reconciled"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeyValid"),
          st.SECRETS_ENCRYPTED: _c(True, "Encrypted")},
         argocd="Healthy", flux="Current"),
    Case("ready-key-expires-soon", "Ready", "key etcd/0123… expires in 12 days: extend the expiry or rotate",
         # the reconciler keeps KeyHealthy True for a warning; it is not a failure yet
         {st.RECONCILING: _c(False, "Idle"), st.STALLED: _c(False, "NotStalled"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"),
          st.KEY_HEALTHY: _c(True, "KeyExpiresSoon", "current key etcd/0123… expires in 12 days"),
          st.SECRETS_ENCRYPTED: _c(True, "AllSecretsCurrent")},
         argocd="Healthy", flux="Current"),
    Case("ready-but-key-disabled", "Ready", "nothing to do",
         {st.RECONCILING: _c(False, "Idle"), st.STALLED: _c(False, "NotStalled"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"),
          st.KEY_HEALTHY: _c(False, "KeyDisabled", "current key etcd/0123… is disabled: Secret writes fail"),
          st.SECRETS_ENCRYPTED: _c(True, "AllSecretsCurrent")},
         argocd="Degraded", flux="InProgress"),
    Case("azure-unreachable-keeps-phase", "Ready", "Azure: connection reset; retrying in 30s",
         # a transient Azure error is a Wait: Reconciling True, the previous phase kept
         {st.RECONCILING: _c(True, "AzureUnavailable", "connection reset"), st.STALLED: _c(False, "NotStalled"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeysValid"),
          st.SECRETS_ENCRYPTED: _c(True, "AllSecretsCurrent")},
         argocd="Progressing", flux="InProgress"),
    Case("paused", "Paused", "spec.rewrite.paused: 4,120 of 10,000 secrets re-encrypted",
         # the reconciler keeps Reconciling True while paused (a Wait); the phase says why
         {st.RECONCILING: _c(True, "RewritePaused"), st.STALLED: _c(False, "NotStalled"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeysValid"),
          st.SECRETS_ENCRYPTED: _c(False, "RewritePending", "4120/10000")},
         argocd="Suspended", flux="InProgress"),
    Case("paused-idle", "Paused", "spec.rewrite.paused",
         {st.RECONCILING: _c(False, "Paused"), st.STALLED: _c(False, "Paused"),
          st.SECRETS_ENCRYPTED: _c(False, "RewritePending")},
         argocd="Suspended", flux="InProgress"),
    Case("key-switch-not-proven", "WaitingForKeySwitch", "the canary was not rewritten within 15m",
         {st.RECONCILING: _c(False, "Idle"), st.STALLED: _c(True, "KeySwitchTimeout", "check the KMS plugin"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.SECRETS_ENCRYPTED: _c(False, "RewritePending")},
         argocd="Degraded", flux="Failed"),
    Case("blocked", "Blocked", "the operator's identity lacks Microsoft.ContainerService/managedClusters/write",
         {st.RECONCILING: _c(False, "Blocked"),
          st.STALLED: _c(True, "MissingPermission", "grant the operator identity ... on the cluster"),
          st.CLUSTER_IN_SYNC: _c(False, "KmsDisabled")},
         argocd="Degraded", flux="Failed"),
    Case("blocked-previous-rewrite", "Blocked", "the previous rewrite has not finished: rotating now would strand",
         {st.RECONCILING: _c(False, "Blocked"),
          st.STALLED: _c(True, "PreviousRewriteIncomplete", "let the rewrite finish"),
          st.CLUSTER_IN_SYNC: _c(False, "KeyDiffers"), st.SECRETS_ENCRYPTED: _c(False, "Rewriting")},
         argocd="Degraded", flux="Failed"),
    Case("failed", "Failed", "KeyExpired: Operation encrypt is not allowed on an expired key",
         {st.RECONCILING: _c(False, "Failed"), st.STALLED: _c(True, "KeyExpired", "renew the key"),
          st.KEY_HEALTHY: _c(False, "KeyExpired")},
         argocd="Degraded", flux="Failed"),
    Case("deleting", "Deleting", "deletionPolicy Disable: disabling KMS",
         {st.RECONCILING: _c(True, "Deleting"), st.STALLED: _c(False, "Deleting")},
         deleting=True, argocd="Progressing", flux="Terminating"),
    Case("ready-but-new-generation", "Ready", "every Secret is encrypted with etcd/0123…",
         {st.RECONCILING: _c(False, "Reconciled"), st.STALLED: _c(False, "Reconciled"),
          st.CLUSTER_IN_SYNC: _c(True, "InSync"), st.KEY_HEALTHY: _c(True, "KeyValid"),
          st.SECRETS_ENCRYPTED: _c(True, "Encrypted")},
         observed_generation=GENERATION - 1, argocd="Progressing", flux="InProgress"),
    Case("failed-but-new-generation", "Failed", "KeyExpired",
         {st.RECONCILING: _c(False, "Failed"), st.STALLED: _c(True, "KeyExpired", "renew the key")},
         observed_generation=GENERATION - 1, argocd="Progressing", flux="InProgress"),
]


def policy(case: Case) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "default", "generation": GENERATION, "uid": "0e1f", "resourceVersion": "9"}
    if case.deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        metadata["finalizers"] = ["aks-kms.dev/finalizer"]
    obj: dict[str, Any] = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": "ClusterEncryptionPolicy", "metadata": metadata,
        "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg",
                             "name": "aks"}, "kms": {"enabled": True, "keyId": KEY}},
    }
    if case.phase is None:
        return obj
    gen = case.observed_generation or 0
    conds: list[dict[str, Any]] = []
    for type_, (ok, reason, message) in case.conditions.items():
        conds = st.set_condition(conds, type_, ok, reason, message, generation=gen)
    conds = st.summarize(conds, generation=gen)
    obj["status"] = {"phase": case.phase, "message": case.message, "conditions": conds}
    if case.observed_generation is not None:
        obj["status"]["observedGeneration"] = case.observed_generation
    return obj


def run_tool(argv: list[str], obj: dict[str, Any]) -> dict[str, str]:
    result = subprocess.run(argv, input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    return run_tool([str(tool("argocd-lua")), "-script", str(HEALTH_LUA)], obj)


def flux_status(obj: dict[str, Any]) -> dict[str, str]:
    return run_tool([str(tool("kstatus"))], obj)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_argocd_health(case: Case) -> None:
    got = argocd_health(policy(case))
    assert got["status"] == case.argocd, got
    assert got.get("message"), "Argo CD should always say why"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_flux_kstatus(case: Case) -> None:
    got = flux_status(policy(case))
    assert got["status"] == case.flux, got


def test_every_phase_is_covered() -> None:
    assert {c.phase for c in CASES if c.phase} == set(api.PHASES)


def test_the_stalled_reason_and_fix_reach_argocd() -> None:
    case = next(c for c in CASES if c.id == "failed")
    assert argocd_health(policy(case))["message"] == "KeyExpired: renew the key"


def test_exactly_what_the_running_operator_writes_first() -> None:
    """The acknowledge handler's patch, reproduced with the same helpers, reads as in progress."""
    conds = st.set_condition([], st.RECONCILING, True, "Pending", "waiting for the first reconcile",
                             generation=1)
    conds = st.set_condition(conds, st.STALLED, False, "Pending", "", generation=1)
    obj = policy(CASES[0])
    obj["metadata"]["generation"] = 1
    obj["status"] = {"observedGeneration": 1, "phase": "Pending", "conditions": st.summarize(conds, generation=1),
                     "message": "accepted; waiting for the first reconcile"}
    assert argocd_health(obj)["status"] == "Progressing"
    assert flux_status(obj)["status"] == "InProgress"


@pytest.mark.parametrize("status", [{}, {"conditions": []}, {"conditions": [{"status": "True"}]},
                                    {"phase": "Rewriting", "conditions": [{"type": "Ready"}]}])
def test_lua_survives_odd_status(status: dict[str, Any]) -> None:
    obj = policy(CASES[0])
    obj["status"] = status
    assert argocd_health(obj)["status"] in {"Progressing", "Degraded", "Healthy", "Suspended"}


def test_lua_refuses_libraries_argocd_does_not_open(tmp_path: Path) -> None:
    """The runner is only a faithful stand-in if string/math are really closed, as in Argo CD."""
    script = tmp_path / "uses-string.lua"
    script.write_text('return {status = "Healthy", message = string.upper("x")}\n')
    result = subprocess.run([str(tool("argocd-lua")), "-script", str(script)], input=json.dumps(policy(CASES[0])),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "string" in result.stderr
