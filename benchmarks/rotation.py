"""Rotation on an AKS-shaped lab: how long enable and rotate take, and where the Secrets end up.

Usage::

    python -m benchmarks.rotation [--apiservers 3] [--secrets 2000] [--lag-last 0] [--window S]
                                  [--operator-src DIR] [--json out.json]

One lab with ``--apiservers`` kube-apiserver replicas behind the balancer (real KMS v2 plugins, the
fake Azure), ``--secrets`` Secrets over ``--secrets/100`` namespaces, one operator process. It enables
KMS with key V1, waits for Ready, rotates to V2, waits for Ready, and after each reads etcd directly:
how many Secrets are under each key. ``--lag-last S`` makes the lab's AKS finish the ARM operation S
seconds before the last replica reloads (AKS promises nothing stronger).

``--operator-src DIR`` runs the operator from another source root (for example a ``git worktree`` of
an older commit's ``operator/``), so one run can compare two versions of the operator on the same lab:
that is how the issue "Never strand a Secret on a real AKS control plane" measured the time before and
after the key-switch proof. A run that ends Ready while etcd still holds Secrets under the old key is
reported as ``stranded``: exactly the defect that proof prevents.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aks_kms_lab import lab
from aks_kms_lab.lab import LabRuntime
from aks_kms_lab.verify import verify_etcd


def _ready_with(runtime: LabRuntime, key: str) -> bool:
    assert runtime.cp is not None
    try:
        code, obj = runtime.cp.request("GET", f"{lab.POLICIES}/default")
    except OSError:
        return False
    if code != 200 or not isinstance(obj, dict):
        return False
    st = obj.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})
    return (st.get("observedGeneration") == obj["metadata"].get("generation")
            and ready.get("status") == "True" and st.get("encryptedWith") == key)


def _step(runtime: LabRuntime, key: str, timeout: float) -> dict[str, Any]:
    assert runtime.cp is not None and runtime.world is not None and runtime.kms is not None
    t0 = time.monotonic()
    runtime.cp.apply(runtime.world.policy(key_id=key))
    deadline = t0 + timeout
    while not _ready_with(runtime, key):
        if time.monotonic() > deadline:
            return {"key": key, "ready": False, "seconds": round(time.monotonic() - t0, 1)}
        time.sleep(0.5)
    seconds = time.monotonic() - t0
    runtime.fake.wait_idle(300)
    runtime.kms.wait_settled(300)  # a lagging last replica may still be rolling: count after it has
    env = lab.read_env(runtime.paths.root)
    report = verify_etcd(env["ETCD_URL"], list(runtime.world.key_versions))
    other = report.total - report.under(key)
    return {"key": key, "ready": True, "seconds": round(seconds, 1), "secrets": report.total,
            "underTarget": report.under(key), "underOtherKeys": other, "stranded": other > 0,
            "counts": {k[-8:]: v for k, v in report.counts.items()}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="aks-kms-rotation-")) / "lab"
    runtime = LabRuntime(root, apiservers=args.apiservers, roll_interval=args.roll_interval,
                         lag_last_seconds=args.lag_last or None).start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        lab.seed_lab(root, secrets=args.secrets, namespaces=max(1, args.secrets // 100))
        env = {**os.environ, **lab.read_env(root)}
        if args.window:  # the lab shortens the key-switch window; measure with another (e.g. the default 90 s)
            env["AKS_KMS_KEY_SWITCH_WINDOW_SECONDS"] = str(args.window)
            env["AKS_KMS_VERIFY_RETRY_SECONDS"] = str(args.window)
            env["AKS_KMS_KEY_SWITCH_TIMEOUT_SECONDS"] = str(max(900.0, 4 * args.window))
        if args.operator_src:
            env["PYTHONPATH"] = str(Path(args.operator_src).resolve())
        log = open(root / "operator.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-c", "from aks_kms_operator.cli import main; main()",
                                 "run", "--liveness=", "--log-format=plain"], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        assert runtime.world is not None
        v1, v2 = runtime.world.key_versions[:2]
        enable = _step(runtime, v1, args.timeout)
        rotate = _step(runtime, v2, args.timeout)
        return {"apiservers": args.apiservers, "secrets": args.secrets, "lagLastSeconds": args.lag_last,
                "windowSeconds": args.window or float(lab.read_env(root).get("AKS_KMS_KEY_SWITCH_WINDOW_SECONDS") or 0),
                "operatorSrc": args.operator_src or "this checkout", "enable": enable, "rotate": rotate}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        runtime.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apiservers", type=int, default=3)
    parser.add_argument("--secrets", type=int, default=2000)
    parser.add_argument("--roll-interval", type=float, default=1.0)
    parser.add_argument("--lag-last", type=float, default=0.0)
    parser.add_argument("--operator-src", default="")
    parser.add_argument("--window", type=float, default=0.0, help="key-switch window in seconds (default: the lab's)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["rotate"].get("ready") and not result["rotate"].get("stranded") else 1


if __name__ == "__main__":
    raise SystemExit(main())
