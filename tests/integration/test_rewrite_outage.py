"""A rewrite rides out an API server outage: the per-Secret retry budget is time (60 s), not 5 tries.

AKS restarts API server replicas on every KMS change, and a single-replica API server restart takes
seconds to tens of seconds. With the old budget (5 tries, 0.2–1.6 s apart, about 3 s) every write in
flight when the API server went away failed, and the policy stalled RewriteFailed.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from aks_kms_lab.controlplane import ControlPlane
from aks_kms_lab.seed import seed
from aks_kms_operator.kube import Credentials, KubeClient
from aks_kms_operator.rewrite import RewriteEngine, RewriteOptions, RewriteResult

pytestmark = pytest.mark.integration
NS = "outage-00"
SECRETS = 120
OUTAGE_SECONDS = 10.0


def outage(cp: ControlPlane, seconds: float) -> None:
    cp.stop_replica(0)
    time.sleep(seconds)
    cp.start_replica(0)


def test_rewrite_rides_out_an_api_server_outage(tmp_path: Path) -> None:
    with ControlPlane(tmp_path / "cp") as cp:
        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
        asyncio.run(seed(Credentials.login(), SECRETS, 1, prefix="outage"))

        async def run() -> RewriteResult:
            async with KubeClient(Credentials.login()) as c:
                # one namespace, one list page: only the workers' writes meet the outage
                engine = RewriteEngine(c, "k", namespaces=[NS],
                                       options=RewriteOptions(concurrency=4, max_writes_per_second=8))
                task = asyncio.create_task(engine.run())
                while getattr(engine, "live", None) is None or engine.live.done < 16:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(outage, cp, OUTAGE_SECONDS)
                return await task

        result = asyncio.run(run())
    c = result.counters
    assert result.completed and c.seen == SECRETS
    assert c.failed == 0, c.failures
    assert c.already_current == SECRETS  # nothing to re-encrypt here: the test is about the budget
