"""A first `aks-kms-operator run` that explains itself: one line naming what is missing and the fix.

Real binaries: the installed script as a subprocess, a kube-apiserver of this module's own (it starts
without the CRD, which one case needs), the fake Azure for refused credentials. Each case asserts the
exit code, that stderr is that one line, and that it holds no traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aks_kms_lab.controlplane import ControlPlane, free_port
from aks_kms_lab.fake_azure import FakeAzure
from aks_kms_lab.world import operator_env

from ..support import REPO, wait_for

pytestmark = pytest.mark.integration
SCRIPT = Path(sys.executable).parent / "aks-kms-operator"
EXIT_CONFIG = 78
AZURE_VARS = ("AZURE_", "AKS_KMS_", "IDENTITY_ENDPOINT", "MSI_ENDPOINT", "KUBERNETES_SERVICE_HOST", "KUBECONFIG")


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """No Kubernetes or Azure configuration from the developer's shell, and an empty home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(AZURE_VARS)}
    return {**env, "HOME": str(tmp), **extra}


def run_once(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(SCRIPT), "run", "--liveness="], capture_output=True, text=True, env=env,
                            timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aks-kms-operator: ") and "Fix: " in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("first-run")) as plane:
        yield plane


@pytest.fixture(scope="module")
def with_crd(cp: ControlPlane) -> ControlPlane:
    cp.apply(yaml.safe_load((REPO / "manifests/crd/clusterencryptionpolicies.yaml").read_text()))
    wait_for(lambda: cp.request("GET", "/apis/aks-kms.dev/v1alpha1")[0] == 200, what="CRD served")
    return cp


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzure]:
    azure = FakeAzure(tmp_path_factory.mktemp("first-run-azure")).start()
    try:
        yield azure
    finally:
        azure.stop()


def test_no_kubernetes_credentials(tmp_path: Path) -> None:
    result = run_once(clean_env(tmp_path))
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert "no Kubernetes credentials" in line and "set KUBECONFIG" in line


def test_a_kubeconfig_that_cannot_be_used(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    result = run_once(clean_env(tmp_path, KUBECONFIG=str(config)))
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert f"kubeconfig {config} cannot be used" in line and "current-context" in line


def test_missing_crd(cp: ControlPlane, tmp_path: Path) -> None:
    result = run_once(clean_env(tmp_path, KUBECONFIG=str(cp.kubeconfig)))
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert "CRD (clusterencryptionpolicies.aks-kms.dev) is not installed" in line
    assert "kubectl apply -f manifests/crd/clusterencryptionpolicies.yaml" in line


def test_credentials_the_api_server_refuses(cp: ControlPlane, tmp_path: Path) -> None:
    config = yaml.safe_load(cp.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": "not-a-token"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    result = run_once(clean_env(tmp_path, KUBECONFIG=str(path)))
    assert result.returncode == EXIT_CONFIG
    assert "refused the credentials" in one_line(result) and "401" in result.stderr


def test_an_identity_without_rbac(with_crd: ControlPlane, tmp_path: Path) -> None:
    config = with_crd.service_account_kubeconfig("first-run", "no-rights")
    result = run_once(clean_env(tmp_path, KUBECONFIG=str(config)))
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert "identity system:serviceaccount:first-run:no-rights" in line
    assert "may not list clusterencryptionpolicies (403 Forbidden)" in line and "ClusterRole" in line


def test_no_azure_credentials(with_crd: ControlPlane, tmp_path: Path) -> None:
    result = run_once(clean_env(tmp_path, KUBECONFIG=str(with_crd.kubeconfig)))
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert "no Azure credentials" in line and "AZURE_CLIENT_ID" in line and "workload identity" in line


def test_azure_credentials_entra_refuses(with_crd: ControlPlane, fake: FakeAzure, tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), **operator_env(fake, with_crd.kubeconfig), "AZURE_CLIENT_SECRET": "wrong"}
    result = run_once(env)
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert f"refused the Azure credentials of client {fake.client_id}" in line and "AADSTS7000215" in line


def test_an_unreachable_api_server_is_retried_with_one_line_each(cp: ControlPlane, tmp_path: Path) -> None:
    config = yaml.safe_load(cp.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    err = tmp_path / "stderr"
    with open(err, "w") as out:
        proc = subprocess.Popen([str(SCRIPT), "run", "--liveness="], stdout=subprocess.DEVNULL, stderr=out,
                                env=clean_env(tmp_path, KUBECONFIG=str(path)))
    try:
        wait_for(lambda: err.read_text().count("retrying in") >= 2, timeout=30, what="two retry lines")
        assert proc.poll() is None  # still waiting: transient
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err.read_text()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert lines[0].startswith("aks-kms-operator: cannot reach the Kubernetes API server at https://127.0.0.1:")
    assert lines[0].endswith("; retrying in 2s") and lines[1].endswith("; retrying in 4s"), lines
    assert all("cannot reach the Kubernetes API server" in line for line in lines), lines
    time.sleep(0)  # nothing else printed


def test_an_api_server_that_comes_up_later_is_waited_for(with_crd: ControlPlane, tmp_path: Path) -> None:
    """The operator starts before the API server: it waits (one line per attempt), then goes on by itself,
    and never reports the CRD missing on the way. Past the Kubernetes checks, this environment has no
    Azure credentials: that is the line it stops on. (The /readyz check that keeps a starting server's
    not-yet-loaded CRDs from being read as missing is not forced here: the retry rarely lands in that
    window.)"""
    cp = with_crd
    err = tmp_path / "stderr"
    cp.stop_replica(0)
    try:
        with open(err, "w") as out:
            proc = subprocess.Popen([str(SCRIPT), "run", "--liveness="], stdout=subprocess.DEVNULL, stderr=out,
                                    env=clean_env(tmp_path, KUBECONFIG=str(cp.kubeconfig)))
        wait_for(lambda: "retrying in" in err.read_text(), timeout=30, what="a retry line")
    finally:
        cp.start_replica(0)
    try:
        assert proc.wait(timeout=90) == EXIT_CONFIG
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.read_text().splitlines()
    assert "Traceback" not in err.read_text()
    assert all("retrying in" in line for line in lines[:-1]), lines
    assert "no Azure credentials" in lines[-1] and not any("CRD" in line for line in lines), lines
