"""The other client alone, in short and long windows: is a contender's p99 over a long run comparable to
the 5-s idle baseline the rewrite benchmark measures?

Same setup as ``benchmarks.rewrite`` (control plane with APF seats sized to the cores, seeded Secrets,
the chart's identities, the probe as a ServiceAccount), but no contender: only the probe, in windows
of the given lengths, back to back. A long window's p99 well above the short ones' would mean the
baseline misses what a long run meets anyway (compaction, garbage collection).

    .venv/bin/python -m benchmarks.idle_window --size 50000@500 --windows "5 5 150 5" --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aks_kms_operator.kube import Credentials

from . import rewrite as bench


def measure(size: int, namespaces: int, windows: Sequence[float], log: Any = print) -> dict[str, Any]:
    from aks_kms_lab.controlplane import ControlPlane
    from aks_kms_lab.encryption import KeySlots, aescbc_provider, encryption_configuration, write_configuration
    from aks_kms_lab.seed import seed

    seats = bench.seats_for_cores(os.cpu_count() or 1)
    out: dict[str, Any] = {"size": size, "namespaces": namespaces, "apiserver_args": seats, "windows": []}
    with tempfile.TemporaryDirectory(prefix="aks-kms-idle-") as name:
        tmp = Path(name)
        config = tmp / "encryption.yaml"
        slots = KeySlots().apply(True, "https://bench.vault.azure.net/keys/k/v0")
        write_configuration(config, encryption_configuration(slots, aescbc_provider))
        with ControlPlane(tmp / "cp", encryption_config=config, extra_apiserver_args=tuple(seats)) as cp:
            creds = Credentials(server=cp.server, ssl=cp.ssl_context(), headers={})
            asyncio.run(seed(creds, size, namespaces))
            fixed = next(iter(asyncio.run(bench._metadata(creds))))
            ids = bench.setup_identities(cp, fixed)
            env = {**os.environ, "KUBECONFIG": str(ids["probe_kubeconfig"])}
            for seconds in windows:
                probe = bench._python_child(["probe", "--secret", fixed], env, tmp / "probe.log")
                time.sleep(seconds)
                result = {"seconds": seconds, **bench._stop_probe(probe)}
                out["windows"].append(result)
                log(f"{seconds:>5.0f} s alone: {result['requests']} requests, p50 {result['p50_ms']:.2f} ms, "
                    f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.idle_window", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="50000@500", help="N or N@M, as in benchmarks.rewrite")
    parser.add_argument("--windows", default="5 5 150 5", help="window lengths in seconds, back to back")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size, namespaces = bench.parse_size(args.size)
    result = measure(size, namespaces, [float(w) for w in args.windows.split()])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
