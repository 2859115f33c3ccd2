"""planview: the plan report from real planner decisions (pure; no Azure, no API server)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from aks_kms_operator import planning, planview
from aks_kms_operator.api import v1alpha1 as api
from aks_kms_operator.api.schema import parse
from aks_kms_operator.model import ClusterState
from aks_kms_operator.planning import PlannedStep, Step
from aks_kms_operator.preflight import Finding, Reason, Severity

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
KA = "https://kv1.vault.azure.net/keys/etcd/" + "a" * 32
KB = "https://kv1.vault.azure.net/keys/etcd/" + "b" * 32
VAULT = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.KeyVault/"
         "vaults/kv1")
CLUSTER = {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg", "name": "aks"}


def spec(**kms: object) -> api.PolicySpec:
    return parse(api.PolicySpec, {"cluster": CLUSTER, "kms": {"enabled": True, "keyId": KB, **kms}})


def cluster(enabled: bool = True, key: str = KA, access: str = "Public", vault: str = "") -> ClusterState:
    return ClusterState(kms_enabled=enabled, key_id=key if enabled else "", network_access=access,
                        vault_resource_id=vault, provisioning_state="Succeeded", kubernetes_version="1.30.4",
                        identity_type="UserAssigned")


def kms_of(c: ClusterState) -> dict[str, object]:
    if not c.kms_enabled:
        return {"enabled": False}
    return {"enabled": True, "keyId": c.key_id, "keyVaultNetworkAccess": c.network_access,
            "keyVaultResourceId": c.vault_resource_id}


def inputs(s: api.PolicySpec, c: ClusterState, encrypted_with: str, *,
           findings: tuple[Finding, ...] = (), secrets: int = 1000, namespaces: int = 10) -> planview.PlanInputs:
    """What plancmd builds: the planner's decision, with every write checked (``findings`` for each)."""
    status = api.PolicyStatus(encrypted_with=encrypted_with)
    first = planning.plan_next_step(s, c, status, now=NOW)
    checks = tuple(planview.WriteCheck(i, findings) for i, st in enumerate(first.steps) if st.writes)
    decision = first
    if first.next_step is Step.CHECK:
        second = planning.plan_next_step(s, c, status, findings=list(findings), now=NOW)
        decision = dataclasses.replace(second, steps=first.steps)
    return planview.PlanInputs(name="default", source="file policy.yaml", spec=s, status=status, cluster=c,
                               kms_before=kms_of(c), decision=decision, checks=checks, secrets=secrets,
                               namespaces=namespaces, key_switch_window=90.0, exists_in_cluster=True, now=NOW)


def test_no_change_exits_0_and_says_so() -> None:
    rep = planview.report(inputs(spec(), cluster(key=KB), KB))
    assert rep["outcome"] == "NoChange" and planview.exit_code(rep) == 0 and rep["steps"] == []
    text = planview.render_text(rep)
    assert "No change" in text and "exit 0" in text


def test_rotation_shows_the_keyid_change_and_the_estimate() -> None:
    rep = planview.report(inputs(spec(), cluster(), KA, secrets=1200, namespaces=7))
    assert planview.exit_code(rep) == 2
    assert [s["step"] for s in rep["steps"]] == ["Check", "Update", "WaitForKeySwitch", "Rewrite", "Verify"]
    assert rep["steps"][1]["arm"]["changed"] == [{"field": "keyId", "before": KA, "after": KB}]
    assert rep["next"]["step"] == "Update" and rep["armWrites"] == 1
    assert rep["rewrite"]["secretWrites"] == 2400 and rep["rewrite"]["estimatedSeconds"] is None
    text = planview.render_text(rep)
    assert f"keyId: {KA} → {KB}" in text and "1200 Secret(s) in 7 namespace(s)" in text
    json.dumps(rep)  # -o json


def test_rate_cap_gives_a_duration() -> None:
    s = dataclasses.replace(spec(), rewrite=api.RewriteSpec(max_writes_per_second=20.0))
    rep = planview.report(inputs(s, cluster(), KA, secrets=1200))
    # 1200 rewritten + 1200 verified at 20/s = 120 s, plus one 90 s key-switch window
    assert rep["rewrite"]["estimatedSeconds"] == 210
    assert "about 3m 30s" in planview.render_text(rep)


def test_public_to_private_disables_then_enables_and_warns_about_plaintext() -> None:
    rep = planview.report(inputs(spec(keyVaultNetworkAccess="Private", keyVaultResourceId=VAULT), cluster(), KA))
    writes = [s for s in rep["steps"] if s["writesArm"]]
    assert [w["step"] for w in writes] == ["Disable", "Enable"]
    # the Enable starts from what the Disable left (enabled false, the old key kept as the CLI does)
    assert writes[0]["arm"]["after"] == writes[1]["arm"]["before"]
    assert writes[0]["arm"]["changed"] == [{"field": "enabled", "before": True, "after": False}]
    assert writes[1]["arm"]["after"] == {"enabled": True, "keyId": KB, "keyVaultNetworkAccess": "Private",
                                         "keyVaultResourceId": VAULT}
    assert any("plaintext" in w for w in rep["warnings"])
    assert rep["rewrite"]["runs"] == 2


def test_a_blocker_on_a_later_write_blocks_the_whole_plan() -> None:
    block = Finding(Reason.PRIVATE_VAULT_NEEDS_VNET_INTEGRATION, Severity.BLOCK, "needs VNet integration",
                    "az aks update --enable-apiserver-vnet-integration")
    base = inputs(spec(keyVaultNetworkAccess="Private", keyVaultResourceId=VAULT), cluster(), KA)
    # only the second write (the Enable) is blocked: the Disable would go ahead in the operator
    enable_at = next(c.step_index for c in base.checks[1:])
    later = dataclasses.replace(base, checks=(base.checks[0], planview.WriteCheck(enable_at, (block,))))
    rep = planview.report(later)
    assert rep["outcome"] == "Blocked" and planview.exit_code(rep) == 3
    assert rep["next"]["step"] == "Disable"
    assert rep["findings"][0]["beforeStep"] == enable_at + 1
    text = planview.render_text(rep)
    assert "BLOCKED" in text and "fix: az aks update --enable-apiserver-vnet-integration" in text


def test_a_blocked_next_write_is_the_decision() -> None:
    block = Finding(Reason.KEY_DISABLED, Severity.BLOCK, f"key {KB} is disabled", "az keyvault key set-attributes")
    rep = planview.report(inputs(spec(), cluster(), KA, findings=(block,)))
    assert rep["next"]["step"] == "Blocked" and rep["next"]["reason"] == "KeyDisabled"
    assert planview.exit_code(rep) == 3
    assert [f["reason"] for f in rep["findings"]] == ["KeyDisabled"]


def test_a_blocked_decision_without_steps_still_lists_the_reason() -> None:
    base = inputs(spec(), cluster(), KA)
    conflict = planning.Decision(Step.BLOCKED, (), "Conflict", "policy other already manages cluster aks",
                                 "kubectl delete clusterencryptionpolicy default")
    rep = planview.report(dataclasses.replace(base, decision=conflict, checks=()))
    assert planview.exit_code(rep) == 3 and rep["findings"][0]["reason"] == "Conflict"
    assert "kubectl delete" in planview.render_text(rep)


def test_new_policy_on_a_plain_cluster_explains_the_adoption_rewrite() -> None:
    rep = planview.report(inputs(spec(), cluster(enabled=False), ""))
    assert [s["step"] for s in rep["steps"]][:3] == ["WaitForKeySwitch", "Rewrite", "Verify"]
    assert any("No ledger yet" in w for w in rep["warnings"])
    enable = next(s for s in rep["steps"] if s["step"] == "Enable")
    assert {c["field"] for c in enable["arm"]["changed"]} >= {"enabled", "keyId"}


def test_warnings_findings_are_reported_without_blocking() -> None:
    warn = Finding(Reason.KEY_EXPIRES_SOON, Severity.WARN, "key expires soon", "az keyvault key set-attributes")
    rep = planview.report(inputs(spec(), cluster(), KA, findings=(warn,)))
    assert planview.exit_code(rep) == 2
    assert rep["findings"][0]["severity"] == "Warn"


def test_disable_warns_that_secrets_end_up_without_kms() -> None:
    rep = planview.report(inputs(parse(api.PolicySpec, {"cluster": CLUSTER, "kms": {"enabled": False}}),
                                 cluster(), KA))
    assert any("disabled" in w and "without KMS" in w for w in rep["warnings"])


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (61, "1m 01s"), (3600, "1h 00m"),
                                               (7322, "2h 02m")])
def test_duration(seconds: float, text: str) -> None:
    assert planview.duration(seconds) == text


def test_arm_changes_skip_non_writes_and_chain() -> None:
    steps = [PlannedStep(Step.CHECK, KB), PlannedStep(Step.UPDATE, KB, "Public", "", KA),
             PlannedStep(Step.REWRITE, KB)]
    (before, after), = planview.arm_changes({"enabled": True, "keyId": KA, "keyVaultNetworkAccess": "Public"}, steps)
    assert before["keyId"] == KA and after["keyId"] == KB and after["keyVaultResourceId"] == ""


def test_without_the_right_to_list_secrets_the_sizes_are_unknown_not_zero() -> None:
    rep = planview.report(dataclasses.replace(inputs(spec(), cluster(), KA), secrets_counted=False))
    assert rep["rewrite"]["secrets"] is None and rep["rewrite"]["secretWrites"] is None
    assert rep["rewrite"]["estimatedSeconds"] is None and planview.exit_code(rep) == 2
    text = planview.render_text(rep)
    assert "Secrets not counted" in text and "re-encrypt every Secret" in text and " 0 Secret" not in text


def test_the_next_write_is_described_in_the_steps_own_words() -> None:
    rep = planview.report(inputs(spec(keyVaultNetworkAccess="Private", keyVaultResourceId=VAULT), cluster(), KA))
    assert rep["next"]["step"] == "Disable"
    assert rep["next"]["message"].startswith("ARM PUT: disable KMS"), rep["next"]
