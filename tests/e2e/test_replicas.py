"""The lab's AKS-shaped control plane from the outside: ``lab up --apiservers N``, ``lab status`` per
replica, and ``lab verify`` on a Secret no API server can decrypt (reported, never a crash).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aks_kms_lab import lab
from aks_kms_lab.etcdraw import EtcdClient
from aks_kms_lab.lab import LabRuntime
from aks_kms_lab.processes import pid_alive

pytestmark = pytest.mark.e2e

CLI = Path(sys.executable).parent / "aks-kms-operator"
SEEDED = 20


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "lab", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabRuntime]:
    rt = LabRuntime(tmp_path_factory.mktemp("replicas") / "lab", apiservers=2).start()
    try:
        assert lab.seed_lab(rt.paths.root, secrets=SEEDED, namespaces=2) == SEEDED
        yield rt
    finally:
        rt.stop()


def test_status_shows_each_replica_and_the_balancer(runtime: LabRuntime) -> None:
    root = runtime.paths.root
    s = lab.status(root)
    assert runtime.cp is not None
    assert s["balancer"] == s["apiserver"] == runtime.cp.server
    assert [r["server"] for r in s["replicas"]] == runtime.cp.replica_servers
    assert all(r["ready"] for r in s["replicas"])
    out = cli("status", "--dir", str(root))
    assert out.returncode == 0, out.stderr
    assert "balancer" in out.stdout and "replica 0" in out.stdout and "replica 1" in out.stdout
    assert json.loads(cli("status", "--dir", str(root), "--json").stdout)["replicas"][1]["ready"] is True


def test_verify_counts_and_names_a_secret_no_api_server_can_decrypt(runtime: LabRuntime) -> None:
    root = runtime.paths.root
    assert lab.verify_lab(root).ok
    # A value under a KMS provider no API server has (a key dropped before this Secret was rewritten).
    broken = sorted(json.loads(runtime.paths.seed.read_text()))[0]
    etcd = EtcdClient(lab.read_env(root)["ETCD_URL"])
    original = etcd.get(f"/registry/secrets/{broken}")
    assert original is not None
    etcd.put(f"/registry/secrets/{broken}", b"k8s:enc:kms:v2:akv-000000000000:\x0a\x02no")
    try:
        result = lab.verify_lab(root)  # must not raise although listing team-0000 now fails with 500
        assert not result.ok
        assert result.unreadable == [broken]
        assert result.content is not None and result.content.unreadable == [broken]
        assert result.content.checked == SEEDED - 1 and not result.content.missing
        text = result.render()
        assert "1 unreadable: FAIL" in text and broken in text and text.endswith("verify: FAILED")
        assert result.to_json()["api"]["unreadable"] == 1

        out = cli("verify", "--dir", str(root))
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert broken in out.stdout

        seed = runtime.paths.seed
        kept = seed.read_text()
        seed.unlink()
        try:
            without_seed = lab.verify_lab(root)
            assert without_seed.content is None and without_seed.unreadable == [broken]
            assert "content: no seed.json (run `lab seed`); not checked" in without_seed.render()
        finally:
            seed.write_text(kept)
    finally:
        etcd.put(f"/registry/secrets/{broken}", original.value)
    assert lab.verify_lab(root).ok


def test_cli_up_with_three_replicas_and_down_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    up = cli("up", "--dir", str(root), "--apiservers", "3", "--roll-interval", "0.5", "--lag-last", "5")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "3 kube-apiservers behind the balancer" in up.stdout
        s = lab.status(root)
        assert len(s["replicas"]) == 3 and all(r["ready"] for r in s["replicas"])
        children = lab._leftover_pids(root.resolve())
        assert len(children) >= 5  # supervisor, etcd, 3 replicas
        leases = lab.control_plane(root).identity_leases()
        assert len(leases) == 3
    finally:
        down = cli("down", "--dir", str(root))
    assert down.returncode == 0 and not root.exists()
    assert not [pid for pid in children if pid_alive(pid)]
