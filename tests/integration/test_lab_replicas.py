"""The lab's AKS-shaped control plane: several kube-apiserver replicas behind a TCP balancer.

What issue 9 needs the test bed to show, each against the real kube-apiserver and etcd:

* the balancer spreads new connections over the replicas and pins a kept-alive connection to one;
* each replica has its own apiserver identity Lease;
* a KMS change through the fake ARM rolls the replicas one at a time, each back in rotation only
  once ready;
* with the last replica lagging (the ARM operation ends before it reloads), no-op patches sent over
  fresh connections leave some Secrets under the OLD key in etcd: the lagging replica answers
  "unchanged" for them. That is the condition the issue reports; V2 -> V3 then makes exactly those
  Secrets unreadable, and the lab's verifier counts them instead of crashing.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError

from aks_kms_lab.controlplane import ControlPlane
from aks_kms_lab.encryption import provider_name
from aks_kms_lab.processes import pid_alive
from aks_kms_lab.verify import check_digests, read_through_api, secret_names, snapshot_digests

from ..support import wait_for
from .aks_env import AksEnv

pytestmark = pytest.mark.integration

NAMESPACE = "repro"
SECRETS = 300


# ------------------------------------------------------------------------------------------ balancer


@pytest.fixture(scope="module")
def cp2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("cp2"), apiservers=2) as cp:
        yield cp


def connect(cp: ControlPlane, server: str | None = None) -> http.client.HTTPSConnection:
    host, port = (server or cp.server).removeprefix("https://").split(":")
    return http.client.HTTPSConnection(host, int(port), context=cp.ssl_context(), timeout=10)


def get(conn: http.client.HTTPSConnection, path: str = "/readyz") -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def replica_of(conn: http.client.HTTPSConnection) -> str:
    """Which replica a connection landed on: each replica serves its own certificate (TLS ends there)."""
    assert conn.sock is not None
    cert = conn.sock.getpeercert()  # type: ignore[attr-defined]
    return dict(x[0] for x in cert["subject"])["commonName"]


def test_balancer_spreads_new_connections_and_pins_a_kept_alive_one(cp2: ControlPlane) -> None:
    assert cp2.server not in cp2.replica_servers and len(cp2.replica_servers) == 2
    kept = connect(cp2)
    assert get(kept) == 200
    pinned = replica_of(kept)

    fresh = []
    for _ in range(16):
        conn = connect(cp2)
        assert get(conn) == 200
        fresh.append(replica_of(conn))
        conn.close()
        assert get(kept) == 200 and replica_of(kept) == pinned  # still the same connection, same replica
    assert set(fresh) == {"kube-apiserver-0", "kube-apiserver-1"}  # new connections are spread (by hash)

    # The kept-alive connection lives and dies with its replica; new connections go to the other one.
    index = int(pinned.rsplit("-", 1)[1])
    other = 1 - index
    cp2.stop_replica(other)
    try:
        assert get(kept) == 200
    finally:
        cp2.start_replica(other)
    cp2.stop_replica(index)
    try:
        with pytest.raises((OSError, http.client.HTTPException)):
            get(kept)
        for _ in range(3):
            conn = connect(cp2)
            assert get(conn) == 200 and replica_of(conn) == f"kube-apiserver-{other}"
            conn.close()
    finally:
        cp2.start_replica(index)
    kept.close()
    stats = cp2.balancer.stats if cp2.balancer else []
    assert all(s.accepted > 0 for s in stats)


def test_each_replica_has_its_own_identity_lease(cp2: ControlPlane) -> None:
    if not cp2.distinct_identities:
        pytest.fail("replicas could not be given host names of their own (needs root for a UTS namespace)")
    # Leases of replicas restarted above under the same host name are the same Lease: still two.
    leases = wait_for(lambda: (names := cp2.identity_leases()) and len(names) == 2 and names, timeout=60,
                      what="two identity leases")
    assert all(name.startswith("apiserver-") for name in leases)


def test_restart_replica_keeps_the_api_served_and_stop_leaves_nothing(tmp_path: Path) -> None:
    cp = ControlPlane(tmp_path / "cp", apiservers=2).start()
    try:
        pids = cp.pids()
        assert len(pids) == 3  # etcd + 2 replicas
        served: list[int] = []
        stop = threading.Event()

        def hammer() -> None:  # fresh connections all through the roll
            while not stop.is_set():
                try:
                    served.append(cp.request("GET", "/api/v1/namespaces/default", timeout=5)[0])
                except OSError:
                    served.append(0)
                time.sleep(0.02)

        t = threading.Thread(target=hammer)
        t.start()
        try:
            cp.restart_apiserver()
        finally:
            stop.set()
            t.join()
        assert served and all(code == 200 for code in served), sorted(set(served))
        assert set(cp.pids()) & set(pids) == {cp.etcd.pid if cp.etcd else 0}  # both replicas are new processes
        balancer_threads = cp.balancer.threads() if cp.balancer else []
        assert balancer_threads
        everything = cp.pids()
    finally:
        cp.stop()
    assert not any(pid_alive(p) for p in everything)
    assert not any(t.is_alive() for t in balancer_threads)


# ------------------------------------------------------------------------------------------ AKS-sim rolls


@pytest.fixture(scope="module")
def aks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AksEnv]:
    env = AksEnv(tmp_path_factory.mktemp("aks-replicas"), apiservers=2)
    try:
        yield env
    finally:
        env.stop()


def create_secrets(aks: AksEnv, n: int) -> None:
    aks.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    for i in range(n):
        code, out = aks.cp.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s-{i:04d}"},
            "stringData": {"value": f"synthetic-{i}"}})
        assert code == 201, out


def test_kms_change_rolls_replicas_one_at_a_time(aks: AksEnv) -> None:
    v1 = aks.world.key_versions[0]
    aks.kms.roll_interval = 0.5
    assert aks.cp.balancer is not None
    out_together: list[set[int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out_together.append({i for i in range(2) if not aks.cp.balancer.in_rotation(i)})  # type: ignore[union-attr]
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        aks.set_kms(v1)  # returns when the ARM operation has succeeded
    finally:
        stop.set()
        t.join()
        aks.kms.roll_interval = 0
    assert not aks.kms.rolling
    assert {0} in out_together and {1} in out_together  # each replica was out of rotation once ...
    assert {0, 1} not in out_together  # ... never both at the same time
    assert [s.current for s in aks.kms.replica_slots] == [v1, v1]
    for index in range(2):  # each replica has its own copy of the configuration, with V1 first
        own = aks.cp.replica_config_path(index).read_text()
        assert aks.cp.replica_configs[index] == aks.cp.replica_config_path(index)
        assert own.index(provider_name(v1)) < own.index("identity")


def test_lagging_replica_answers_unchanged_and_strands_secrets_under_the_old_key(aks: AksEnv) -> None:
    v1, v2, v3 = aks.world.key_versions[:3]
    if aks.kms.slots.current != v1:
        aks.set_kms(v1)
    create_secrets(aks, SECRETS)
    assert aks.stored_under() == {provider_name(v1): SECRETS}
    seeded = snapshot_digests(aks.cp, namespaces=[NAMESPACE])

    # Rotate V1 -> V2; the operation ends once replica 0 runs V2, replica 1 keeps V1 for 30 s more.
    aks.kms.lag_last_seconds = 30
    try:
        aks.set_kms(v2)
    finally:
        aks.kms.lag_last_seconds = None
    assert aks.kms.rolling
    assert [s.current for s in aks.kms.replica_slots] == [v2, v1]

    # What a rewrite does, naively: a no-op merge patch of every Secret, each on a fresh connection.
    code, listed = aks.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets")
    assert code == 200
    versions = {item["metadata"]["name"]: item["metadata"]["resourceVersion"] for item in listed["items"]}
    unchanged = []
    for i in range(SECRETS):
        name = f"s-{i:04d}"
        code, after = aks.cp.request("PATCH", f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}", {"metadata": {}},
                                     content_type="application/merge-patch+json")
        assert code == 200, after
        if after["metadata"]["resourceVersion"] == versions[name]:
            unchanged.append(i)

    stored = aks.stored_under()
    # The lagging replica answered "unchanged" for the patches it served; etcd says those are still V1.
    assert 0 < len(unchanged) < SECRETS
    assert stored == {provider_name(v1): len(unchanged), provider_name(v2): SECRETS - len(unchanged)}
    assert aks.kms.rolling  # all of this happened inside the lag: AKS already reported success

    # The lagging replica cannot read what the others wrote under V2 (exactly AKS's behaviour).
    written_v2 = next(i for i in range(SECRETS) if i not in unchanged)
    code, body = aks.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/s-{written_v2:04d}",
                                server=aks.cp.replica_servers[1])
    assert code == 500, body

    # Let AKS move on: the lagging roll is superseded by V2 -> V3, which drops V1 everywhere. The
    # replicas come back live but never ready (their Secret watch cache cannot list what they cannot
    # decrypt), so the operation ends Failed, the change applied: what the issue saw on AKS.
    aks.kms.ready_timeout = 15
    with pytest.raises(HttpResponseError) as failed:
        aks.set_kms(v3)
    assert "live but not ready" in str(failed.value)
    aks.kms.wait_settled(60)
    assert [s.loaded() for s in aks.kms.replica_slots] == [[v3, v2], [v3, v2]]

    # The stranded Secrets are now unreadable; the verifier counts and names them, it does not raise.
    read = read_through_api(aks.cp, secret_names(aks.cp.etcd_url))
    assert sorted(read.unreadable) == [f"{NAMESPACE}/s-{i:04d}" for i in unchanged]
    assert all("HTTP 500" in why for why in read.unreadable.values())
    report = check_digests(aks.cp, seeded, namespaces=[NAMESPACE])
    assert not report.ok
    assert report.unreadable == sorted(read.unreadable)
    assert report.checked == SECRETS - len(unchanged) and not report.mismatched and not report.missing
