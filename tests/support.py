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
