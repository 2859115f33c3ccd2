"""Rewrite benchmark: our engine vs ``kubectl get | kubectl replace`` vs an unthrottled ceiling.

Usage (``make bench SIZES="1000" BENCH_JSON=out.json``)::

    python -m benchmarks.rewrite --sizes "1000 10000" [--json out.json]

For each size N: one control plane (etcd + kube-apiserver, aescbc keys standing in for KMS keys),
N Secrets over N/100 namespaces, then for each contender: switch the write key (restart the API
server, so every Secret is stale), run the contender, and count the Secrets whose resourceVersion
changed (must be N). Every contender runs in its own process(es) so its peak RSS (``VmHWM``, polled
every 50 ms, see ``PeakRss``) is its own. Internal subcommands (one process each)::

    python -m benchmarks.rewrite engine --target K [--concurrency 16 --page-size 500 --max-wps 0]
    python -m benchmarks.rewrite ceiling --refs refs.json [--concurrency 64]
    python -m benchmarks.rewrite probe --secret ns/name

Secret data is never printed: the engine and the ceiling only ever ask for metadata, the kubectl
pipeline's data flows from one kubectl to the other and only ``replace``'s one-line-per-object
output is read here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from aks_kms_operator.kube import MERGE_PATCH, METADATA_ONLY, Credentials, KubeClient, KubeError

from .report import markdown_table, percentile, ratios, results_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
DATA_KEY = b'"data":'


# ---------------------------------------------------------------------------------------- byte counting


class ByteCounter:
    """aiohttp trace: total response bytes, and bytes of responses that contain a ``"data":`` key.

    The check is a byte search over each whole body (a superset of "has a Secret's data field"), so
    a 0 is conclusive. ``KubeClient.request`` reads bodies with ``read()``, which reports the body to
    ``on_response_chunk_received``; chunks are still handled incrementally in case of streaming.
    """

    def __init__(self) -> None:
        self.total = 0
        self.data_bytes = 0
        self.responses = 0
        self.data_responses = 0

    def trace_config(self) -> aiohttp.TraceConfig:
        tc = aiohttp.TraceConfig()

        async def start(_s: Any, ctx: Any, _p: Any) -> None:
            ctx.seen, ctx.tail, ctx.has_data = 0, b"", False
            self.responses += 1

        async def chunk(_s: Any, ctx: Any, params: Any) -> None:
            data: bytes = params.chunk
            self.total += len(data)
            ctx.seen += len(data)
            if ctx.has_data:
                self.data_bytes += len(data)
            elif DATA_KEY in ctx.tail + data:
                ctx.has_data = True
                self.data_bytes += ctx.seen
                self.data_responses += 1
            ctx.tail = data[-len(DATA_KEY):]

        tc.on_request_start.append(start)
        tc.on_response_chunk_received.append(chunk)
        return tc


# ---------------------------------------------------------------------------------------- child processes


async def _engine_main(args: argparse.Namespace) -> dict[str, Any]:
    from aks_kms_operator.rewrite import RewriteEngine, RewriteOptions

    counter = ByteCounter()
    options = RewriteOptions(concurrency=args.concurrency, page_size=args.page_size,
                             max_writes_per_second=args.max_wps)
    async with KubeClient(Credentials.login(), pool_size=max(64, args.concurrency),
                          trace_configs=[counter.trace_config()]) as kube:
        result = await RewriteEngine(kube, args.target, options=options).run()
    return {"state": result.state.value, "seconds": result.elapsed_seconds,
            "writes_per_s": result.writes_per_second, "counters": result.counters.to_status(),
            "throttled": result.throttled, "bytes_received": counter.total,
            "data_bytes_received": counter.data_bytes, "data_responses": counter.data_responses,
            "responses": counter.responses}


async def _ceiling_main(args: argparse.Namespace) -> dict[str, Any]:
    refs = json.loads(Path(args.refs).read_text())
    queue: asyncio.Queue[list[str] | None] = asyncio.Queue()
    for ref in refs:
        queue.put_nowait(ref)
    statuses: dict[str, int] = {}
    async with KubeClient(Credentials.login(), pool_size=args.concurrency) as kube:

        async def worker() -> None:
            while (ref := queue.get_nowait() if not queue.empty() else None) is not None:
                ns, name, uid, rv = ref
                try:
                    await kube.request("PATCH", f"/api/v1/namespaces/{ns}/secrets/{name}",
                                       body={"metadata": {"uid": uid, "resourceVersion": rv}},
                                       content_type=MERGE_PATCH, accept=METADATA_ONLY)
                    key = "ok"
                except KubeError as err:
                    key = str(err.status)
                except (aiohttp.ClientError, TimeoutError) as err:
                    key = type(err).__name__
                statuses[key] = statuses.get(key, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds = time.monotonic() - t0
    return {"seconds": seconds, "writes_per_s": len(refs) / seconds, "statuses": statuses}


async def _probe_main(args: argparse.Namespace) -> dict[str, Any]:
    ns, name = args.secret.split("/", 1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    errors = 0
    async with KubeClient(Credentials.login(), pool_size=1) as kube:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                await kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}", accept=METADATA_ONLY)
                latencies.append((time.perf_counter() - t0) * 1000)
            except (KubeError, aiohttp.ClientError, TimeoutError):
                errors += 1
            await asyncio.sleep(args.interval)
    return {"requests": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies) if latencies else None}


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.rewrite")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine")
    e.add_argument("--target", required=True)
    e.add_argument("--concurrency", type=int, default=16)
    e.add_argument("--page-size", type=int, default=500)
    e.add_argument("--max-wps", type=float, default=0.0)
    c = sub.add_parser("ceiling")
    c.add_argument("--refs", required=True)
    c.add_argument("--concurrency", type=int, default=64)
    p = sub.add_parser("probe")
    p.add_argument("--secret", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args(argv)
    main = {"engine": _engine_main, "ceiling": _ceiling_main, "probe": _probe_main}[args.cmd]
    print(json.dumps(asyncio.run(main(args))), flush=True)
    return 0


def _python_child(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen([sys.executable, "-m", "benchmarks.rewrite", *cmd], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err)


def _vm_hwm_mb(pid: int) -> float | None:
    """The process's own peak RSS so far (``VmHWM``), in MB; None once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakRss:
    """Poll ``VmHWM`` of some processes every 50 ms until they exit; keep each one's highest value.

    Not ``wait4``'s ``ru_maxrss``: Linux folds the pre-exec memory of the forked child (a copy of this
    orchestrator, ~85 MB) into it, so every child would read at least the parent's size. ``VmHWM``
    belongs to the exec'd program only; a peak in the last <50 ms of a process's life can be missed.
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.05) -> None:
        self.peaks = dict.fromkeys(pids, 0.0)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            for pid in self.peaks:
                hwm = _vm_hwm_mb(pid)
                if hwm is not None:
                    self.peaks[pid] = max(self.peaks[pid], hwm)
            if self._stop.wait(self._interval):
                return

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait for the child without letting Popen poll it first (the poller needs it until it exits)."""
    return proc.wait()


def _run_python_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[dict[str, Any], float, float]:
    t0 = time.monotonic()
    proc = _python_child(cmd, env, log)
    poller = PeakRss([proc.pid])
    assert proc.stdout is not None
    out = proc.stdout.read()
    code = _reap(proc)
    rss = poller.stop()[proc.pid]
    wall = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"{cmd[0]} exited {code}; see {log}")
    return json.loads(out.decode().strip().splitlines()[-1]), rss, wall


# ---------------------------------------------------------------------------------------- orchestration


async def _metadata(creds: Credentials) -> dict[str, tuple[str, str, str, str]]:
    from aks_kms_lab.seed import SEED_LABEL

    found: dict[str, tuple[str, str, str, str]] = {}
    async with KubeClient(creds) as kube:
        async for page in kube.list_pages("/api/v1/secrets", limit=5000, params={"labelSelector": SEED_LABEL}):
            for item in page.get("items") or []:
                m = item["metadata"]
                found[f"{m['namespace']}/{m['name']}"] = (m["namespace"], m["name"], m["uid"], m["resourceVersion"])
    return found


def _changed(before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> int:
    return sum(1 for key, meta in before.items() if key in after and after[key][3] != meta[3])


async def _instrumentation_check(creds: Credentials, secret: str) -> int:
    """The byte counter must see ``"data":`` in a plain GET of a Secret (only the count is kept)."""
    counter = ByteCounter()
    ns, name = secret.split("/", 1)
    async with KubeClient(creds, trace_configs=[counter.trace_config()]) as kube:
        await kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
    return counter.data_bytes


def _kubectl_replace(kubeconfig: Path, log: Path) -> dict[str, Any]:
    from aks_kms_lab.controlplane import tool

    kubectl = str(tool("kubectl"))
    t0 = time.monotonic()
    with log.open("ab") as err:
        get = subprocess.Popen([kubectl, "--kubeconfig", str(kubeconfig), "get", "secrets", "-A", "-o", "json"],
                               stdout=subprocess.PIPE, stderr=err)
        rep = subprocess.Popen([kubectl, "--kubeconfig", str(kubeconfig), "replace", "-f", "-"],
                               stdin=get.stdout, stdout=subprocess.PIPE, stderr=err)
    poller = PeakRss([get.pid, rep.pid])
    assert get.stdout is not None and rep.stdout is not None
    get.stdout.close()  # replace owns the pipe now
    replaced = other = 0
    for line in rep.stdout:  # "secret/<name> replaced", one line per object: no data
        if line.rstrip().endswith(b" replaced"):
            replaced += 1
        else:
            other += 1
    get_code, rep_code = _reap(get), _reap(rep)
    peaks = poller.stop()
    get_rss, rep_rss = peaks[get.pid], peaks[rep.pid]
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "writes_per_s": replaced / seconds, "peak_rss_mb": get_rss + rep_rss,
            "get_rss_mb": get_rss, "replace_rss_mb": rep_rss, "replaced": replaced, "other_lines": other,
            "exit_codes": [get_code, rep_code]}


def _import_only_rss() -> float:
    """Peak RSS of a Python that only imports the client (kopf, aiohttp): the floor under every figure."""
    code = ("import aks_kms_operator.kube, aks_kms_operator.rewrite\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, check=True, text=True)
    return round(int(out.stdout.strip()) / 1024, 1)


def _stop_probe(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return json.loads(out.decode().strip().splitlines()[-1])


def bench_size(size: int, *, concurrency: int = 16, page_size: int = 500, log: Any = print) -> dict[str, Any]:
    from aks_kms_lab.controlplane import ControlPlane
    from aks_kms_lab.encryption import (
        KeySlots,
        aescbc_provider,
        encryption_configuration,
        provider_name,
        write_configuration,
    )
    from aks_kms_lab.seed import seed

    namespaces = max(1, size // 100)
    row: dict[str, Any] = {"size": size, "namespaces": namespaces, "cpus": os.cpu_count(),
                           "import_only_rss_mb": _import_only_rss()}
    with tempfile.TemporaryDirectory(prefix="aks-kms-bench-") as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "encryption.yaml"
        logs = Path(tempfile.gettempdir()) / f"aks-kms-bench-{size}.log"  # outlives the control plane
        keys = iter(f"https://bench.vault.azure.net/keys/k/v{i}" for i in range(100))
        slots = KeySlots().apply(True, next(keys))
        write_configuration(config, encryption_configuration(slots, aescbc_provider))
        with ControlPlane(tmp / "cp", encryption_config=config) as cp:
            env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
            creds = Credentials(server=cp.server, ssl=cp.ssl_context(), headers={})
            t0 = time.monotonic()
            asyncio.run(seed(creds, size, namespaces))
            row["seed_seconds"] = round(time.monotonic() - t0, 2)
            log(f"[{size}] seeded {size} Secrets in {namespaces} namespaces in {row['seed_seconds']} s")
            fixed = next(iter(asyncio.run(_metadata(creds))))
            row["instrumentation_check_data_bytes"] = asyncio.run(_instrumentation_check(creds, fixed))

            def switch_key() -> tuple[str, dict[str, tuple[str, str, str, str]]]:
                nonlocal slots, creds
                slots = slots.apply(True, next(keys))
                write_configuration(config, encryption_configuration(slots, aescbc_provider))
                cp.restart_apiserver(config)
                creds = Credentials(server=cp.server, ssl=cp.ssl_context(), headers={})
                return provider_name(slots.current or ""), asyncio.run(_metadata(creds))

            # idle latency of another client, for reference
            probe = _python_child(["probe", "--secret", fixed], env, logs)
            time.sleep(3)
            idle = _stop_probe(probe)

            def engine_run(max_wps: float) -> tuple[dict[str, Any], dict[str, Any]]:
                target, before = switch_key()
                probe = _python_child(["probe", "--secret", fixed], env, logs)
                time.sleep(0.5)
                out, rss, wall = _run_python_child(
                    ["engine", "--target", target, "--concurrency", str(concurrency), "--page-size",
                     str(page_size), "--max-wps", str(max_wps)], env, logs)
                probed = _stop_probe(probe)
                changed = _changed(before, asyncio.run(_metadata(creds)))
                result = {"seconds": round(out["seconds"], 3), "writes_per_s": round(out["writes_per_s"], 1),
                          "peak_rss_mb": round(rss, 1), "process_seconds": round(wall, 3),
                          "concurrency": concurrency, "page_size": page_size, "max_writes_per_second": max_wps,
                          "changed_rv": changed, "counters": out["counters"], "throttled": out["throttled"],
                          "bytes_received": out["bytes_received"], "data_bytes_received": out["data_bytes_received"],
                          "responses": out["responses"]}
                return result, probed

            engine, probe_uncapped = engine_run(0.0)
            log(f"[{size}] engine: {engine['writes_per_s']} w/s, {engine['peak_rss_mb']} MB, "
                f"changed {engine['changed_rv']}, other p99 {probe_uncapped['p99_ms']} ms")

            _, before = switch_key()
            kubectl = _kubectl_replace(cp.kubeconfig, logs)
            kubectl["changed_rv"] = _changed(before, asyncio.run(_metadata(creds)))
            kubectl = {k: round(v, 3) if isinstance(v, float) else v for k, v in kubectl.items()}
            log(f"[{size}] kubectl replace: {kubectl['writes_per_s']} w/s, {kubectl['peak_rss_mb']} MB, "
                f"changed {kubectl['changed_rv']}")

            _, before = switch_key()
            refs = tmp / "refs.json"
            t0 = time.monotonic()
            listed = asyncio.run(_metadata(creds))  # the pre-fetch: timed separately, not in the ceiling's rate
            list_seconds = time.monotonic() - t0
            refs.write_text(json.dumps([list(v) for v in listed.values()]))
            out, rss, wall = _run_python_child(["ceiling", "--refs", str(refs), "--concurrency", "64"], env, logs)
            ceiling = {"seconds": round(out["seconds"], 3), "writes_per_s": round(out["writes_per_s"], 1),
                       "peak_rss_mb": round(rss, 1), "list_seconds_excluded": round(list_seconds, 3),
                       "process_seconds": round(wall, 3),
                       "concurrency": 64, "statuses": out["statuses"],
                       "changed_rv": _changed(before, asyncio.run(_metadata(creds)))}
            log(f"[{size}] ceiling: {ceiling['writes_per_s']} w/s, {ceiling['peak_rss_mb']} MB, "
                f"changed {ceiling['changed_rv']}")

            capped_rate = round(engine["writes_per_s"] / 2, 1)
            engine_capped, probe_capped = engine_run(capped_rate)
            log(f"[{size}] engine capped at {capped_rate}: {engine_capped['writes_per_s']} w/s, "
                f"other p99 {probe_capped['p99_ms']} ms")

    row.update({
        "engine": engine, "engine_capped": engine_capped, "kubectl_replace": kubectl, "ceiling": ceiling,
        "data_bytes_received": engine["data_bytes_received"] + engine_capped["data_bytes_received"],
        "bytes_received": {"engine": engine["bytes_received"], "engine_capped": engine_capped["bytes_received"]},
        "other_clients_p99_ms": {"idle": _r(idle["p99_ms"]), "uncapped": _r(probe_uncapped["p99_ms"]),
                                 "capped": _r(probe_capped["p99_ms"])},
        "other_clients": {"idle": idle, "uncapped": probe_uncapped, "capped": probe_capped},
        "correct": all(x["changed_rv"] == size for x in (engine, engine_capped, kubectl, ceiling)),
    })
    row["ratios"] = ratios(row)
    return row


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("engine", "ceiling", "probe"):
        return _child_main(argv)
    parser = argparse.ArgumentParser(prog="benchmarks.rewrite", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000 10000 50000")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=500)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split()]
    rows = []
    for size in sizes:
        rows.append(bench_size(size, concurrency=args.concurrency, page_size=args.page_size,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    text = json.dumps(rows, indent=2) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / results_name(dt.date.today().isoformat(), sizes)).write_text(text)
    print(markdown_table(rows))
    return 0 if all(r["correct"] and r["data_bytes_received"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
