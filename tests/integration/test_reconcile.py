"""The real operator process reconciling AKS KMS through the real Azure SDKs (fake Azure over HTTPS)
and re-encrypting Secrets on the real API server. Scenarios run in order on one cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aks_kms_lab.controlplane import tool
from aks_kms_lab.encryption import provider_name
from aks_kms_lab.seed import seed
from aks_kms_operator.kube import Credentials

from .aks_env import POLICIES, AksEnv, condition, reason_of

pytestmark = pytest.mark.integration
NAME = "default"
SECRETS = 60


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("aks"))
    try:
        os.environ["KUBECONFIG"] = str(env.cp.kubeconfig)
        asyncio.run(seed(Credentials.login(), SECRETS, 4))
        env.start_operator()
        yield env
    finally:
        env.stop()


def all_under(aks: AksEnv, label: str) -> None:
    stored = aks.stored_under()
    assert stored == {label: SECRETS}, stored


def test_enable_with_public_vault(aks: AksEnv) -> None:
    v1 = aks.world.key_versions[0]
    all_under(aks, "plaintext")
    aks.apply_policy(aks.world.policy(NAME, key_id=v1))
    status = aks.wait_ready(NAME)
    assert status["encryptedWith"] == v1
    assert status["keys"]["current"]["keyId"] == v1
    assert status["rewrite"]["reencrypted"] >= SECRETS and status["rewrite"]["failed"] == 0
    assert status["cluster"]["kmsEnabled"] is True and status["phase"] == "Ready"
    puts = aks.cluster_puts()
    assert len(puts) == 1, puts
    all_under(aks, provider_name(v1))


def test_rotate(aks: AksEnv) -> None:
    v1, v2 = aks.world.key_versions[:2]
    aks.patch_spec(NAME, {"kms": {"keyId": v2}})
    status = aks.wait_ready(NAME)
    assert status["encryptedWith"] == v2
    assert (status["keys"]["current"]["keyId"], status["keys"]["previous"]["keyId"]) == (v2, v1)
    assert status["keys"].get("retirable", []) == []
    assert len(aks.cluster_puts()) == 2
    all_under(aks, provider_name(v2))


def test_second_rotation_waits_for_the_first_rewrite(aks: AksEnv) -> None:
    v1, v2, v3 = aks.world.key_versions[:3]
    puts = len(aks.cluster_puts())
    # Rotate to v3 but hold the rewrite: Secrets stay under v2, AKS holds [v3, v2].
    aks.patch_spec(NAME, {"kms": {"keyId": v3}, "rewrite": {"paused": True}})
    aks.wait_status(NAME, lambda s: s.get("phase") == "Paused", what="Paused after the v3 update")
    assert len(aks.cluster_puts()) == puts + 1
    # Ask for another rotation now: sending it would drop v2, which still holds every Secret.
    aks.patch_spec(NAME, {"kms": {"keyId": v1}})
    status = aks.wait_status(NAME, lambda s: s.get("phase") == "Paused", what="still Paused")
    assert status["plan"]["steps"][0] == "Rewrite", status["plan"]
    assert len(aks.cluster_puts()) == puts + 1, "no Update may be sent before the v3 rewrite completes"
    all_under(aks, provider_name(v2))
    previous_key_expiring_is_a_warning(aks, v2)
    # Resume: the v3 rewrite completes, then the Update to v1 goes out, then its rewrite.
    aks.patch_spec(NAME, {"rewrite": {"paused": False}})
    status = aks.wait_ready(NAME)
    assert status["encryptedWith"] == v1
    assert [p["kms"]["keyId"] for p in aks.cluster_puts()[-2:]] == [v3, v1]
    assert (status["keys"]["current"]["keyId"], status["keys"]["previous"]["keyId"]) == (v1, v3)
    assert [r["keyId"] for r in status["keys"]["retirable"]] == [v2]
    all_under(aks, provider_name(v1))


def previous_key_expiring_is_a_warning(aks: AksEnv, previous: str) -> None:
    """AKS's previous key still holds every Secret (rewrite paused): its expiry coming close is KeyHealthy
    False ``PreviousKeyExpiresSoon``, a Warning Event and the metrics the alert reads."""
    soon = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=3)
    aks.fake.set_key_attributes(previous, expires_on=soon)
    try:
        code, out = aks.cp.request("PATCH", f"{POLICIES}/{NAME}", {"metadata": {"annotations": {
            "reconcile.fluxcd.io/requestedAt": soon.isoformat()}}}, content_type="application/merge-patch+json")
        assert code == 200, out
        status = aks.wait_status(NAME, lambda s: reason_of(s, "KeyHealthy") == "PreviousKeyExpiresSoon",
                                 what="KeyHealthy PreviousKeyExpiresSoon")
        assert condition(status, "KeyHealthy") == "False" and condition(status, "Ready") == "False"
        _, body = aks.cp.request("GET", "/api/v1/namespaces/default/events")
        warned = [e for e in body.get("items") or [] if e.get("reason") == "PreviousKeyExpiresSoon"]
        assert warned and warned[0]["type"] == "Warning" and previous in warned[0]["message"], warned
        with urllib.request.urlopen(aks.metrics_url, timeout=10) as response:
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(response.read().decode()) for s in f.samples}
        slot = (("policy", NAME), ("slot", "previous"))
        assert samples[("aks_kms_key_protects_secrets", slot)] == 1
        assert samples[("aks_kms_key_expiry_timestamp_seconds", slot)] == soon.timestamp()
    finally:
        aks.fake.set_key_attributes(previous, expires_on=None)


def test_vault_mode_change_goes_through_plaintext(aks: AksEnv) -> None:
    private_key = aks.world.private_key_versions[0]
    puts = len(aks.cluster_puts())
    aks.patch_spec(NAME, {"kms": {"keyId": private_key, "keyVaultNetworkAccess": "Private",
                                  "keyVaultResourceId": aks.world.private_vault_id}})
    status = aks.wait_ready(NAME, timeout=240)
    new = aks.cluster_puts()[puts:]
    assert [(p["kms"]["enabled"], p["kms"].get("keyVaultNetworkAccess")) for p in new] == [
        (False, "Public"), (True, "Private")], new
    assert status["encryptedWith"] == private_key
    steps = status["plan"]["steps"]
    assert steps[:3] == ["Disable", "WaitForKeySwitch", "Rewrite"] and "Enable(Private)" in steps, steps
    all_under(aks, provider_name(private_key))


def test_disable(aks: AksEnv) -> None:
    private_key = aks.world.private_key_versions[0]
    aks.patch_spec(NAME, {"kms": {"enabled": False, "keyId": "", "keyVaultNetworkAccess": "Public",
                                  "keyVaultResourceId": ""}})
    status = aks.wait_ready(NAME)
    assert status["encryptedWith"] == "identity"
    assert status["cluster"]["kmsEnabled"] is False
    # the key AKS was disabled from stays loaded for reads: still reported as needed
    assert status["keys"]["previous"]["keyId"] == private_key
    assert condition(status, "SecretsEncrypted") == "True"
    all_under(aks, "plaintext")


# ------------------------------------------------------------------------------ one source of truth

CHART = Path(__file__).resolve().parents[2] / "charts" / "aks-kms-operator"


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names (all ours start with aks_kms_) in the chart's alert rules and dashboard."""
    rendered = subprocess.run([str(tool("helm")), "template", "t", str(CHART), "--kube-version", "1.35.4",
                               "--show-only", "templates/prometheusrule.yaml", "--set",
                               "metrics.prometheusRule.enabled=true"], capture_output=True, text=True, check=True,
                              timeout=120).stdout
    board = json.loads((CHART / "dashboards" / "aks-kms-operator.json").read_text())
    exprs = {"rules": [r["expr"] for g in yaml.safe_load(rendered)["spec"]["groups"] for r in g["rules"]],
             "dashboard": [t["expr"] for p in board["panels"] for t in p.get("targets", [])]}
    return {where: {m for e in found for m in re.findall(r"\baks_kms_[a-zA-Z0-9_]+", e)}
            for where, found in exprs.items()}


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition has, plus the names a declared family yields once it has a sample
    (a labelled counter nobody incremented yet is still a valid reference)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",),
                "gauge": ("",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ())}
    return names


def test_metrics_name_every_metric_the_rules_and_dashboard_use(aks: AksEnv) -> None:
    """The running operator's real /metrics (after enable, rotations and a disable) against every metric
    the chart's alert rules and Grafana dashboard query: one missing name is a silent alert or an empty
    panel, so it fails here."""
    with urllib.request.urlopen(aks.metrics_url, timeout=10) as response:
        text = response.read().decode()
    exposed = exposed_names(text)
    for where, names in referenced_metrics().items():
        assert names, f"no aks_kms_ metric found in the {where}"
        missing = sorted(names - exposed)
        assert not missing, f"the {where} use metrics the operator does not expose: {missing}"
    # this run did real work: the counters moved, and no label names a Secret. (Counters start again
    # whenever the process re-executes itself after losing the Lease, which this lab's single API server
    # causes on each KMS change, so only what follows the last one is counted.)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    reencrypted = sum(v for (n, labels), v in samples.items()
                      if n == "aks_kms_rewrite_secrets_total" and ("outcome", "reencrypted") in labels)
    assert reencrypted > 0
    services = {dict(labels)["service"] for (n, labels) in samples if n == "aks_kms_azure_requests_total"}
    assert "arm" in services, services
    assert any(n == "aks_kms_key_switch_total" and ("outcome", "switched") in labels and v >= 1
               for (n, labels), v in samples.items())
    label_names = {k for (_, labels) in samples for k, _ in labels}
    assert not label_names & {"secret", "name", "namespace", "data"}, label_names
