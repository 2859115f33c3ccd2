"""The key switch is proven, not assumed, and nothing on an error path erases the evidence.

The real operator process against a real API server and the fake Azure (real SDKs). Scenarios run in
order on one cluster; each starts from the previous one's Ready state:

* an ARM PUT applied whose response is lost (504, the SDK's retry gets 412) keeps ``status.operation``
  and its canary baseline: the switch is proven against the baseline and the ledger shifts (defect 2);
* a canary deleted, or re-created under the same name, during the proof is re-created and the proof
  starts over, never counting the new object as the switch (defect 6);
* one Secret refused by admission stalls the policy RewriteFailed, and once the refusal is gone the
  policy becomes Ready by itself (defect 3);
* the rewrite rides out an API server outage longer than the old per-Secret retry budget (defect 3);
* the verification pass is resumed after kill -9 without redoing finished namespaces;
* deleting a non-owner (Conflict) policy with deletionPolicy Disable finishes at once and writes
  nothing to Azure (defect 5).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aks_kms_lab.encryption import provider_name
from aks_kms_lab.seed import seed
from aks_kms_lab.world import CLUSTER, KEY_NAME, OPERATOR_NAMESPACE, PUBLIC_VAULT, RESOURCE_GROUP, SUBSCRIPTION
from aks_kms_operator.kube import Credentials

from ..support import wait_for
from .aks_env import AksEnv, condition

pytestmark = pytest.mark.integration
NAME = "default"
SECRETS = 60
NAMESPACES = 4
POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"
CANARY = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets/aks-kms-canary"
CLUSTER_PATH = rf"/managedClusters/{CLUSTER}$"


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("proof"), audit=True)
    try:
        os.environ["KUBECONFIG"] = str(env.cp.kubeconfig)
        # One API server replica, stopped on purpose below: a leader that cannot renew its Lease exits,
        # and nothing here would restart it. Leader election is not what these tests are about.
        env.env["AKS_KMS_LEADER_ELECTION"] = "false"
        asyncio.run(seed(Credentials.login(), SECRETS, NAMESPACES))
        env.start_operator()
        env.apply_policy(env.world.policy(NAME, key_id=env.world.key_versions[0]))
        env.wait_ready(NAME)
        yield env
    finally:
        env.stop()


def events(aks: AksEnv, since: str = "") -> list[dict[str, Any]]:
    """Events about policies (cluster-scoped objects: kopf posts them in ``default``), oldest first."""
    _, body = aks.cp.request("GET", "/api/v1/namespaces/default/events")
    out = [e for e in body.get("items") or [] if (e.get("involvedObject") or {}).get("kind")
           == "ClusterEncryptionPolicy" and (e.get("lastTimestamp") or e.get("eventTime") or "") >= since]
    return sorted(out, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def reasons(aks: AksEnv, since: str) -> list[str]:
    return [e["reason"] for e in events(aks, since)]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_version(aks: AksEnv) -> str:
    return aks.fake.new_key_version(PUBLIC_VAULT, KEY_NAME)


def rotate(aks: AksEnv, key: str, **spec: Any) -> None:
    aks.patch_spec(NAME, {"kms": {"enabled": True, "keyId": key}, **spec})


def all_under(aks: AksEnv, key: str) -> None:
    assert aks.stored_under() == {provider_name(key): SECRETS}


def canary_uid(aks: AksEnv) -> str:
    code, body = aks.cp.request("GET", CANARY)
    assert code == 200, body
    return str(body["metadata"]["uid"])


def test_lost_put_response_keeps_the_record_of_the_write(aks: AksEnv) -> None:
    """Defect 2: the PUT is applied, its response lost (504), the SDK's retry gets 412 (the eTag moved)."""
    v1 = aks.world.key_versions[0]
    v2 = aks.world.key_versions[1]
    puts, since = len(aks.cluster_puts()), now()
    aks.fake.set_lro(seconds=3)  # the operation outlives the reconcile that saw the 412
    aks.fake.inject_lost_response("PUT", CLUSTER_PATH, "504")
    try:
        rotate(aks, v2)
        wait_for(lambda: len(aks.cluster_puts()) > puts, timeout=60, interval=0.1, what="the PUT")
        assert aks.cluster_puts()[-1].get("responseLost") == "504"
        # The reconcile that got the 412 reported Azure's conflict; the record of the write must survive it.
        status = aks.wait_status(NAME, lambda s: "AzureConflict" in s.get("message", "")
                                 or (s.get("operation") or {}).get("step") == "Update", timeout=60,
                                 what="the reconcile after the lost response")
        time.sleep(1)
        op = aks.policy(NAME)["status"].get("operation") or {}
        assert op.get("step") == "Update" and op.get("targetKeyId") == v2, op
        assert op.get("canaryResourceVersion") and op.get("canaryUid"), op
    finally:
        aks.fake.set_lro(seconds=0.2)
        aks.fake.clear_faults()
    status = aks.wait_ready(NAME, timeout=180)
    assert len(aks.cluster_puts()) == puts + 1, "exactly one accepted write for the step"
    assert status["encryptedWith"] == v2
    assert (status["keys"]["current"]["keyId"], status["keys"]["previous"]["keyId"]) == (v2, v1), status["keys"]
    switched = [e["message"] for e in events(aks, since) if e["reason"] == "KeySwitched"]
    assert switched and "rewritten at probe" in switched[-1], switched  # proven against the baseline
    assert not (status.get("operation") or {}).get("step")
    all_under(aks, v2)


@pytest.mark.parametrize("how", ["deleted", "recreated"])
def test_canary_lost_during_the_proof_is_recreated_and_the_proof_starts_over(aks: AksEnv, how: str) -> None:
    """Defect 6: a deleted canary never wedges the policy; a re-created one (new uid) is not the switch."""
    before_key = aks.policy(NAME)["status"]["encryptedWith"]
    key = new_version(aks)
    puts, since = len(aks.cluster_puts()), now()
    old_uid = canary_uid(aks)
    aks.fake.set_lro(seconds=4)  # the proof waits for AKS: the canary goes away before the first probe
    try:
        rotate(aks, key)
        wait_for(lambda: len(aks.cluster_puts()) > puts, timeout=60, interval=0.1, what="the PUT")
        assert aks.cp.request("DELETE", CANARY)[0] == 200
        if how == "recreated":
            aks.cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {
                "name": "aks-kms-canary", "namespace": OPERATOR_NAMESPACE, "labels": {"aks-kms.dev/canary": "true"}}})
    finally:
        aks.fake.set_lro(seconds=0.2)
    status = aks.wait_ready(NAME, timeout=180)
    assert status["encryptedWith"] == key and len(aks.cluster_puts()) == puts + 1
    assert (status["keys"]["current"]["keyId"], status["keys"]["previous"]["keyId"]) == (key, before_key)
    seen = reasons(aks, since)
    assert "CanaryReplaced" in seen and "CanaryGone" not in seen, seen
    switched = [e["message"] for e in events(aks, since) if e["reason"] == "KeySwitched"]
    assert switched and "re-created or adopted" in switched[-1], switched  # the window, never the new RV
    assert canary_uid(aks) != old_uid
    all_under(aks, key)


VAP = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "freeze-one-secret"},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                                                "resources": ["secrets"]}]},
        "validations": [{"expression": "object.metadata.name != 'frozen'",
                         "message": "frozen: updates refused by test policy"}],
    },
}
VAP_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "freeze-one-secret"},
    "spec": {"policyName": "freeze-one-secret", "validationActions": ["Deny"]},
}
FROZEN_NS = "zz-frozen"
VAP_PATH = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDING_PATH = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"


def _patch_frozen(aks: AksEnv) -> int:
    return aks.cp.request("PATCH", f"/api/v1/namespaces/{FROZEN_NS}/secrets/frozen", {"metadata": {}},
                          content_type="application/merge-patch+json")[0]


def test_one_refused_secret_stalls_and_the_policy_recovers_by_itself(aks: AksEnv) -> None:
    """Defect 3: a retry after RewriteFailed starts a new run (counters and failures reset)."""
    aks.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": FROZEN_NS}})
    aks.cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "frozen", "namespace": FROZEN_NS},
                  "stringData": {"k": "v"}})
    for path, body in ((VAP_PATH, VAP), (BINDING_PATH, VAP_BINDING)):
        code, out = aks.cp.request("POST", path, body)
        assert code == 201, out
    try:
        wait_for(lambda: _patch_frozen(aks) >= 400, timeout=30, interval=0.5, what="admission refuses 'frozen'")
        key = new_version(aks)
        rotate(aks, key)
        status = aks.wait_stalled(NAME, "RewriteFailed", timeout=180)
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert f"{FROZEN_NS}/frozen" in stalled["message"], stalled
        assert status["encryptedWith"] != key
        # A second failed attempt must look like the first: one failure, not an accumulation.
        time.sleep(5)
        again = aks.policy(NAME)["status"]
        assert int((again.get("rewrite") or {}).get("failed") or 0) <= 1, again.get("rewrite")
    finally:
        aks.cp.request("DELETE", f"{BINDING_PATH}/freeze-one-secret")
        aks.cp.request("DELETE", f"{VAP_PATH}/freeze-one-secret")
    wait_for(lambda: _patch_frozen(aks) == 200, timeout=30, interval=0.5, what="admission lets 'frozen' go")
    status = aks.wait_ready(NAME, timeout=120)  # no manual action
    assert status["encryptedWith"] == key and status["rewrite"]["failed"] == 0
    aks.cp.request("DELETE", f"/api/v1/namespaces/{FROZEN_NS}/secrets/frozen")
    all_under(aks, key)


def test_rewrite_rides_out_an_api_server_outage(aks: AksEnv) -> None:
    """Defect 3: a transient error budget of ~3 s failed every Secret written during a restart."""
    key = new_version(aks)
    since = now()
    rotate(aks, key, rewrite={"concurrency": 2, "maxWritesPerSecond": 3})

    def mid_run(s: dict[str, Any]) -> bool:
        rw = s.get("rewrite") or {}
        return rw.get("targetKeyId") == key and 10 <= int(rw.get("seen") or 0) < SECRETS - 10

    aks.wait_status(NAME, mid_run, timeout=120, what="rewrite under way")
    aks.cp.stop_replica(0)
    time.sleep(12)  # longer than the old budget (5 tries, 0.2-1.6 s apart)
    aks.cp.start_replica(0)
    status = aks.wait_ready(NAME, timeout=180)
    assert status["encryptedWith"] == key and status["rewrite"]["failed"] == 0
    seen = reasons(aks, since)
    assert "RewriteFailed" not in seen and "VerifyFailed" not in seen, seen
    all_under(aks, key)
    aks.patch_spec(NAME, {"rewrite": {"concurrency": 8, "maxWritesPerSecond": 0}})
    aks.wait_ready(NAME)


def test_verification_pass_resumes_after_kill_without_redoing_namespaces(aks: AksEnv) -> None:
    key = new_version(aks)
    rotate(aks, key, rewrite={"concurrency": 1, "maxWritesPerSecond": 2})

    def mid_pass(s: dict[str, Any]) -> bool:
        v = s.get("verification") or {}
        return (v.get("targetKeyId") == key and str(v.get("lastNamespace") or "") >= "team-00"
                and int(v.get("namespacesDone") or 0) <= int(v.get("namespacesTotal") or 0) - 3)

    status = aks.wait_status(NAME, mid_pass, timeout=600, what="verification pass half done")
    assert status["encryptedWith"] != key, "nothing is proven before the pass ends"
    aks.kill_operator(9)
    checkpoint = status["verification"]["lastNamespace"]
    # the audit's stageTimestamp has microseconds: a second-resolution mark would count the writes
    # that finished in the second before the kill (the last ones of the checkpointed namespace) as after it
    killed_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    aks.start_operator()
    status = aks.wait_ready(NAME, timeout=240)
    v = status["verification"]
    assert status["encryptedWith"] == key and v["passes"] == 1 and v["verifiedAt"] and v["lastPassReencrypted"] == 0
    after = [w for w in aks.cp.secret_writes() if w["time"] >= killed_at and w["namespace"].startswith("team-")]
    assert after, "the resumed pass wrote nothing"
    assert all(w["namespace"] > checkpoint for w in after), (checkpoint, sorted({w["namespace"] for w in after}))
    all_under(aks, key)
    aks.patch_spec(NAME, {"rewrite": {"concurrency": 8, "maxWritesPerSecond": 0}})
    aks.wait_ready(NAME)


def _gone(aks: AksEnv, name: str) -> bool:
    try:
        code, _ = aks.cp.request("GET", f"{POLICIES}/{name}")
    except OSError:
        return False
    return code == 404


def test_deleting_a_conflicting_policy_touches_nothing(aks: AksEnv) -> None:
    """Defect 5: a non-owner with deletionPolicy Disable goes at once, and never disables KMS."""
    puts = len(aks.cluster_puts())
    intruder = aks.world.policy("intruder", key_id=aks.world.key_versions[0])
    intruder["spec"]["deletionPolicy"] = "Disable"
    aks.apply_policy(intruder)
    aks.wait_stalled("intruder", "Conflict")
    aks.cp.request("DELETE", f"{POLICIES}/intruder")
    wait_for(lambda: _gone(aks, "intruder"), timeout=30, interval=0.5, what="the non-owner policy deleted")
    time.sleep(2)
    assert len(aks.cluster_puts()) == puts
    kms = aks.fake.cluster(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER)["properties"]["securityProfile"]["azureKeyVaultKms"]
    assert kms["enabled"] is True
    assert condition(aks.wait_ready(NAME), "Ready") == "True"
