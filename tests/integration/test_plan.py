"""`aks-kms-operator plan` against a real API server and the fake Azure: the operator's plan, zero writes.

One environment for the module (API server with an audit log of every request at Metadata level, the
lab's Azure world). The cluster's KMS state is set directly in the fake's ARM (plan only reads it),
the policy's status ledger by a status patch, so each case costs one `plan` process.

Every plan in the module is a real subprocess of the installed script; at the end, the fake Azure's
request log and the API server's audit log must show reads only from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aks_kms_lab.world import CLUSTER, RESOURCE_GROUP, SUBSCRIPTION

from .aks_env import POLICIES, AksEnv

pytestmark = pytest.mark.integration
SCRIPT = Path(sys.executable).parent / "aks-kms-operator"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
OUT = Path(os.environ.get("AKS_KMS_PLAN_OUTPUTS", "")) if os.environ.get("AKS_KMS_PLAN_OUTPUTS") else None


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    root = tmp_path_factory.mktemp("plan")
    policy = root / "audit-all.yaml"
    policy.write_text(yaml.safe_dump({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                      "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
    aks = AksEnv(root, extra_apiserver_args=(f"--audit-policy-file={policy}",
                                             f"--audit-log-path={root / 'audit.jsonl'}", "--audit-log-format=json"))
    try:
        for ns in ("team-a", "team-b", "team-c"):
            aks.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            for i in range(4):
                aks.cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}", "namespace": ns},
                              "stringData": {"k": "v"}})
        aks.fake.clear_logs()
        yield aks
    finally:
        aks.stop()


def _set_aks(aks: AksEnv, kms: dict[str, Any] | None) -> None:
    aks.fake.set_cluster(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER,
                         securityProfile={"azureKeyVaultKms": kms or {"enabled": False}})


def _store_policy(aks: AksEnv, body: dict[str, Any], encrypted_with: str) -> None:
    """The policy in the cluster with the ledger a finished reconcile would have left."""
    name = body["metadata"]["name"]
    aks.cp.request("DELETE", f"{POLICIES}/{name}")
    code, out = aks.cp.request("POST", POLICIES, body)
    assert code == 201, out
    code, out = aks.cp.request("PATCH", f"{POLICIES}/{name}/status", {"status": {"encryptedWith": encrypted_with}},
                               content_type="application/merge-patch+json")
    assert code == 200, out


def plan(aks: AksEnv, tmp: Path, *args: str, policy: dict[str, Any] | None = None,
         label: str = "") -> subprocess.CompletedProcess[str]:
    argv = [str(SCRIPT), "plan", *args]
    if policy is not None:
        path = tmp / "policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        argv += ["-f", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True, env=aks.env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    if OUT is not None and label:  # the report quotes these outputs
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{label}.txt").write_text(f"$ aks-kms-operator plan {' '.join(args)} -f policy.yaml\n"
                                          f"{result.stdout}{result.stderr}(exit {result.returncode})\n")
    return result


def test_enable_from_a_file(env: AksEnv, tmp_path: Path) -> None:
    _set_aks(env, None)
    env.cp.request("DELETE", f"{POLICIES}/default")
    result = plan(env, tmp_path, policy=env.world.policy(), label="enable")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ARM PUT: enable KMS" in result.stdout and "enabled: false → true" in result.stdout, result.stdout
    assert "12 Secret(s) in 3 namespace(s)" in result.stdout or "namespace(s)" in result.stdout
    rep = json.loads(plan(env, tmp_path, "-o", "json", policy=env.world.policy()).stdout)
    assert rep["outcome"] == "ChangePlanned" and rep["exitCode"] == 2 and rep["armWrites"] == 1
    enable = next(s for s in rep["steps"] if s["step"] == "Enable")
    assert enable["arm"]["after"]["keyId"] == env.world.key_versions[0]
    assert enable["arm"]["after"]["enabled"] is True and not enable["arm"]["before"].get("enabled")
    # 12 seeded + whatever the API server keeps (none in a bare control plane); 3 seeded namespaces at least
    assert rep["rewrite"]["secrets"] >= 12 and rep["rewrite"]["namespaces"] >= 3
    assert [s["step"] for s in rep["steps"]][-5:] == ["Check", "Enable", "WaitForKeySwitch", "Rewrite", "Verify"]


def test_rotation_and_no_change_for_a_policy_in_the_cluster(env: AksEnv, tmp_path: Path) -> None:
    v1, v2 = env.world.key_versions[:2]
    _set_aks(env, {"enabled": True, "keyId": v1, "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""})
    _store_policy(env, env.world.policy(key_id=v1), v1)
    same = plan(env, tmp_path, "default", label="no-change")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "No change" in same.stdout
    policy = env.world.policy(key_id=v2, rewrite={"maxWritesPerSecond": 5})
    rotate = plan(env, tmp_path, policy=policy, label="rotation")
    assert rotate.returncode == 2, rotate.stdout + rotate.stderr
    rep = json.loads(plan(env, tmp_path, "-o", "json", policy=policy).stdout)
    assert [s["step"] for s in rep["steps"]] == ["Check", "Update", "WaitForKeySwitch", "Rewrite", "Verify"]
    update = rep["steps"][1]["arm"]
    assert update["changed"] == [{"field": "keyId", "before": v1, "after": v2}]
    assert rep["rewrite"]["estimatedSeconds"] is not None and rep["rewrite"]["maxWritesPerSecond"] == 5


def test_public_to_private_goes_through_plaintext(env: AksEnv, tmp_path: Path) -> None:
    v1 = env.world.key_versions[0]
    _set_aks(env, {"enabled": True, "keyId": v1, "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""})
    _store_policy(env, env.world.policy(key_id=v1), v1)
    result = plan(env, tmp_path, policy=env.world.policy(private=True), label="public-to-private")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pass through plaintext" in result.stdout
    rep = json.loads(plan(env, tmp_path, "-o", "json", policy=env.world.policy(private=True)).stdout)
    writes = [s for s in rep["steps"] if s["writesArm"]]
    assert [s["step"] for s in writes] == ["Disable", "Enable"]
    assert writes[1]["arm"]["after"]["keyVaultNetworkAccess"] == "Private"
    assert writes[1]["arm"]["after"]["keyVaultResourceId"] == env.world.private_vault_id


def test_blocked_by_a_disabled_key(env: AksEnv, tmp_path: Path) -> None:
    v1, _, v3 = env.world.key_versions[:3]
    _set_aks(env, {"enabled": True, "keyId": v1, "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""})
    _store_policy(env, env.world.policy(key_id=v1), v1)
    env.fake.set_key_attributes(v3, enabled=False)
    try:
        result = plan(env, tmp_path, policy=env.world.policy(key_id=v3), label="blocked")
    finally:
        env.fake.set_key_attributes(v3, enabled=True)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "KeyDisabled" in result.stdout and "az keyvault key set-attributes" in result.stdout
    assert "BLOCKED" in result.stdout


def test_an_invalid_file_names_the_field(env: AksEnv, tmp_path: Path) -> None:
    bad = env.world.policy()
    bad["spec"]["kms"]["keyVaultNetworkAccess"] = "Private"  # without keyVaultResourceId
    result = plan(env, tmp_path, policy=bad)
    assert result.returncode == 1
    assert "spec.kms.keyVaultResourceId is required" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_an_identity_that_may_not_list_secrets_still_gets_a_plan(env: AksEnv, tmp_path: Path) -> None:
    """A pull-request check's identity: read policies, nothing else. plan says the sizes are unknown."""
    v1, v2 = env.world.key_versions[:2]
    _set_aks(env, {"enabled": True, "keyId": v1, "keyVaultNetworkAccess": "Public", "keyVaultResourceId": ""})
    _store_policy(env, env.world.policy(key_id=v1), v1)
    env.cp.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                  "metadata": {"name": "plan-reader"},
                  "rules": [{"apiGroups": ["aks-kms.dev"], "resources": ["clusterencryptionpolicies"],
                             "verbs": ["get", "list"]}]})
    env.cp.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                  "metadata": {"name": "plan-reader"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "plan-reader"},
                  "subjects": [{"kind": "ServiceAccount", "name": "plan-reader", "namespace": "ci"}]})
    kubeconfig = env.cp.service_account_kubeconfig("ci", "plan-reader")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(env.world.policy(key_id=v2)))
    result = subprocess.run([str(SCRIPT), "plan", "-f", str(policy), "--kubeconfig", str(kubeconfig)],
                            capture_output=True, text=True, env=env.env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Secrets not counted" in result.stdout and "Traceback" not in result.stderr


def test_plan_wrote_nothing(env: AksEnv) -> None:
    """Runs last: every plan above read Azure and Kubernetes and wrote to neither."""
    arm = [r for r in env.fake.requests if r.method != "GET"]
    # the token requests are the only non-GET requests
    assert arm and all(r.method == "POST" and r.path.endswith("/oauth2/v2.0/token") for r in arm), arm
    assert not env.fake.writes, env.fake.writes
    assert any(r.method == "GET" and "managedClusters" in r.path for r in env.fake.requests)
    events = [json.loads(line) for line in (env.root / "audit.jsonl").read_text().splitlines()]
    ours = [e for e in events if "aiohttp" in (e.get("userAgent") or "")]
    assert any(e["verb"] == "list" and (e.get("objectRef") or {}).get("resource") == "secrets" for e in ours)
    assert not [e for e in ours if e["verb"] in WRITE_VERBS], [e["requestURI"] for e in ours
                                                                if e["verb"] in WRITE_VERBS]
    # Secrets only through the metadata-only list: never one Secret read
    assert not [e for e in ours if e["verb"] == "get" and (e.get("objectRef") or {}).get("resource") == "secrets"]
