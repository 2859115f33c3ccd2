"""The real `aks-kms-operator run` process against the real API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from aks_kms_lab.controlplane import free_port

from ..support import unreachable_azure_env, wait_for

pytestmark = pytest.mark.integration
SCRIPT = Path(sys.executable).parent / "aks-kms-operator"
POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"


def test_operator_acknowledges_a_policy_and_exits_cleanly_on_sigterm(crd_installed, tmp_path) -> None:
    cp = crd_installed
    # the operator's own namespace (default aks-kms-system): its leader-election Lease and canary live there
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "aks-kms-system"}})
    port = free_port()
    log = tmp_path / "operator.log"
    # Azure credentials are configured but Entra ID is unreachable: the operator starts (with one warning line)
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig), **unreachable_azure_env()}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(SCRIPT), "run", f"--liveness=http://127.0.0.1:{port}/healthz", "--log-format=json"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        policy = {
            "apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy",
            "metadata": {"name": "process-test"},
            "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000",
                                 "resourceGroup": "rg", "name": "aks"}},
        }
        code, body = cp.request("POST", POLICIES, policy)
        assert code == 201, body

        def acknowledged() -> dict | None:
            _, obj = cp.request("GET", f"{POLICIES}/process-test")
            status = obj.get("status") or {}
            return obj if status.get("observedGeneration") == obj["metadata"]["generation"] else None

        obj = wait_for(acknowledged, timeout=60, what="status.observedGeneration")
        status = obj["status"]
        # No Azure is reachable from this test (no Entra ID, no fake): the operator must say so
        # in kstatus terms rather than crash or stay silent.
        types = {c["type"]: c for c in status["conditions"]}
        assert types["Ready"]["status"] == "False"
        assert {"Reconciling", "Stalled"} <= set(types)
        assert status["phase"] in ("Pending", "Blocked"), status
        blocker = types["Stalled"] if types["Stalled"]["status"] == "True" else types["Reconciling"]
        assert blocker["status"] == "True" and blocker["reason"] and status["message"], status
        assert "aks-kms.dev/finalizer" in obj["metadata"].get("finalizers", [])

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # one line about Azure before logging starts, then JSON logs, one object a line
    lines = log.read_text().splitlines()
    assert lines[0].startswith("aks-kms-operator: cannot reach Entra ID at https://127.0.0.1:"), lines[0]
    assert "Traceback" not in log.read_text()
    # azure-core's request logging (URL and every header of each try) stays out of the operator's log
    assert "Request URL" not in log.read_text() and "Request headers" not in log.read_text()
    first = next(line for line in lines if line.startswith("{"))
    assert '"message"' in first
    # the finalizer must not block deletion once the operator handled it: remove it for the next tests
    cp.request("PATCH", f"{POLICIES}/process-test", {"metadata": {"finalizers": None}},
               content_type="application/merge-patch+json")
    cp.request("DELETE", f"{POLICIES}/process-test")
