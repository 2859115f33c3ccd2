"""Two real operator processes against one "AKS" (issue 9, defect 7): exactly one acts.

Each process has its own ``POD_NAME`` (the Lease holder identity), as two pods of the chart's
Deployment do. The scenarios run in order on one cluster:

1. both start; one holds the Lease and reconciles, the other stands by (its kopf never starts
   watching); kill -9 of the leader mid-rewrite: the standby takes over within about one lease
   duration, finishes the rewrite, and AKS saw exactly one ARM write for the one step;
2. a graceful stop (SIGTERM) releases the Lease: the next standby takes over within a retry
   interval, and it does the next rotation alone;
3. a leader whose Lease is taken from it (someone else's holder written into it) stops at once and
   exits non-zero, saying why.

The in-process tests at the end drive ``LeaderElector`` against the real API server for what a
process test cannot set up: two electors racing, and a leader cut off from the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aks_kms_lab.controlplane import free_port
from aks_kms_lab.encryption import provider_name
from aks_kms_lab.seed import seed
from aks_kms_lab.world import OPERATOR_NAMESPACE
from aks_kms_operator.kube import Credentials, KubeClient
from aks_kms_operator.leader import LeaderElector, LeaderSettings

from ..support import wait_for
from .aks_env import AksEnv

pytestmark = pytest.mark.integration
NAME = "default"
SECRETS = 80
NAMESPACES = 8
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/aks-kms-operator"
SCRIPT = Path(sys.executable).parent / "aks-kms-operator"
LEASE_DURATION = 15.0  # the default; the takeover bound below follows from it


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] (\S+)\s+\[\w+\s*\] (.*)$")
# loggers whose lines mean "this process is handling the policy": kopf's per-object logger, our
# reconciler and rewrite engine, the Azure SDK (only the reconciler calls Azure)
ACTING = ("kopf.objects", "aks_kms_operator.rec", "aks_kms_operator.rew", "azure.")


def stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


class Replica:
    """One operator process with its own POD_NAME and log (kopf's full format: with timestamps)."""

    def __init__(self, aks: AksEnv, name: str) -> None:
        self.name = name
        self.log = aks.root / f"operator-{name}.log"
        self.killed_at: dt.datetime | None = None
        self.healthz = f"http://127.0.0.1:{free_port()}/healthz"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(SCRIPT), "run", f"--liveness={self.healthz}", "--log-format=text"],
                                         stdout=out, stderr=subprocess.STDOUT, env={**aks.env, "POD_NAME": name})

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def liveness(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.healthz, timeout=5) as r:
                return json.loads(r.read()) if r.status == 200 else None
        except OSError:
            return None

    def lines(self) -> list[tuple[dt.datetime, str, str]]:
        return [(stamp(m[1]), m[2], m[3]) for m in map(LOG_LINE.match, self.text().splitlines()) if m]

    def acting_times(self) -> list[dt.datetime]:
        return [t for t, logger, _ in self.lines() if logger.startswith(ACTING)]

    def leading_intervals(self) -> list[tuple[dt.datetime, dt.datetime]]:
        """From each "leading:" line to the next "leadership lost" or "released lease" line (or the
        kill, or now)."""
        intervals, start = [], None
        for t, _, message in self.lines():
            if message.startswith("leading:") and start is None:
                start = t
            elif message.startswith(("leadership lost", "released lease")) and start is not None:
                intervals.append((start, t))
                start = None
        if start is not None:
            intervals.append((start, self.killed_at or dt.datetime.now()))
        return intervals

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                self.killed_at = dt.datetime.now()
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def assert_exclusive(replicas: dict[str, Replica]) -> None:
    """Every acting line of every process falls inside one of its own leading intervals, and no two
    processes' leading intervals overlap: at no moment did two replicas act."""
    everyone = []
    for r in replicas.values():
        intervals = r.leading_intervals()
        outside = [t for t in r.acting_times() if not any(a <= t <= b for a, b in intervals)]
        assert not outside, f"{r.name} acted while not leading, at {outside[:3]}"
        everyone += [(a, b, r.name) for a, b in intervals]
    everyone.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(everyone):
        assert end <= start, f"{first} and {second} led at the same time ({start} < {end})"


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("leader"))
    try:
        os.environ["KUBECONFIG"] = str(env.cp.kubeconfig)
        asyncio.run(seed(Credentials.login(), SECRETS, NAMESPACES))
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="module")
def replicas(aks: AksEnv) -> Iterator[dict[str, Replica]]:
    started: dict[str, Replica] = {}
    yield started
    for replica in started.values():
        if replica.proc.poll() is None:
            replica.stop(signal.SIGKILL)


def lease(aks: AksEnv) -> dict[str, Any]:
    code, body = aks.cp.request("GET", LEASE)
    return body["spec"] if code == 200 else {}


def holder(aks: AksEnv) -> str:
    return str(lease(aks).get("holderIdentity") or "")


def failure_context(aks: AksEnv, replicas: dict[str, Replica]) -> str:
    logs = "\n".join(f"--- {r.name} (exit {r.proc.poll()}) ---\n{r.text()[-2500:]}" for r in replicas.values())
    return f"lease: {lease(aks)}\ncluster PUTs: {aks.cluster_puts()}\n{logs}"


def test_one_replica_acts_and_the_standby_finishes_after_kill_9(aks: AksEnv, replicas: dict[str, Replica]) -> None:
    for name in ("op-a", "op-b"):
        replicas[name] = Replica(aks, name)
    leader_name = wait_for(lambda: holder(aks), timeout=60, what="a lease holder")
    standby_name = "op-b" if leader_name == "op-a" else "op-a"
    leader, standby = replicas[leader_name], replicas[standby_name]
    wait_for(lambda: "standing by" in standby.text(), timeout=30, what=f"{standby_name} standing by")
    # both answer the liveness probe, or the kubelet would restart the standby again and again
    assert standby.liveness() == {"leader": False, "standby": True}
    assert wait_for(leader.liveness, timeout=30, what="the leader's liveness")["leader"] == leader_name

    v1 = aks.world.key_versions[0]
    aks.apply_policy(aks.world.policy(NAME, key_id=v1, rewrite={"concurrency": 1, "maxWritesPerSecond": 5}))

    def mid_rewrite(s: dict[str, Any]) -> bool:
        rw = s.get("rewrite") or {}
        done, total = int(rw.get("namespacesDone") or 0), int(rw.get("namespacesTotal") or 0)
        return rw.get("targetKeyId") == v1 and str(rw.get("lastNamespace") or "") >= "team-00" and done <= total - 3

    try:
        aks.wait_status(NAME, mid_rewrite, timeout=180, what="rewrite half done")
        assert_exclusive(replicas)
        # Leadership may have moved already: the lab's single API server restarts to load the key and
        # can be gone for longer than the renew deadline. Kill whoever leads now.
        leader_name = holder(aks)
        leader, standby = replicas[leader_name], replicas["op-b" if leader_name == "op-a" else "op-a"]
        standby_name = standby.name
        assert leader.acting_times(), f"{leader_name} leads but never acted"
        assert len(aks.cluster_puts()) == 1

        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: holder(aks) == standby_name, timeout=3 * LEASE_DURATION, interval=0.2,
                 what=f"{standby_name} taking the lease over")
        takeover = time.monotonic() - killed
        print(f"takeover after kill -9: {takeover:.1f}s (lease duration {LEASE_DURATION:g}s)")
        # a standby must wait out a whole lease duration of silence (minus the up to 5 s since the
        # killed leader's last renewal) before it takes over
        assert takeover >= LEASE_DURATION - 5.5, takeover
        status = aks.wait_ready(NAME, timeout=240)
        assert_exclusive(replicas)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{failure_context(aks, replicas)}") from None
    assert standby.acting_times()[-1] > leader.killed_at  # type: ignore[operator]
    assert status["encryptedWith"] == v1
    assert len(aks.cluster_puts()) == 1, aks.cluster_puts()  # the enable step, written once
    assert aks.stored_under() == {provider_name(v1): SECRETS}
    assert lease(aks)["leaseTransitions"] >= 1


def test_graceful_stop_hands_over_at_once(aks: AksEnv, replicas: dict[str, Replica]) -> None:
    current_name = holder(aks)
    current = replicas[current_name]
    replicas["op-c"] = newcomer = Replica(aks, "op-c")
    wait_for(lambda: "standing by" in newcomer.text(), timeout=30, what="op-c standing by")
    transitions = lease(aks)["leaseTransitions"]

    assert current.stop(signal.SIGTERM) == 0, current.text()[-3000:]
    stopped = time.monotonic()
    try:
        wait_for(lambda: holder(aks) == "op-c", timeout=3 * LEASE_DURATION, interval=0.2,
                 what="op-c taking the released lease")
        handover = time.monotonic() - stopped
        print(f"handover after a graceful stop: {handover:.1f}s")
        assert "released lease" in current.text()
        assert lease(aks)["leaseTransitions"] == transitions + 1
        # the newcomer acts alone: one rotation, one ARM write
        v2 = aks.world.key_versions[1]
        puts = len(aks.cluster_puts())
        aks.patch_spec(NAME, {"kms": {"keyId": v2}, "rewrite": {"concurrency": 8, "maxWritesPerSecond": 0}})
        status = aks.wait_ready(NAME, timeout=240)
        assert_exclusive(replicas)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{failure_context(aks, replicas)}") from None
    assert status["encryptedWith"] == v2
    assert len(aks.cluster_puts()) == puts + 1
    assert aks.stored_under() == {provider_name(v2): SECRETS}


def test_leader_whose_lease_is_taken_stops_at_once_and_rejoins_as_standby(
        aks: AksEnv, replicas: dict[str, Replica]) -> None:
    """Someone else's name in the Lease: the leader stops acting at once (re-executes itself) and
    stands by; once the intruder stays silent for a lease duration, a replica takes over again."""
    name = holder(aks)
    current = replicas[name]
    pid = current.proc.pid
    losses = current.text().count("leadership lost")  # the lab's API server restarts may have caused some
    code, body = aks.cp.request("GET", LEASE)
    assert code == 200, body
    body["spec"]["holderIdentity"] = "intruder"
    code, out = aks.cp.request("PUT", LEASE, body)
    assert code == 200, out
    try:
        wait_for(lambda: current.text().count("leadership lost, restarting as a standby") > losses, timeout=30,
                 what=f"{name} noticing the lost lease")
        wait_for(lambda: "is held by intruder" in current.text(), timeout=60, what=f"{name} standing by again")
        assert current.proc.poll() is None and current.proc.pid == pid  # the same process, re-executed
        assert "held by intruder" in current.text().rsplit("leadership lost", 1)[1].splitlines()[0]
        wait_for(lambda: holder(aks) in replicas, timeout=3 * LEASE_DURATION, what="a replica leading again")
        assert_exclusive(replicas)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{failure_context(aks, replicas)}") from None


# ------------------------------------------------------------------------ LeaderElector, in process

def settings(name: str, lease_name: str) -> LeaderSettings:
    return LeaderSettings(namespace=OPERATOR_NAMESPACE, lease_name=lease_name, identity=name,
                          lease_duration=6, renew_interval=1, renew_deadline=4, retry_interval=0.5)


def test_racing_electors_get_one_lease(aks: AksEnv) -> None:
    """Five electors try at the same moment, repeatedly: exactly one ever holds it."""
    async def scenario() -> None:
        async with KubeClient(Credentials.login()) as kube:
            electors = [LeaderElector(kube, settings(f"racer-{i}", "race")) for i in range(5)]
            for _ in range(3):
                won = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
                assert sum(won) == 1, won
            winner = electors[won.index(True)]
            _, body = aks.cp.request("GET", LEASE.replace("aks-kms-operator", "race"))
            assert body["spec"]["holderIdentity"] == winner.settings.identity

    asyncio.run(scenario())


class Blackhole:
    """A TCP forwarder to the API server that can be told to stop forwarding (a partitioned node)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.cut = False
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                if self.cut:
                    await asyncio.sleep(3600)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            await asyncio.sleep(3600)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self.server.sockets[0].getsockname()[1]
        finally:
            self.server.close()


def test_leader_cut_off_from_the_api_server_stops_before_the_lease_expires(aks: AksEnv) -> None:
    """No successful renewal for ``renew_deadline``: on_lost is called, before ``lease_duration``
    has passed since the last renewal (when a standby may take over)."""
    lost: list[tuple[float, str]] = []

    async def scenario() -> None:
        admin = Credentials.login()
        port = int(admin.server.rsplit(":", 1)[1])
        hole = Blackhole(port)
        async with hole.running() as proxy_port:
            via_proxy = Credentials(server=f"https://127.0.0.1:{proxy_port}", ssl=admin.ssl, headers=admin.headers)
            async with KubeClient(via_proxy, timeout=2) as kube:
                elector = LeaderElector(kube, settings("partitioned", "partition"),
                                        on_lost=lambda reason: lost.append((time.monotonic(), reason)))
                await elector.acquire()
                task = elector.start_renewing()
                await asyncio.sleep(2.5)  # a couple of renewals go through
                assert not lost
                last_ok = elector._renewed_at
                hole.cut = True
                await asyncio.wait_for(task, timeout=10)
                assert lost, "on_lost was not called"
                stopped_after = lost[0][0] - last_ok
                assert stopped_after < elector.settings.lease_duration, stopped_after
                assert "no successful renewal" in lost[0][1]
                assert not elector.leading

    asyncio.run(scenario())
