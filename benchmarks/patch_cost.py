"""What one re-encrypting write costs kube-apiserver, by the kind of patch that carries it.

The engine's write is a no-op merge patch (``{"metadata":{"uid","resourceVersion"}}``): it carries no
Secret data, and the API server writes the Secret again only because it is stored under an older key.
Could another patch kind cost the server less (less garbage to collect, less CPU), and so weigh less on
other clients? For each kind: switch the write key (every Secret stale), send that patch to every
Secret, and read kube-apiserver's own allocation counters (``runtime.MemStats`` from
``/debug/pprof/heap?debug=1``, profiling on for this run only) and its and etcd's CPU time around it.

    .venv/bin/python -m benchmarks.patch_cost --size 10000@100 --kinds "merge json strategic empty merge"

Only metadata is ever sent or asked for (``Accept: PartialObjectMetadata``), as the engine does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from aks_kms_operator.kube import MERGE_PATCH, METADATA_ONLY, Credentials, KubeClient

from . import rewrite as bench

KINDS = ("merge", "json", "strategic", "empty")


def patch_for(kind: str, uid: str, resource_version: str) -> tuple[Any, str]:
    """The body and content type of one no-op patch of ``kind``; preconditions on uid and
    resourceVersion wherever the kind can carry them (``empty`` cannot: ``{}``)."""
    if kind == "merge":
        return {"metadata": {"uid": uid, "resourceVersion": resource_version}}, MERGE_PATCH
    if kind == "strategic":
        return {"metadata": {"uid": uid, "resourceVersion": resource_version}}, "application/strategic-merge-patch+json"
    if kind == "json":
        return ([{"op": "test", "path": "/metadata/uid", "value": uid},
                 {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}],
                "application/json-patch+json")
    if kind == "empty":
        return {}, MERGE_PATCH
    raise SystemExit(f"--kinds: unknown patch kind {kind!r}; choose from {' '.join(KINDS)}")


async def _memstats(creds: Credentials) -> dict[str, int]:
    """kube-apiserver's cumulative allocation counters (``# TotalAlloc = …`` lines of the heap profile)."""
    async with aiohttp.ClientSession() as session, session.get(
            creds.server + "/debug/pprof/heap?debug=1", ssl=creds.ssl) as answer:
        text = await answer.text()
    return {k: int(v) for k, v in re.findall(r"# (TotalAlloc|Mallocs|NumGC) = (\d+)", text)}


async def _patch_all(creds: Credentials, refs: Sequence[tuple[str, str, str, str]], kind: str,
                     concurrency: int) -> float:
    todo = list(refs)
    async with KubeClient(creds, pool_size=concurrency) as kube:

        async def worker() -> None:
            while todo:
                ns, name, uid, rv = todo.pop()
                body, content_type = patch_for(kind, uid, rv)
                await kube.request("PATCH", f"/api/v1/namespaces/{ns}/secrets/{name}", body=body,
                                   content_type=content_type, accept=METADATA_ONLY)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - t0


def measure(size: int, namespaces: int, kinds: Sequence[str], concurrency: int = 8,
            log: Any = print) -> list[dict[str, Any]]:
    for kind in kinds:
        patch_for(kind, "", "")  # refuse an unknown kind before minutes of setup
    rows = []
    with tempfile.TemporaryDirectory(prefix="aks-kms-patch-cost-") as name, bench.bench_cluster(
            Path(name), size, namespaces, apiserver_args=("--profiling=true",)) as cluster:
        cp = cluster.cp
        for kind in kinds:
            cluster.switch_key()
            creds = cluster.creds
            before = asyncio.run(bench._metadata(creds))
            assert cp.replicas[0] is not None and cp.etcd is not None
            m0 = asyncio.run(_memstats(creds))
            cpu = bench.ServerCpu({"apiserver": cp.replicas[0].pid, "etcd": cp.etcd.pid})
            seconds = asyncio.run(_patch_all(creds, list(before.values()), kind, concurrency))
            used, m1 = cpu.stop(), asyncio.run(_memstats(creds))
            n, after = len(before), asyncio.run(bench._metadata(creds))
            row = {"kind": kind, "writes": n, "changed": bench._changed(before, after),
                   "writes_per_s": round(n / seconds),
                   "alloc_kb_per_write": round((m1["TotalAlloc"] - m0["TotalAlloc"]) / n / 1024, 1),
                   "mallocs_per_write": round((m1["Mallocs"] - m0["Mallocs"]) / n),
                   "gc_cycles": m1["NumGC"] - m0["NumGC"],
                   "apiserver_ms_per_write": round(1000 * used["apiserver"] / n, 3),
                   "etcd_ms_per_write": round(1000 * used["etcd"] / n, 3)}
            log(json.dumps(row))
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.patch_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="10000@100", help="N or N@M, as in benchmarks.rewrite")
    parser.add_argument("--kinds", default="merge json strategic empty merge",
                        help=f"patch kinds in order, space-separated: {' '.join(KINDS)} (repeat one to see noise)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size, namespaces = bench.parse_size(args.size)
    rows = measure(size, namespaces, args.kinds.split(), args.concurrency)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    # Every kind must have written every Secret again (each was stored under the previous key).
    return 0 if all(r["changed"] == r["writes"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
