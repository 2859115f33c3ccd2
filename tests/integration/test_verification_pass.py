"""Why a verification pass, and why over fresh connections: two API server replicas on one etcd behind
the lab's balancer, one of them still writing with the old key.

* A rewrite over kept-alive connections leaves Secrets under the old key and reports them
  "already current" (the answer of the replica that has not switched): no failure, no hint.
* A verification pass over fresh connections while that replica is still behind is not clean
  (it re-encrypts Secrets, or retries writes the replica cannot serve).
* Once every replica writes with the new key, passes converge to one that re-encrypts nothing, and
  then etcd holds every Secret under the new key: a clean pass is the proof (design.md invariant 10).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest

from aks_kms_lab.controlplane import ControlPlane
from aks_kms_lab.etcdraw import EtcdClient
from aks_kms_lab.seed import seed
from aks_kms_operator.kube import Credentials, KubeClient
from aks_kms_operator.rewrite import RewriteEngine, RewriteOptions, RewriteResult, fresh_client

from .test_rewrite import encryption_config

pytestmark = pytest.mark.integration
SECRETS = 200
PREFIX = "verify"


def under(cp: ControlPlane) -> Counter[str]:
    """Seeded Secrets per aescbc key name, straight from etcd."""
    out: Counter[str] = Counter()
    for raw in EtcdClient(cp.etcd_url).scan():
        if f"/secrets/{PREFIX}-" in raw.key:
            out[raw.value.split(b":")[4].decode() if raw.value.startswith(b"k8s:enc:aescbc:v1:") else "other"] += 1
    return out


def one_pass(fresh: bool) -> RewriteResult:
    async def run() -> RewriteResult:
        async with KubeClient(Credentials.login()) as c:
            client = fresh_client(c) if fresh else c
            return await RewriteEngine(client, "key2", namespaces=[f"{PREFIX}-00", f"{PREFIX}-01"],
                                       options=RewriteOptions(concurrency=8)).run()
    return asyncio.run(run())


def test_only_a_clean_pass_over_fresh_connections_proves_the_rewrite(tmp_path: Path) -> None:
    key1 = encryption_config(tmp_path / "key1.yaml", "key1")
    key2 = encryption_config(tmp_path / "key2.yaml", "key2")
    with ControlPlane(tmp_path / "cp", apiservers=2, encryption_config=key1) as cp:
        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
        asyncio.run(seed(Credentials.login(), SECRETS, 2, prefix=PREFIX))
        assert under(cp) == {"key1": SECRETS}
        cp.restart_replica(0, key2)  # replica 0 switched; replica 1 has not reloaded yet

        rewrite = one_pass(fresh=False)
        c = rewrite.counters
        assert c.failed == 0 and c.seen == SECRETS
        left = under(cp)["key1"]
        # Whatever the pinned connections reached: the rewrite cannot tell, only etcd (or a clean pass) can.
        assert c.already_current == left or left == 0, (c, under(cp))

        behind = one_pass(fresh=True)
        assert behind.counters.reencrypted + behind.counters.retried > 0, \
            f"a pass with a replica behind must not be clean: {behind.counters}"

        cp.restart_replica(1, key2)  # now every replica writes with key2
        passes = []
        for _ in range(4):
            passes.append(one_pass(fresh=True).counters)
            if passes[-1].reencrypted == passes[-1].retried == passes[-1].failed == 0:
                break
        assert passes[-1].reencrypted == 0, passes
        assert under(cp) == {"key2": SECRETS}, "a clean pass with Secrets left under the old key"
        print(f"\nrewrite over pinned connections: {c.reencrypted} re-encrypted, {c.already_current} 'already "
              f"current', {left} still under key1 in etcd; pass with replica 1 behind: {behind.counters.reencrypted} "
              f"re-encrypted, {behind.counters.retried} retried; passes after it reloaded: "
              f"{[(p.reencrypted, p.retried) for p in passes]}")
