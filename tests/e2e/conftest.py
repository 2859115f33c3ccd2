"""The full lab (real etcd + kube-apiserver with KMS v2 plugins, fake Azure) and the operator process.

One lab per module, run in-process through :class:`aks_kms_lab.lab.LabRuntime` in a temporary
directory (never the CLI's ``.lab``), so tests can reach the fake Azure directly. The lab runs
``APISERVERS`` kube-apiserver replicas behind the balancer, as AKS does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aks_kms_lab import lab
from aks_kms_lab.lab import LabRuntime

from ..support import wait_for

SCRIPT = Path(sys.executable).parent / "aks-kms-operator"
SECRETS = 200
NAMESPACES = 4
# AKS runs several kube-apiserver replicas behind a load balancer; so does every e2e lab (override to compare).
APISERVERS = int(os.environ.get("AKS_KMS_E2E_APISERVERS", "2"))
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


class LabHarness:
    def __init__(self, runtime: LabRuntime) -> None:
        self.runtime = runtime
        self.root = runtime.paths.root
        assert runtime.cp is not None and runtime.world is not None
        self.cp = runtime.cp
        self.world = runtime.world
        self.log = self.root / "operator.log"
        self.operator: subprocess.Popen[bytes] | None = None

    def start_operator(self) -> None:
        env = {**os.environ, **lab.read_env(self.root)}
        with open(self.log, "ab") as out:
            self.operator = subprocess.Popen([str(SCRIPT), "run", "--liveness=", "--log-format=plain"],
                                             stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop_operator(self) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(timeout=10)
        self.operator = None

    def kill_operator(self) -> None:
        """kill -9: no cleanup, no final status write."""
        if self.operator and self.operator.poll() is None:
            self.operator.kill()
            self.operator.wait(timeout=10)
        self.operator = None

    def apply(self, **kwargs: Any) -> None:
        self.cp.apply(self.world.policy(**kwargs))

    def poke(self) -> None:
        """Ask the operator to reconcile now (as ``flux reconcile`` would)."""
        stamp = dt.datetime.now(dt.UTC).isoformat()
        code, out = self.cp.request("PATCH", f"{lab.POLICIES}/default",
                                    {"metadata": {"annotations": {REQUESTED_AT: stamp}}},
                                    content_type="application/merge-patch+json")
        assert code == 200, out

    def status(self) -> dict[str, Any] | None:
        try:
            code, obj = self.cp.request("GET", f"{lab.POLICIES}/default")
        except OSError:
            return None  # the API server is rolling after a KMS change
        if code != 200 or not isinstance(obj, dict):
            return None
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"].get("generation"):
            return None
        return st

    def wait(self, pred: Any, what: str, timeout: float = 180) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            assert self.operator is None or self.operator.poll() is None, self.tail()
            st = self.status()
            return st if st is not None and pred(st) else None

        try:
            return wait_for(check, timeout=timeout, interval=0.5, what=what)
        except AssertionError as err:
            raise AssertionError(f"{err}; status: {self.status()}\noperator log tail:\n{self.tail()}") from None

    def wait_encrypted_with(self, key: str, timeout: float = 180) -> dict[str, Any]:
        return self.wait(lambda s: condition(s, "Ready").get("status") == "True" and s.get("encryptedWith") == key,
                         f"Ready with encryptedWith {key}", timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@contextlib.contextmanager
def running_lab(root: Path, *, apiservers: int = APISERVERS, secrets: int = SECRETS,
                namespaces: int = NAMESPACES) -> Iterator[LabHarness]:
    """A started lab in ``root`` with seeded Secrets and the operator running; all of it stopped after."""
    runtime = LabRuntime(root, apiservers=apiservers).start()
    harness = LabHarness(runtime)
    try:
        assert lab.seed_lab(harness.root, secrets=secrets, namespaces=namespaces) == secrets
        harness.start_operator()
        yield harness
    finally:
        harness.stop_operator()
        runtime.stop()


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHarness]:
    with running_lab(tmp_path_factory.mktemp("lab") / "lab") as harness:
        yield harness
