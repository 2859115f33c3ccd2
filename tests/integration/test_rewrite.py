"""The rewrite engine against the real kube-apiserver and etcd, with a write key that can be switched.

The module runs its own control plane (it needs an encryption config): two aescbc keys, config
"key1" = [aescbc key1, key2, identity] and config "key2" = [aescbc key2, key1, identity]; switching
restarts the API server with the other config. Staleness is checked in etcd directly (the value
prefix ``k8s:enc:aescbc:v1:<key>:``). The engine talks through an instrumented ``KubeClient``
that records every raw response body, so the tests can prove no Secret data ever reached it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from aks_kms_lab.controlplane import ControlPlane
from aks_kms_operator.kube import Credentials, KubeClient, KubeError
from aks_kms_operator.rewrite import (
    KEY_SWITCH_TIMEOUT,
    KEY_SWITCHED,
    Canary,
    MemoryStore,
    PolicyStatusStore,
    RewriteEngine,
    RewriteOptions,
    RunState,
    SecretRef,
    ensure_canary,
    fresh_client,
    wait_for_key_switch,
)
from aks_kms_operator.rewrite.engine import finished_before

from ..support import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "clusterencryptionpolicies.yaml"
KEYS = {"key1": b"1" * 32, "key2": b"2" * 32}
OTHER = {"key1": "key2", "key2": "key1"}


def encryption_config(path: Path, first: str) -> Path:
    keys = [{"name": name, "secret": base64.b64encode(KEYS[name]).decode()} for name in (first, OTHER[first])]
    path.write_text(yaml.safe_dump({
        "apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": [{"aescbc": {"keys": keys}}, {"identity": {}}]}],
    }))
    return path


class Lab:
    """The module's control plane and the key it writes with."""

    def __init__(self, workdir: Path) -> None:
        self.configs = {k: encryption_config(workdir / f"encryption-{k}.yaml", k) for k in KEYS}
        self.write_key = "key1"
        self.cp = ControlPlane(workdir / "cp", encryption_config=self.configs["key1"])

    def switch_key(self) -> str:
        self.write_key = OTHER[self.write_key]
        self.cp.restart_apiserver(self.configs[self.write_key])
        return self.write_key

    def credentials(self) -> Credentials:
        return Credentials(server=self.cp.server, ssl=self.cp.ssl_context(), headers={})

    def etcd_prefix(self, ns: str, name: str) -> str | None:
        """``k8s:enc:aescbc:v1:<key>:`` of the raw etcd value (None if the key is absent)."""
        key = base64.b64encode(f"/registry/secrets/{ns}/{name}".encode()).decode()
        req = urllib.request.Request(f"{self.cp.etcd_url}/v3/kv/range", data=json.dumps({"key": key}).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            kvs = json.loads(r.read()).get("kvs") or []
        if not kvs:
            return None
        raw = base64.b64decode(kvs[0]["value"])
        parts = raw.split(b":", 5)
        return b":".join(parts[:5]).decode() + ":"

    def get(self, ns: str, name: str) -> tuple[int, Any]:
        return self.cp.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("rewrite"))
    with lab.cp:
        lab.cp.apply(yaml.safe_load(CRD.read_text()))
        wait_for(lambda: lab.cp.request("GET", "/apis/aks-kms.dev/v1alpha1")[0] == 200, what="CRD discovery")
        yield lab


class Recorder:
    """An aiohttp TraceConfig that keeps every raw response body and every write's namespace."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.patches: Counter[str] = Counter()
        self.trace = aiohttp.TraceConfig()
        self.trace.on_response_chunk_received.append(self._chunk)
        self.trace.on_request_start.append(self._start)

    async def _chunk(self, session: Any, ctx: Any, params: aiohttp.TraceResponseChunkReceivedParams) -> None:
        self.bodies.append(bytes(params.chunk))

    async def _start(self, session: Any, ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        parts = params.url.path.split("/")
        if params.method == "PATCH" and "secrets" in parts:
            self.patches[parts[parts.index("namespaces") + 1]] += 1

    def assert_no_secret_data(self, values: list[bytes]) -> None:
        assert self.bodies, "nothing recorded"
        blob = b"\n".join(self.bodies)
        assert b'"data"' not in blob and b'"stringData"' not in blob
        for value in values:
            assert value not in blob
            assert base64.b64encode(value) not in blob


def client(lab: Lab, recorder: Recorder | None = None) -> KubeClient:
    return KubeClient(lab.credentials(), trace_configs=[recorder.trace] if recorder else ())


def secret_value(ns: str, name: str) -> bytes:
    return f"s3cr3t-{ns}-{name}-value".encode()


async def create_namespace_with_secrets(lab: Lab, ns: str, count: int, *, rich: bool = True) -> list[str]:
    """``count`` Secrets with data, labels, annotations, ownerReferences and two field managers;
    with ``rich`` also an immutable one, a TLS one and one with stringData."""
    lab.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    names = [f"s-{i:04d}" for i in range(count)]
    bodies = []
    for name in names:
        bodies.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "labels": {"app": "demo", "idx": name},
                         "annotations": {"note": f"annotation of {name}"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                              "uid": "11111111-2222-3333-4444-555555555555"}]},
            "data": {"password": base64.b64encode(secret_value(ns, name)).decode()},
        })
    if rich:
        names += ["immutable", "tls", "string-data"]
        bodies += [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "immutable"}, "immutable": True,
             "data": {"k": base64.b64encode(secret_value(ns, "immutable")).decode()}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"}, "type": "kubernetes.io/tls",
             "data": {"tls.crt": base64.b64encode(secret_value(ns, "tls")).decode(),
                      "tls.key": base64.b64encode(secret_value(ns, "tls-key")).decode()}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "string-data"},
             "stringData": {"token": secret_value(ns, "string-data").decode()}},
        ]
    async with client(lab) as c:
        sem = asyncio.Semaphore(32)

        async def create(body: dict[str, Any]) -> None:
            async with sem:
                name = body["metadata"]["name"]
                await c.request("POST", f"/api/v1/namespaces/{ns}/secrets", body=body,
                                params={"fieldManager": "creator"})
                if rich and name.startswith("s-"):  # a second field manager, so managedFields has two entries
                    await c.request("PATCH", f"/api/v1/namespaces/{ns}/secrets/{name}",
                                    body={"metadata": {"labels": {"touched": "yes"}}},
                                    content_type="application/merge-patch+json", params={"fieldManager": "toucher"})

        await asyncio.gather(*(create(b) for b in bodies))
    return names


def snapshot(lab: Lab, ns: str, names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        status, body = lab.get(ns, name)
        assert status == 200, body
        out[name] = body
    return out


def without_rv(obj: dict[str, Any]) -> str:
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return json.dumps({**obj, "metadata": meta}, sort_keys=True)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def rewrite(lab: Lab, namespaces: list[str], recorder: Recorder | None = None, **kwargs: Any):
    options = kwargs.pop("options", None) or RewriteOptions(concurrency=4, page_size=3)
    async with client(lab, recorder) as c:
        return await RewriteEngine(c, lab.write_key, options=options, namespaces=namespaces, **kwargs).run()


# ---------------------------------------------------------------------------------------------- tests


def test_stale_secrets_are_rewritten_once_and_stay_byte_identical(lab: Lab) -> None:
    namespaces = ["rw-once-a", "rw-once-b", "rw-once-empty"]
    names = {ns: run(create_namespace_with_secrets(lab, ns, 7)) for ns in namespaces[:2]}
    lab.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rw-once-empty"}})
    old_key = lab.write_key
    before = {ns: snapshot(lab, ns, n) for ns, n in names.items()}
    for ns, n in names.items():
        assert {lab.etcd_prefix(ns, x) for x in n} == {f"k8s:enc:aescbc:v1:{old_key}:"}

    new_key = lab.switch_key()
    recorder = Recorder()
    result = run(rewrite(lab, namespaces, recorder))

    total = sum(len(n) for n in names.values())
    assert result.state is RunState.COMPLETED
    c = result.counters
    assert (c.seen, c.reencrypted, c.already_current, c.skipped, c.failed) == (total, total, 0, 0, 0), c
    assert result.namespaces_done == result.namespaces_total == 3
    afters = {}
    for ns, n in names.items():
        assert {lab.etcd_prefix(ns, x) for x in n} == {f"k8s:enc:aescbc:v1:{new_key}:"}
        after = afters[ns] = snapshot(lab, ns, n)
        for name in n:
            assert after[name]["metadata"]["resourceVersion"] != before[ns][name]["metadata"]["resourceVersion"]
            # content, type, labels, annotations, ownerReferences, managedFields: all identical
            assert without_rv(after[name]) == without_rv(before[ns][name]), name
        assert after["immutable"]["immutable"] is True
        assert len(after["s-0000"]["metadata"]["managedFields"]) == 2

    # the engine never received Secret data (lists and writes are metadata only)
    recorder.assert_no_secret_data([secret_value(ns, x) for ns, n in names.items() for x in [*n, "tls-key"]])
    assert recorder.patches == Counter({"rw-once-a": total // 2, "rw-once-b": total // 2})

    # a second pass rewrites nothing: every resourceVersion stays put
    again = run(rewrite(lab, namespaces))
    c = again.counters
    assert (c.seen, c.reencrypted, c.already_current, c.skipped, c.failed) == (total, 0, total, 0, 0), c
    for ns, n in names.items():
        final = snapshot(lab, ns, n)
        assert all(json.dumps(final[x], sort_keys=True) == json.dumps(afters[ns][x], sort_keys=True) for x in n)


def test_deleted_or_changed_between_list_and_write(lab: Lab) -> None:
    ns = "rw-race"
    names = run(create_namespace_with_secrets(lab, ns, 6, rich=False))
    new_key = lab.switch_key()

    def before_write(ref: SecretRef) -> None:  # runs between the list and the write
        if ref.name == "s-0001":
            assert lab.cp.request("DELETE", f"/api/v1/namespaces/{ns}/secrets/s-0001")[0] == 200
        elif ref.name == "s-0002":
            status, _ = lab.cp.request("PATCH", f"/api/v1/namespaces/{ns}/secrets/s-0002",
                                       {"metadata": {"labels": {"changed": "meanwhile"}}},
                                       content_type="application/merge-patch+json")
            assert status == 200
        elif ref.name == "s-0003":  # deleted and re-created under the same name
            assert lab.cp.request("DELETE", f"/api/v1/namespaces/{ns}/secrets/s-0003")[0] == 200
            status, _ = lab.cp.request("POST", f"/api/v1/namespaces/{ns}/secrets",
                                       {"metadata": {"name": "s-0003", "labels": {"generation": "two"}}})
            assert status == 201

    result = run(rewrite(lab, [ns], before_write=before_write))
    c = result.counters
    assert (c.seen, c.reencrypted, c.skipped, c.failed) == (len(names), len(names) - 3, 3, 0), c
    assert lab.get(ns, "s-0001")[0] == 404  # not re-created
    assert lab.get(ns, "s-0002")[1]["metadata"]["labels"]["changed"] == "meanwhile"  # the change is kept
    assert lab.get(ns, "s-0003")[1]["metadata"]["labels"] == {"generation": "two"}
    # the racing writes stored those Secrets under the new key anyway
    assert {lab.etcd_prefix(ns, n) for n in names if n != "s-0001"} == {f"k8s:enc:aescbc:v1:{new_key}:"}


def test_resume_skips_finished_namespaces(lab: Lab) -> None:
    namespaces = [f"rw-resume-{i}" for i in range(5)]
    for ns in namespaces:
        run(create_namespace_with_secrets(lab, ns, 4, rich=False))
    policy = yaml.safe_load((REPO / "manifests" / "examples" / "enable-public.yaml").read_text())
    policy["metadata"]["name"] = "rewrite-resume"
    lab.cp.apply(policy)
    lab.switch_key()
    options = RewriteOptions(concurrency=4, page_size=2, checkpoint_interval=0.05)
    # the first run asks the predicate before every page (interval 0) and lists little ahead
    stepwise = dataclasses.replace(options, list_concurrency=1, pause_check_interval=0, queue_size=2)

    # first run: pause once two namespaces are written (the predicate runs before every page)
    async def first() -> Any:
        async with client(lab, rec1) as c:
            store = PolicyStatusStore(c, "rewrite-resume")

            def paused() -> bool:
                return sum(1 for ns in namespaces if rec1.patches[ns] == 4) >= 2

            return await RewriteEngine(c, lab.write_key, options=stepwise, namespaces=namespaces,
                                       checkpoint=store, paused=paused).run()

    rec1 = Recorder()
    paused = run(first())
    assert paused.state is RunState.PAUSED
    status = lab.cp.request("GET", "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/rewrite-resume")[1]
    saved = status["status"]["rewrite"]
    assert saved["targetKeyId"] == lab.write_key and not saved["completedAt"]
    finished = [ns for ns in namespaces if ns <= saved["lastNamespace"]]
    assert len(finished) >= 2, saved
    assert saved["seen"] == 4 * saved["namespacesDone"] == 4 * len(finished)  # exact at a pause

    # second run (a fresh engine, as after a restart): resumes after lastNamespace
    async def second() -> Any:
        async with client(lab, rec2) as c:
            return await RewriteEngine(c, lab.write_key, options=options, namespaces=namespaces,
                                       checkpoint=PolicyStatusStore(c, "rewrite-resume")).run()

    rec2 = Recorder()
    done = run(second())
    assert done.state is RunState.COMPLETED and done.resumed
    assert not any(rec2.patches[ns] for ns in finished), rec2.patches
    assert all(rec2.patches[ns] == 4 for ns in namespaces if ns not in finished)
    c = done.counters
    assert (c.seen, c.failed, c.skipped) == (20, 0, 0)
    assert c.reencrypted + c.already_current == 20 and c.reencrypted >= 4 * (5 - len(finished))
    saved = lab.cp.request("GET", "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/rewrite-resume")[1][
        "status"]["rewrite"]
    assert saved["completedAt"] and saved["namespacesDone"] == 5 and saved["lastNamespace"] == "rw-resume-4"

    # the same key again: already complete, nothing written; another key: starts over
    rec3 = Recorder()
    again = run(_run_with(lab, rec3, namespaces, lab.write_key, options))
    assert again.state is RunState.COMPLETED and not rec3.patches
    rec4 = Recorder()
    other = run(_run_with(lab, rec4, namespaces, "some-other-key", options))
    assert other.state is RunState.COMPLETED and not other.resumed
    assert all(rec4.patches[ns] == 4 for ns in namespaces)
    assert other.counters.already_current == 20


async def _run_with(lab: Lab, rec: Recorder, namespaces: list[str], key: str, options: RewriteOptions) -> Any:
    async with client(lab, rec) as c:
        return await RewriteEngine(c, key, options=options, namespaces=namespaces,
                                   checkpoint=PolicyStatusStore(c, "rewrite-resume")).run()


def test_resume_after_cancellation(lab: Lab) -> None:
    """A run cancelled mid-way (as close to kill -9 as one process gets) resumes from its last save."""
    namespaces = [f"rw-cancel-{i}" for i in range(4)]
    for ns in namespaces:
        run(create_namespace_with_secrets(lab, ns, 3, rich=False))
    lab.switch_key()
    store = MemoryStore()
    options = RewriteOptions(concurrency=2, page_size=1, checkpoint_interval=0.05)
    rec1 = Recorder()

    async def first() -> None:
        async with client(lab, rec1) as c:
            task = asyncio.current_task()
            assert task is not None

            async def before_write(ref: SecretRef) -> None:
                if ref.namespace == "rw-cancel-2":
                    await asyncio.sleep(0.5)  # let the saver see rw-cancel-0 and 1 finished
                    task.cancel()
                    await asyncio.sleep(10)

            await RewriteEngine(c, lab.write_key, options=options, namespaces=namespaces, checkpoint=store,
                                before_write=before_write).run()

    with pytest.raises(asyncio.CancelledError):
        run(first())
    # rw-cancel-0 surely finished; rw-cancel-1 too unless its writes queued behind rw-cancel-2's (pipelined)
    assert store.checkpoint is not None and store.checkpoint.last_namespace in ("rw-cancel-0", "rw-cancel-1")
    last = store.checkpoint.last_namespace
    rec2 = Recorder()

    async def second() -> Any:
        async with client(lab, rec2) as c:
            return await RewriteEngine(c, lab.write_key, options=options, namespaces=namespaces,
                                       checkpoint=store).run()

    done = run(second())
    assert done.completed and done.resumed
    assert rec2.patches == Counter({ns: 3 for ns in namespaces if ns > last})
    assert {lab.etcd_prefix(ns, f"s-{i:04d}") for ns in namespaces for i in range(3)} == {
        f"k8s:enc:aescbc:v1:{lab.write_key}:"}


KILL_NAMESPACES = 40
KILL_SECRETS = 3
ENGINE_CHILD = """
import asyncio, sys
from aks_kms_operator.kube import Credentials, KubeClient
from aks_kms_operator.rewrite import PolicyStatusStore, RewriteEngine, RewriteOptions

async def main() -> None:
    async with KubeClient(Credentials.login()) as c:
        options = RewriteOptions(concurrency=4, page_size=10, max_writes_per_second=40, checkpoint_interval=0.1)
        await RewriteEngine(c, sys.argv[1], options=options, checkpoint=PolicyStatusStore(c, sys.argv[2])).run()

asyncio.run(main())
"""


def test_kill_9_mid_run_and_resume_reencrypt_every_secret_of_many_small_namespaces(lab: Lab) -> None:
    """The engine as the operator runs it (every namespace: one cluster-wide list, pipelined), in its
    own process over 40 namespaces of 3 Secrets, is killed with SIGKILL mid-run. Every namespace up to
    the saved ``lastNamespace`` is already entirely under the new key (the checkpoint is a prefix of
    finished namespaces), and a resumed run writes exactly the namespaces after it, leaving every
    Secret under the new key."""
    namespaces = [f"rw-kill-{i:02d}" for i in range(KILL_NAMESPACES)]

    async def create_all() -> None:
        sem = asyncio.Semaphore(8)

        async def one(ns: str) -> None:
            async with sem:
                await create_namespace_with_secrets(lab, ns, KILL_SECRETS, rich=False)

        await asyncio.gather(*(one(ns) for ns in namespaces))

    run(create_all())
    policy = yaml.safe_load((REPO / "manifests" / "examples" / "enable-public.yaml").read_text())
    policy["metadata"]["name"] = "rewrite-kill"
    lab.cp.apply(policy)
    new_key = lab.switch_key()
    names = [f"s-{i:04d}" for i in range(KILL_SECRETS)]
    policy_path = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies/rewrite-kill"

    def saved() -> dict[str, Any]:
        return (lab.cp.request("GET", policy_path)[1].get("status") or {}).get("rewrite") or {}

    def finished(status: dict[str, Any]) -> list[str]:
        return [ns for ns in namespaces if finished_before(ns, status.get("lastNamespace") or "")]

    child = subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, new_key, "rewrite-kill"],
                             env={**os.environ, "KUBECONFIG": str(lab.cp.kubeconfig)}, cwd=REPO)
    try:
        # 40 writes a second: kill once a third of these namespaces are checkpointed
        wait_for(lambda: len(finished(saved())) >= KILL_NAMESPACES // 3 or child.poll() is not None,
                 timeout=60, interval=0.1, what="a third of the namespaces checkpointed")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    at_kill = saved()
    assert not at_kill.get("completedAt"), "the run ended before the kill: nothing was tested"
    done_at_kill = finished(at_kill)
    assert KILL_NAMESPACES // 3 <= len(done_at_kill) < KILL_NAMESPACES, at_kill
    stale_in_prefix = [f"{ns}/{n}" for ns in done_at_kill for n in names
                       if lab.etcd_prefix(ns, n) != f"k8s:enc:aescbc:v1:{new_key}:"]
    assert not stale_in_prefix, "a namespace in the checkpointed prefix was not finished"
    assert any(lab.etcd_prefix(ns, n) != f"k8s:enc:aescbc:v1:{new_key}:" for ns in namespaces for n in names), (
        "everything was re-encrypted before the kill: the resume is not tested")

    rec = Recorder()

    async def resume() -> Any:
        async with client(lab, rec) as c:
            return await RewriteEngine(c, new_key, options=RewriteOptions(concurrency=4),
                                       checkpoint=PolicyStatusStore(c, "rewrite-kill")).run()

    done = run(resume())
    assert done.completed and done.resumed and done.counters.failed == 0
    assert not any(rec.patches[ns] for ns in done_at_kill), rec.patches
    assert all(rec.patches[ns] == KILL_SECRETS for ns in namespaces if ns not in done_at_kill), rec.patches
    assert {lab.etcd_prefix(ns, n) for ns in namespaces for n in names} == {f"k8s:enc:aescbc:v1:{new_key}:"}


class ThrottlingClient(KubeClient):
    """Answers the first ``n`` Secret writes with 429 + Retry-After, as API Priority and Fairness does."""

    def __init__(self, *args: Any, n: int, retry_after: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.left = n
        self.retry_after = retry_after
        self.throttled_at: list[float] = []
        self.writes_at: list[float] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method == "PATCH" and "/secrets/" in path:
            if self.left > 0:
                self.left -= 1
                self.throttled_at.append(time.monotonic())
                raise KubeError(429, "TooManyRequests", "Too many requests, please try again later.",
                                retry_after=self.retry_after)
            self.writes_at.append(time.monotonic())
        return await super().request(method, path, **kwargs)


def test_429_backs_off_for_everyone_and_then_succeeds(lab: Lab) -> None:
    ns = "rw-throttle"
    names = run(create_namespace_with_secrets(lab, ns, 10, rich=False))
    lab.switch_key()

    async def go() -> tuple[Any, ThrottlingClient]:
        async with ThrottlingClient(lab.credentials(), n=3, retry_after=1.0) as c:
            engine = RewriteEngine(c, lab.write_key, options=RewriteOptions(concurrency=4), namespaces=[ns])
            return await engine.run(), c

    result, c = run(go())
    counters = result.counters
    assert (counters.reencrypted, counters.failed, counters.skipped) == (len(names), 0, 0), counters
    assert result.throttled == 3
    # no write went out within Retry-After of the first 429: the pause was shared by all four workers
    first_429 = c.throttled_at[0]
    assert all(t >= first_429 + 1.0 for t in c.writes_at), (first_429, c.writes_at)


class CountRefusingClient(KubeClient):
    """Refuses every ``limit=1`` list of Secrets with 429, as API Priority and Fairness refused the
    engine's start-up count on a 50,000-Secret server (benchmarks/README.md) while its pages, which
    retry, went through."""

    refused = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method == "GET" and path.endswith("/secrets") and (kwargs.get("params") or {}).get("limit") == "1":
            self.refused += 1
            raise KubeError(429, "TooManyRequests", "Too many requests, please try again later.", retry_after=1.0)
        return await super().request(method, path, **kwargs)


def test_a_run_over_every_namespace_takes_its_total_from_its_first_page(lab: Lab) -> None:
    run(create_namespace_with_secrets(lab, "rw-total", 5, rich=False))
    lab.switch_key()

    async def everything() -> int:
        async with KubeClient(lab.credentials()) as c:
            return sum([len(page.get("items") or []) async for page in c.list_pages("/api/v1/secrets", limit=500)])

    expected = run(everything())
    store = MemoryStore()

    async def go() -> tuple[Any, int]:
        async with CountRefusingClient(lab.credentials()) as c:
            engine = RewriteEngine(c, lab.write_key, checkpoint=store,
                                   options=RewriteOptions(concurrency=4, page_size=3, checkpoint_interval=0.05))
            return await engine.run(), c.refused

    result, refused = run(go())
    assert result.completed and result.counters.seen == expected
    # progress has its total although a count would have been refused: it came with the first page
    assert store.checkpoint is not None and store.checkpoint.secrets_total == expected, store.checkpoint
    assert refused == 0


def test_key_switch_canary(lab: Lab) -> None:
    ns = "aks-kms-system"
    lab.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    async def before() -> Canary:
        async with client(lab) as c:
            return await ensure_canary(c, ns)

    async def wait(baseline: Canary, timeout: float) -> Any:
        async with client(lab) as c, fresh_client(c) as probe:
            return await wait_for_key_switch(probe, ns, baseline, window=1.0, interval=0.2, min_probes=3,
                                             timeout=timeout)

    baseline = run(before())
    status, canary = lab.get(ns, "aks-kms-canary")
    assert status == 200 and canary["metadata"]["labels"] == {"aks-kms.dev/canary": "true"}
    assert not canary.get("data")

    # no key change: times out with a clear reason
    timeout = run(wait(baseline, 1.5))
    assert not timeout.switched and timeout.reason == KEY_SWITCH_TIMEOUT
    assert "never changed" in timeout.message and timeout.probes >= 3

    # the write key changes: the canary is rewritten once, then holds still
    baseline = run(before())
    assert baseline.resource_version == timeout.resource_version  # a current canary is left as it is
    new_key = lab.switch_key()
    ok = run(wait(baseline, 30))
    assert ok.switched and ok.reason == KEY_SWITCHED, ok.message
    assert ok.resource_version != baseline.resource_version and ok.probes >= 4
    assert lab.etcd_prefix(ns, "aks-kms-canary") == f"k8s:enc:aescbc:v1:{new_key}:"


def test_throughput(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark: one measurement of a stale rewrite, printed for the record."""
    ns = "rw-throughput"
    n = 2000
    run(create_namespace_with_secrets(lab, ns, n, rich=False))
    lab.switch_key()
    result = run(rewrite(lab, [ns], options=RewriteOptions(concurrency=32, page_size=500)))
    assert result.counters.reencrypted == n and result.counters.failed == 0
    with capsys.disabled():
        print(f"\nrewrite throughput: {n} stale Secrets in {result.elapsed_seconds:.2f}s = "
              f"{result.writes_per_second:.0f} writes/s (concurrency 32, one measurement)")
