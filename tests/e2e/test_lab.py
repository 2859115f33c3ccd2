"""The lab end to end: real KMS v2 envelopes in etcd, the operator process, AKS's key slots.

Scenarios share one lab and run in order, one per procedure of the source document: enable (V1,
public vault) → rotate (V2) → rotate again (V3: V1 becomes retirable, and disabling it breaks
nothing) → Public → Private vault mode change with the operator killed and the API server restarted
mid-rewrite → expired key → disable.
"""

from __future__ import annotations

import datetime as dt

import pytest

from aks_kms_lab import lab
from aks_kms_lab.processes import pid_alive
from aks_kms_lab.verify import IDENTITY

from .conftest import SECRETS, LabHarness, condition

pytestmark = pytest.mark.e2e


def assert_all_under(h: LabHarness, label: str) -> lab.LabVerification:
    result = lab.verify_lab(h.root, expect=label)
    assert result.report.unreadable == 0, result.render()
    assert result.report.all_under(label), result.render()
    assert result.content is not None and result.content.checked == SECRETS and result.content.ok, result.render()
    assert result.ok
    return result


def test_enable_public_key_v1(lab_env: LabHarness) -> None:
    v1 = lab_env.world.key_versions[0]
    before = lab.verify_lab(lab_env.root, expect=IDENTITY)
    assert before.ok and before.report.total >= SECRETS
    lab_env.apply(key_id=v1)
    lab_env.wait_encrypted_with(v1)
    result = assert_all_under(lab_env, v1)
    assert result.report.total >= SECRETS
    # the default expectation is the policy's status.encryptedWith
    assert lab.verify_lab(lab_env.root).expected == v1
    assert lab.status(lab_env.root)["kms"]["current"] == v1


def test_rotate_to_v2(lab_env: LabHarness) -> None:
    v1, v2 = lab_env.world.key_versions[:2]
    lab_env.apply(key_id=v2)
    lab_env.wait_encrypted_with(v2)
    assert_all_under(lab_env, v2)
    slots = lab.status(lab_env.root)["kms"]
    assert (slots["current"], slots["previous"]) == (v2, v1)


def test_rotate_twice_retires_the_oldest_key_only_then(lab_env: LabHarness) -> None:
    v1, v2, v3 = lab_env.world.key_versions[:3]
    st = lab_env.status() or {}
    assert [r["keyId"] for r in st["keys"].get("retirable") or []] == [], "V1 is still AKS's previous key"
    lab_env.apply(key_id=v3)
    st = lab_env.wait_encrypted_with(v3)
    keys = st["keys"]
    assert (keys["current"]["keyId"], keys["previous"]["keyId"]) == (v3, v2)
    assert [r["keyId"] for r in keys["retirable"]] == [v1]
    assert_all_under(lab_env, v3)
    # The operator says V1 may go: disable it in Key Vault and roll the API server. Nothing breaks.
    lab_env.runtime.fake.set_key_attributes(v1, enabled=False)
    lab_env.cp.restart_apiserver()
    assert_all_under(lab_env, v3)
    lab_env.poke()
    lab_env.wait(lambda s: condition(s, "KeyHealthy").get("status") == "True"
                 and condition(s, "Ready").get("status") == "True", "still healthy without V1", 90)


def test_mode_change_survives_operator_kill_and_api_server_restart(lab_env: LabHarness) -> None:
    private = lab_env.world.private_key_versions[0]
    # Slow the rewrite down so there is a "middle" to interrupt.
    lab_env.apply(key_id=private, private=True, rewrite={"concurrency": 1, "maxWritesPerSecond": 25})
    lab_env.wait(lambda s: s.get("phase") == "Rewriting" and int((s.get("rewrite") or {}).get("seen") or 0) > 20,
                 "mid-rewrite", 180)
    lab_env.kill_operator()
    lab_env.cp.restart_apiserver()
    lab_env.start_operator()
    st = lab_env.wait_encrypted_with(private, timeout=300)
    assert st["cluster"]["keyVaultNetworkAccess"] == "Private"
    assert_all_under(lab_env, private)
    lab_env.apply(key_id=private, private=True)  # back to full speed for the next scenarios


def test_expired_key_reported_then_recovers(lab_env: LabHarness) -> None:
    v2 = lab_env.world.private_key_versions[0]  # the key AKS writes with now
    fake = lab_env.runtime.fake
    fake.set_key_attributes(v2, expires_on=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    lab_env.poke()
    st = lab_env.wait(lambda s: condition(s, "KeyHealthy").get("status") == "False", "KeyHealthy False", 90)
    assert condition(st, "KeyHealthy")["reason"] == "KeyExpired"
    fake.set_key_attributes(v2, expires_on=dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    lab_env.poke()
    lab_env.wait(lambda s: condition(s, "KeyHealthy").get("status") == "True"
                 and condition(s, "Ready").get("status") == "True", "KeyHealthy True again", 90)


def test_disable_all_plaintext(lab_env: LabHarness) -> None:
    lab_env.apply(enabled=False)
    lab_env.wait_encrypted_with(IDENTITY)
    assert_all_under(lab_env, IDENTITY)


def test_up_down_leaves_no_process(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("detached") / "lab"
    assert lab.up(root) == "started"
    try:
        assert lab.up(root) == "running"
        supervisor = lab.supervisor_pid(root)
        assert supervisor and pid_alive(supervisor)
        children = lab._leftover_pids(root.resolve())
        assert supervisor in children and len(children) >= 3  # supervisor, etcd, kube-apiserver
        s = lab.status(root)
        assert s["running"] and s["apiserver"].startswith("https://127.0.0.1:")
    finally:
        assert lab.down(root)
    assert not root.exists()
    assert not [pid for pid in children if pid_alive(pid)]


def test_up_refuses_a_stale_lab(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("stale") / "lab"
    root.mkdir()
    (root / "supervisor.pid").write_text("999999999")
    with pytest.raises(lab.LabError, match="lab down"):
        lab.up(root)
    assert lab.status(root)["state"] == "stale"
    assert lab.down(root) and not root.exists()
