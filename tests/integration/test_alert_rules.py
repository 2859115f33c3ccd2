"""The chart's alert rules, checked and unit-tested by the real promtool (built by `make tools`).

The rules are rendered by the real helm from the chart's default values, so a template error, a bad
PromQL expression or a threshold that does not do what values.yaml says fails here. Every alert gets
series that make it fire just past its threshold and series that stay just short of it (a ``for:``
duration is checked one evaluation before and at its end). Thresholds are read from values.yaml, so
changing a default keeps the tests meaningful.

The dashboard JSON is checked here as well (it ships in the same chart): valid JSON, unique panel
ids, every panel on the grid. That its metric names exist is tests/integration/test_reconcile.py's
job, against the running operator's /metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aks_kms_lab.controlplane import tool

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "aks-kms-operator"
DASHBOARD = CHART / "dashboards" / "aks-kms-operator.json"
ALERTS = ["AksKmsKeyExpiringSoon", "AksKmsPreviousKeyExpiringSoon", "AksKmsKeyUnusable", "AksKmsPolicyNotReady",
          "AksKmsRewriteStalled", "AksKmsKeySwitchTimedOut", "AksKmsAzureRequestsFailing",
          "AksKmsNewKeyVersionNotFollowed"]
DAY = 86400


def render_rules(*sets: str) -> dict[str, Any]:
    """The PrometheusRule's spec (a Prometheus rule file: ``groups``) as helm renders it."""
    args = [str(tool("helm")), "template", "t", str(CHART), "--kube-version", "1.35.4",
            "--show-only", "templates/prometheusrule.yaml", "--set", "metrics.prometheusRule.enabled=true"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    rule = yaml.safe_load(out)
    assert rule["kind"] == "PrometheusRule"
    return rule["spec"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("promtool")), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def thresholds() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return dict(values["metrics"]["prometheusRule"])


def minutes(duration: str) -> int:
    m = re.fullmatch(r"(\d+)(m|h)", duration)
    assert m, f"test expects a duration in m or h, got {duration}"
    return int(m[1]) * (60 if m[2] == "h" else 1)


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def alert(name: str, at: str, *expected: dict[str, str], severity: str = "warning") -> dict[str, Any]:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {**labels, "severity": severity}} for labels in expected]}


def unit_tests(t: dict[str, Any]) -> list[dict[str, Any]]:
    """One promtool test group per alert: series just past and just short of the threshold."""
    at = 600  # eval time (s) of the expiry tests; time() is the eval time there
    days, prev_days = int(t["keyExpiryDays"]), int(t["previousKeyExpiryDays"])
    unusable, not_ready = minutes(t["keyUnusableFor"]), minutes(t["notReadyFor"])
    stall, window = int(t["rewriteStallMinutes"]), minutes(t["keySwitchTimeoutWindow"])
    errors_for, follow = minutes(t["azureErrorsFor"]), minutes(t["followLatestFor"])
    ratio = float(t["azureErrorRatio"])
    expiry = "aks_kms_key_expiry_timestamp_seconds"
    protects = "aks_kms_key_protects_secrets"
    below, above = round(ratio * 1000) - 1, round(ratio * 1000) + 1  # errors per 1000 requests a minute
    return [
        {"interval": "1m", "input_series": [
            # expires one minute inside the window: fires; exactly at the window's edge: does not
            series(expiry, {"policy": "soon", "slot": "current"}, f"{at + days * DAY - 60}x20"),
            series(expiry, {"policy": "edge", "slot": "current"}, f"{at + days * DAY}x20"),
            # the previous slot is another alert's business
            series(expiry, {"policy": "prev", "slot": "previous"}, f"{at + 60}x20"),
        ], "alert_rule_test": [alert("AksKmsKeyExpiringSoon", "10m", {"policy": "soon", "slot": "current"})]},
        {"interval": "1m", "input_series": [
            series(expiry, {"policy": "soon", "slot": "previous"}, f"{at + prev_days * DAY - 60}x20"),
            series(protects, {"policy": "soon", "slot": "previous"}, "1x20"),
            series(expiry, {"policy": "edge", "slot": "previous"}, f"{at + prev_days * DAY}x20"),
            series(protects, {"policy": "edge", "slot": "previous"}, "1x20"),
            # expiring, but every Secret is already under the current key: no page
            series(expiry, {"policy": "done", "slot": "previous"}, f"{at + 60}x20"),
            series(protects, {"policy": "done", "slot": "previous"}, "0x20"),
        ], "alert_rule_test": [alert("AksKmsPreviousKeyExpiringSoon", "10m", {"policy": "soon", "slot": "previous"},
                                     severity="critical")]},
        {"interval": "1m", "input_series": [
            series("aks_kms_key_enabled", {"policy": "p", "slot": "previous"}, f"0x{unusable + 5}"),
            series("aks_kms_key_enabled", {"policy": "p", "slot": "current"}, f"1x{unusable + 5}"),
        ], "alert_rule_test": [alert("AksKmsKeyUnusable", f"{unusable - 1}m"),
                               alert("AksKmsKeyUnusable", f"{unusable}m", {"policy": "p", "slot": "previous"},
                                     severity="critical")]},
        {"interval": "1m", "input_series": [
            series("aks_kms_policy_ready", {"policy": "stuck"}, f"0x{not_ready + 5}"),
            series("aks_kms_policy_ready", {"policy": "fine"}, f"1x{not_ready + 5}"),
        ], "alert_rule_test": [alert("AksKmsPolicyNotReady", f"{not_ready - 1}m"),
                               alert("AksKmsPolicyNotReady", f"{not_ready}m", {"policy": "stuck"})]},
        {"interval": "1m", "input_series": [
            # last progress at t=0; the rewrite runs, the verification pass does not
            series("aks_kms_rewrite_last_progress_timestamp_seconds", {"policy": "p", "pass": "rewrite"},
                   f"0x{stall + 5}"),
            series("aks_kms_rewrite_in_progress", {"policy": "p", "pass": "rewrite"}, f"1x{stall + 5}"),
            series("aks_kms_rewrite_last_progress_timestamp_seconds", {"policy": "p", "pass": "verification"},
                   f"0x{stall + 5}"),
            series("aks_kms_rewrite_in_progress", {"policy": "p", "pass": "verification"}, f"0x{stall + 5}"),
        ], "alert_rule_test": [alert("AksKmsRewriteStalled", f"{stall}m"),
                               alert("AksKmsRewriteStalled", f"{stall + 1}m", {"policy": "p", "pass": "rewrite"})]},
        {"interval": "1m", "input_series": [
            series("aks_kms_key_switch_total", {"policy": "p", "outcome": "timeout"}, f"0 0 0 1x{window + 30}"),
            series("aks_kms_key_switch_total", {"policy": "p", "outcome": "switched"}, f"0 1 2 3x{window + 30}"),
        ], "alert_rule_test": [alert("AksKmsKeySwitchTimedOut", "2m"),
                               alert("AksKmsKeySwitchTimedOut", "5m", {"policy": "p", "outcome": "timeout"}),
                               alert("AksKmsKeySwitchTimedOut", f"{window + 10}m")]},
        {"interval": "1m", "input_series": [
            series("aks_kms_azure_requests_total", {"service": "arm", "operation": "GET managedClusters",
                                                    "code": "200"}, f"0+{1000 - below}x{errors_for + 10}"),
            series("aks_kms_azure_requests_total", {"service": "arm", "operation": "GET managedClusters",
                                                    "code": "500"}, f"0+{below}x{errors_for + 10}"),
            series("aks_kms_azure_requests_total", {"service": "keyvault", "operation": "GetKey",
                                                    "code": "200"}, f"0+{1000 - above}x{errors_for + 10}"),
            series("aks_kms_azure_requests_total", {"service": "keyvault", "operation": "GetKey",
                                                    "code": "403"}, f"0+{above}x{errors_for + 10}"),
        ], "alert_rule_test": [alert("AksKmsAzureRequestsFailing", f"{errors_for}m"),
                               alert("AksKmsAzureRequestsFailing", f"{errors_for + 1}m", {"service": "keyvault"})]},
        {"interval": "1m", "input_series": [
            series("aks_kms_key_newer_version_available", {"policy": "behind"}, f"1x{follow + 5}"),
            series("aks_kms_key_newer_version_available", {"policy": "current"}, f"0x{follow + 5}"),
        ], "alert_rule_test": [alert("AksKmsNewKeyVersionNotFollowed", f"{follow - 1}m"),
                               alert("AksKmsNewKeyVersionNotFollowed", f"{follow}m", {"policy": "behind"})]},
    ]


def without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    """promtool compares annotations too when a test expects an alert; the threshold tests are about
    expressions, ``for`` and labels, so they run on the rules minus annotations (which
    test_annotations_are_templated checks on the real rules)."""
    return {"groups": [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                       for g in rules["groups"]]}


def write(tmp_path: Path, rules: dict[str, Any], tests: list[dict[str, Any]]) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests},
                                   sort_keys=False))
    return path


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return render_rules()


def test_every_alert_has_a_summary_and_a_fix(rules: dict[str, Any]) -> None:
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert [a["alert"] for a in alerts] == ALERTS
    for a in alerts:
        notes = a["annotations"]
        assert notes["summary"] and len(notes["description"]) > 80, a["alert"]
        # every description names something to run
        assert re.search(r"\b(kubectl|az|aks-kms-operator)\b", notes["description"]), a["alert"]


def test_promtool_checks_the_rendered_rules(rules: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_every_alert_fires_past_its_threshold_and_not_before(rules: dict[str, Any], tmp_path: Path) -> None:
    t = thresholds()
    tests = unit_tests(t)
    assert len(tests) == len(ALERTS)
    result = promtool("test", "rules", str(write(tmp_path, without_annotations(rules), tests)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_annotations_are_templated(rules: dict[str, Any], tmp_path: Path) -> None:
    """The real annotations, expanded by promtool: they name the policy, the slot and the fix."""
    unusable = minutes(thresholds()["keyUnusableFor"])
    test = {"interval": "1m", "input_series": [
        series("aks_kms_key_enabled", {"policy": "p", "slot": "previous"}, f"0x{unusable + 5}")],
        "alert_rule_test": [{"eval_time": f"{unusable}m", "alertname": "AksKmsKeyUnusable", "exp_alerts": [{
            "exp_labels": {"policy": "p", "slot": "previous", "severity": "critical"},
            "exp_annotations": {
                "summary": "The previous KMS key of policy p is disabled or missing in Key Vault",
                "description": "AKS loads this key; disabled, Secret reads and writes under it fail; deleted, "
                               "they fail for good once purged. kubectl describe cep p shows the KeyHealthy "
                               "condition with the key ID. Fix: az keyvault key set-attributes --enabled true "
                               "--id KEY_ID, or az keyvault key recover --vault-name VAULT --name KEY for a "
                               "deleted key."}}]}]}
    result = promtool("test", "rules", str(write(tmp_path, rules, [test])), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_fails_when_a_threshold_moves(tmp_path: Path) -> None:
    """The unit tests can fail: the same series against rules rendered with the key-expiry window one
    day longer make the 'edge' policy fire too, and promtool says so."""
    t = thresholds()
    moved = render_rules(f"metrics.prometheusRule.keyExpiryDays={int(t['keyExpiryDays']) + 1}")
    result = promtool("test", "rules", str(write(tmp_path, without_annotations(moved), unit_tests(t)[:1])),
                      cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "edge" in result.stdout + result.stderr


def test_dashboard_is_valid_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(tgt["expr"] for tgt in p["targets"]), p["title"]
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "policy"}
