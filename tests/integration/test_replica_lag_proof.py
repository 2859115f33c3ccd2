"""Two API server replicas behind the lab's balancer: a replica that is behind never yields Ready.

The issue's failure, reproduced: AKS finishes the ARM operation before the last replica reloads, and a
replica on the old key answers a no-op write with "unchanged" for a Secret still under the old key.
Checked from etcd directly: whenever the policy is Ready, every Secret is under ``encryptedWith``.

* lagging last replica (longer than the lab's 3 s window): the canary probes over fresh connections
  reach it, its errors restart the window, and the switch is proven only once it has reloaded;
* what the verification pass does when a replica is behind is shown without the operator, pass by
  pass, in ``test_verification_pass.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest

from aks_kms_lab.encryption import provider_name
from aks_kms_lab.seed import seed
from aks_kms_operator.kube import Credentials

from .aks_env import AksEnv

pytestmark = pytest.mark.integration
NAME = "default"
SECRETS = 240
NAMESPACES = 4


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("lag"), apiservers=2, roll_interval=0.5)
    try:
        os.environ["KUBECONFIG"] = str(env.cp.kubeconfig)
        env.env["AKS_KMS_LEADER_ELECTION"] = "false"  # one operator; rolls must not cost its leadership
        # ~15 probes in the 3 s window: the chance that hash-spread probes all miss one of two replicas
        # is 2^-15, so the test can insist that they met the lagging one.
        env.env["AKS_KMS_KEY_SWITCH_INTERVAL_SECONDS"] = "0.2"
        asyncio.run(seed(Credentials.login(), SECRETS, NAMESPACES))
        env.start_operator()
        env.apply_policy(env.world.policy(NAME, key_id=env.world.key_versions[0]))
        env.wait_ready(NAME, timeout=240)
        yield env
    finally:
        env.stop()


def events(aks: AksEnv, since: str) -> list[dict[str, Any]]:
    _, body = aks.cp.request("GET", "/api/v1/namespaces/default/events")
    return [e for e in body.get("items") or [] if (e.get("involvedObject") or {}).get("kind")
            == "ClusterEncryptionPolicy" and (e.get("lastTimestamp") or "") >= since]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_only_when_all_under(aks: AksEnv, key: str, timeout: float = 300) -> dict[str, Any]:
    """Wait for Ready; the moment it is seen, etcd must hold every Secret under ``key``."""
    status = aks.wait_ready(NAME, timeout=timeout)
    assert status["encryptedWith"] == key
    assert aks.stored_under() == {provider_name(key): SECRETS}, "Ready while Secrets are under another key"
    return status


def test_lagging_last_replica_holds_the_proof_until_it_reloads(aks: AksEnv) -> None:
    v2 = aks.world.key_versions[1]
    since = now()
    aks.kms.lag_last_seconds = 10.0  # ARM says Succeeded 10 s before replica 1 reloads (window: 3 s)
    try:
        aks.patch_spec(NAME, {"kms": {"keyId": v2}})
        ready_only_when_all_under(aks, v2)
    finally:
        aks.kms.lag_last_seconds = None
        aks.kms.wait_settled()
    switched = [e["message"] for e in events(aks, since) if e["reason"] == "KeySwitched"]
    assert switched, "no KeySwitched event"
    assert " 0 restart(s), 0 error(s)" not in switched[-1], f"the probes never met the lagging replica: {switched}"
