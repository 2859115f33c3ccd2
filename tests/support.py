"""Helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from aks_kms_lab.controlplane import ControlPlane, tool

REPO = Path(__file__).resolve().parents[1]


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kubectl(cp: ControlPlane, *args: str, stdin: str | None = None, kubeconfig: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the kubectl built by `make tools` against the control plane."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig or cp.kubeconfig)}
    result = subprocess.run([str(tool("kubectl")), *args], input=stdin, capture_output=True, text=True,
                            env=env, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def unreachable_azure_env() -> dict[str, str]:
    """Azure credentials that are configured but whose Entra ID cannot be reached (a closed local port).

    ``aks-kms-operator run`` refuses to start without Azure credentials (one line, exit 78); tests of
    the Kubernetes side that need no Azure use this: the operator starts with one warning line and
    every reconcile reports the Azure failure in the policy's status.
    """
    from aks_kms_lab.controlplane import free_port

    return {"AZURE_TENANT_ID": "00000000-0000-0000-0000-00000000000a", "AZURE_CLIENT_ID": "aks-kms-test",
            "AZURE_CLIENT_SECRET": "unused", "AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}"}
