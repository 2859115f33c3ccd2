"""Chaos: a seeded random schedule of KMS changes against an AKS-shaped lab, with faults injected mid-way.

Each run starts a fresh lab with several kube-apiserver replicas behind a balancer (real etcd, real KMS v2
plugins, the fake Azure), seeds Secrets, starts the operator and plays ``schedule.make_schedule(seed)``:
rotations, vault-mode changes, disable and enable, each with faults at random points (kill -9 of the
operator, replica restarts and lagging rolls, lost ARM responses, operations failing after the key was
applied, Key Vault 5xx, 429 storms, a second operator replica).

After every step has converged, the invariants are checked from etcd directly, not through the API:

1. every Secret is stored under a key AKS currently loads (or plaintext, which identity always reads);
2. the policy is Ready, so every Secret is stored under ``status.encryptedWith``;
3. no seeded Secret's content changed, none is missing, and none was re-created (same uid);
4. at most one ARM write was accepted per write step the change needed.

Violations are collected and reported together with the seed; the test fails if there is any.
A summary (runs, steps, faults by kind, violations, time per step) goes to ``$CHAOS_REPORT``
(default ``.cache/chaos/report.json``), which ``make chaos`` prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aks_kms_lab import lab
from aks_kms_lab.lab import LabRuntime
from aks_kms_lab.verify import IDENTITY, check_digests, verify_etcd

from ..support import REPO, wait_for
from .conftest import REPLICAS, STEPS
from .schedule import (
    ARM_429_STORM,
    ARM_FAILED_AFTER_APPLY,
    KEYVAULT_5XX,
    KILL_OPERATOR,
    LAGGING_ROLL,
    LOST_ARM_RESPONSE,
    REPLICA_RESTART,
    SECOND_OPERATOR,
    Fault,
    KmsTarget,
    Step,
    make_schedule,
)

# Each step may take up to STEP_TIMEOUT twice (converge, then converge again after late faults).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(int(STEPS * 2 * 420 + 300))]

SCRIPT = Path(sys.executable).parent / "aks-kms-operator"
SECRETS = 240
NAMESPACES = 6
STEP_TIMEOUT = 420.0
CLUSTER_PATH = r"/managedClusters/[^/]+$"
REPORT = Path(os.environ.get("CHAOS_REPORT") or REPO / ".cache" / "chaos" / "report.json")
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
# Another operator source root (e.g. a `git worktree` of an older commit's operator/): shows what the
# suite would have caught there.
OPERATOR_SRC = os.environ.get("CHAOS_OPERATOR_SRC", "")


class ChaosLab:
    """One lab, the operator processes, and the fault injectors for one run."""

    def __init__(self, runtime: LabRuntime, seed: int) -> None:
        self.runtime = runtime
        self.seed = seed
        self.root = runtime.paths.root
        assert runtime.cp is not None and runtime.world is not None and runtime.kms is not None
        self.cp = runtime.cp
        self.world = runtime.world
        self.kms = runtime.kms
        self.fake = runtime.fake
        self.operators: dict[str, subprocess.Popen[bytes]] = {}
        self.faults = Counter[str]()
        self.violations: list[str] = []
        self.step_seconds: list[float] = []
        self._timers: list[threading.Timer] = []

    # ---------------------------------------------------------------- operator processes

    def start_operator(self, name: str = "operator-a") -> None:
        env = {**os.environ, **lab.read_env(self.root), "POD_NAME": name}
        if OPERATOR_SRC:  # play the schedule against another version of the operator
            env["PYTHONPATH"] = OPERATOR_SRC
        with open(self.root / f"{name}.log", "ab") as out:
            self.operators[name] = subprocess.Popen(
                [str(SCRIPT), "run", "--liveness=", "--log-format=plain"],
                stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop_operator(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.operators.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_all(self) -> None:
        for t in self._timers:
            t.cancel()
        for name in list(self.operators):
            self.stop_operator(name)

    def ensure_operator_running(self) -> None:
        """An operator that exited (it lost its lease, say) is restarted, as its Deployment would."""
        for name, proc in list(self.operators.items()):
            if proc.poll() is not None:
                self.operators.pop(name)
                self.start_operator(name)

    # ---------------------------------------------------------------- faults

    def arm(self, fault: Fault) -> None:
        """Faults that must be in place before the change is applied."""
        if fault.kind == LAGGING_ROLL:
            self.kms.lag_last_seconds = fault.seconds
        elif fault.kind == LOST_ARM_RESPONSE:
            self.fake.inject_lost_response("PUT", CLUSTER_PATH, mode="504")
        elif fault.kind == ARM_FAILED_AFTER_APPLY:
            self.fake.set_lro(fail_with=("InternalOperationError", "chaos: failed after the key was applied"),
                              fail_after_apply=True)
        elif fault.kind == ARM_429_STORM:
            self.fake.inject("*", CLUSTER_PATH, 429, times=4, retry_after=1)
        else:
            return
        self.faults[fault.kind] += 1

    def fire(self, fault: Fault) -> None:
        """Faults that hit at ``fault.delay`` seconds into the step."""
        if fault.kind in (LAGGING_ROLL, LOST_ARM_RESPONSE, ARM_FAILED_AFTER_APPLY, ARM_429_STORM):
            return

        def run() -> None:
            try:
                if fault.kind == KILL_OPERATOR:
                    name = next(iter(self.operators), "operator-a")
                    self.stop_operator(name, signal.SIGKILL)
                    time.sleep(1.0)
                    self.start_operator(name)
                elif fault.kind == REPLICA_RESTART:
                    self.cp.restart_replica(fault.replica % REPLICAS)
                elif fault.kind == KEYVAULT_5XX:
                    self.fake.inject("*", r"/keys/", 503, times=1_000_000)
                    time.sleep(fault.seconds)
                    self.fake.clear_faults()
                elif fault.kind == SECOND_OPERATOR:
                    self.start_operator("operator-b")
                self.faults[fault.kind] += 1
            except Exception as err:  # a fault that could not be injected is reported, not hidden
                self.violations.append(f"seed {self.seed}: could not inject {fault}: {err!r}")

        timer = threading.Timer(fault.delay, run)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def settle_faults(self) -> None:
        for t in self._timers:
            t.join(timeout=120)
        self._timers.clear()
        self.fake.clear_faults()
        self.fake.set_lro(fail_with=None)
        self.kms.lag_last_seconds = None
        self.stop_operator("operator-b")
        self.ensure_operator_running()

    # ---------------------------------------------------------------- policy

    def key_for(self, target: KmsTarget) -> str:
        if not target.enabled:
            return IDENTITY
        return self.world.private_key_versions[0] if target.private else self.world.key_versions[target.version]

    def apply(self, target: KmsTarget) -> None:
        if target.enabled:
            body = self.world.policy(key_id=self.key_for(target), private=target.private)
        else:
            body = self.world.policy(enabled=False)
        wait_for(lambda: self._try_apply(body), timeout=60, interval=1, what="policy applied")

    def _try_apply(self, body: dict[str, Any]) -> bool:
        try:
            self.cp.apply(body)
            return True
        except Exception:  # a replica is rolling: try again
            return False

    def policy(self) -> dict[str, Any] | None:
        try:
            code, obj = self.cp.request("GET", f"{lab.POLICIES}/default")
        except OSError:
            return None
        return obj if code == 200 and isinstance(obj, dict) else None

    def converged(self, key: str) -> dict[str, Any] | None:
        self.ensure_operator_running()
        obj = self.policy()
        if obj is None:
            return None
        st = obj.get("status") or {}
        ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
        if st.get("observedGeneration") != obj["metadata"].get("generation"):
            return None
        return st if ready.get("status") == "True" and st.get("encryptedWith") == key else None

    # ---------------------------------------------------------------- invariants (from etcd)

    def secret_uids(self) -> dict[str, str]:
        """namespace/name -> uid of every Secret, from a metadata-only list (no Secret data)."""
        ctx: ssl.SSLContext = self.cp.ssl_context()
        out: dict[str, str] = {}
        token = ""
        while True:
            url = f"{self.cp.server}/api/v1/secrets?limit=500" + (f"&continue={token}" if token else "")
            req = urllib.request.Request(url, headers={"Accept": METADATA_LIST})
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                page = json.loads(r.read())
            for item in page.get("items") or []:
                m = item["metadata"]
                out[f"{m['namespace']}/{m['name']}"] = m["uid"]
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return out

    def check(self, step: Step, status: dict[str, Any], uids: dict[str, str], arm_writes: int) -> None:
        where = f"seed {self.seed}, step '{step}'"
        self.fake.wait_idle(120)  # the roll starts only after the fake operation's own delay
        self.kms.wait_settled(120)
        env = lab.read_env(self.root)
        keys = [*self.world.key_versions, *self.world.private_key_versions]
        report = verify_etcd(env["ETCD_URL"], keys)
        loaded = {*self.kms.slots.loaded(), IDENTITY}
        outside = {label: n for label, n in report.counts.items() if label not in loaded}
        if outside or report.unreadable:
            self.violations.append(f"{where}: Secrets under keys AKS does not load: {outside} "
                                   f"(loaded: {sorted(loaded)}; unreadable: {report.unreadable_keys[:3]})")
        expected = status.get("encryptedWith") or ""
        if not report.all_under(expected):
            self.violations.append(f"{where}: Ready but not every Secret is under {expected}: {dict(report.counts)}")
        seeded = json.loads((self.root / "seed.json").read_text())
        digests = check_digests(self.cp, seeded, namespaces=sorted({k.split("/", 1)[0] for k in seeded}))
        if not digests.ok:
            self.violations.append(f"{where}: content changed {digests.mismatched[:3]} missing {digests.missing[:3]}")
        now = self.secret_uids()
        recreated = [k for k, uid in uids.items() if now.get(k) not in (None, uid)]
        if recreated:
            self.violations.append(f"{where}: Secrets re-created: {recreated[:5]}")
        if arm_writes > step.arm_writes:
            self.violations.append(f"{where}: {arm_writes} ARM writes accepted, the plan needs {step.arm_writes}")

    def accepted_cluster_writes(self, since: int) -> int:
        return sum(1 for w in self.fake.writes[since:] if w.method == "PUT" and "managedClusters" in w.path)

    def tail(self) -> str:
        logs = []
        for name in ("operator-a", "operator-b"):
            path = self.root / f"{name}.log"
            if path.exists():
                logs.append(f"--- {name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(logs)


@pytest.fixture
def chaos_lab(chaos_seed: int, tmp_path: Path) -> Any:
    runtime = LabRuntime(tmp_path / "lab", apiservers=REPLICAS, roll_interval=0.5).start()
    h = ChaosLab(runtime, chaos_seed)
    try:
        assert lab.seed_lab(h.root, secrets=SECRETS, namespaces=NAMESPACES) == SECRETS
        h.start_operator()
        yield h
    finally:
        h.stop_all()
        runtime.stop()


def _record(seed: int, h: ChaosLab, steps: list[Step], elapsed: float) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(REPORT.read_text()) if REPORT.exists() else []
    runs = [r for r in runs if r.get("seed") != seed]
    runs.append({"seed": seed, "replicas": REPLICAS, "steps": [str(s) for s in steps],
                 "faults": dict(h.faults), "violations": h.violations, "stepSeconds": h.step_seconds,
                 "seconds": round(elapsed, 1)})
    REPORT.write_text(json.dumps(runs, indent=2))


def test_chaos_schedule(chaos_lab: ChaosLab, chaos_seed: int) -> None:
    h = chaos_lab
    steps = make_schedule(chaos_seed, STEPS, replicas=REPLICAS)
    print(f"chaos seed {chaos_seed}: replay with `make chaos SEED={chaos_seed} RUNS=1 STEPS={STEPS}`")
    uids = {k: v for k, v in h.secret_uids().items() if k.startswith("team")}
    t_run = time.monotonic()
    try:
        for step in steps:
            t0 = time.monotonic()
            writes_before = len(h.fake.writes)
            for fault in step.faults:
                h.arm(fault)
            h.apply(step.target)
            for fault in step.faults:
                h.fire(fault)
            key = h.key_for(step.target)
            try:
                status = wait_for(lambda key=key: h.converged(key), timeout=STEP_TIMEOUT, interval=1,
                                  what=f"'{step}' to converge")
            except AssertionError as err:
                h.violations.append(f"seed {chaos_seed}: {err}; status: {(h.policy() or {}).get('status')}")
                break
            h.settle_faults()
            # Faults may have fired after convergence (a late kill, a late replica restart): converge again.
            status = wait_for(lambda key=key: h.converged(key), timeout=STEP_TIMEOUT, interval=1,
                              what=f"'{step}' to converge after its faults")
            h.check(step, status, uids, h.accepted_cluster_writes(writes_before))
            h.step_seconds.append(round(time.monotonic() - t0, 1))
    finally:
        _record(chaos_seed, h, steps, time.monotonic() - t_run)
        with contextlib.suppress(Exception):
            h.settle_faults()
    assert not h.violations, "\n".join(h.violations) + "\n" + h.tail()
