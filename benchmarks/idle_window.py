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

from . import rewrite as bench


def measure(size: int, namespaces: int, windows: Sequence[float], log: Any = print) -> dict[str, Any]:
    seats = bench.seats_for_cores(os.cpu_count() or 1)
    out: dict[str, Any] = {"size": size, "namespaces": namespaces, "apiserver_args": seats, "windows": []}
    with tempfile.TemporaryDirectory(prefix="aks-kms-idle-") as name:
        tmp = Path(name)
        with bench.bench_cluster(tmp, size, namespaces, apiserver_args=seats) as cluster:
            fixed = next(iter(asyncio.run(bench._metadata(cluster.creds))))
            ids = bench.setup_identities(cluster.cp, fixed)
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
