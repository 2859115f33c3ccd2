"""Rewrite benchmark: our engine vs ``kubectl get | kubectl replace`` vs two unthrottled ceilings.

Usage (``make bench SIZES="1000 20000@5000" BENCH_JSON=out.json``)::

    python -m benchmarks.rewrite --sizes "1000 10000 20000@5000" [--json out.json] [--skip kubectl]

A size is ``N`` (N Secrets over N/100 namespaces) or ``N@M`` (N Secrets over M namespaces). For
each: one control plane (etcd + kube-apiserver, aescbc keys standing in for KMS keys), the chart's
ServiceAccount, RBAC, FlowSchema and PriorityLevelConfiguration (``helm template``), then for each
contender: switch the write key (restart the API server, so every Secret is stale), run the
contender, and count the Secrets whose resourceVersion changed (must be N). Every contender runs in
its own process(es), so its peak RSS (``VmHWM``, polled every 50 ms, see ``PeakRss``) and its CPU
time are its own; the API server's and etcd's CPU time during its run are read from ``/proc``.
Internal subcommands (one process each)::

    python -m benchmarks.rewrite engine --target K [--concurrency 16 --page-size 500 --max-wps 0]
    python -m benchmarks.rewrite ceiling --refs refs.json [--concurrency 64]
    python -m benchmarks.rewrite probe --secret ns/name

The Go ceiling is ``.cache/bin/loadgen`` (hack/tools/loadgen, ``make tools``).

Secret data is never printed: the engine and the ceilings only ever ask for metadata, the kubectl
pipeline's data flows from one kubectl to the other and only ``replace``'s one-line-per-object
output is read here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from aks_kms_operator.kube import MERGE_PATCH, METADATA_ONLY, Credentials, KubeClient, KubeError

from .report import gc_marks, markdown_table, percentile, ratios, results_name, slow_requests_in_gc

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
    # The byte counter is an aiohttp trace: it costs the engine ~20 % of its rate on this machine (the
    # trace machinery runs on every request), so --no-byte-counter measures the engine as it runs in a
    # cluster; the rounds that count bytes prove that no Secret data arrives.
    async with KubeClient(Credentials.login(), pool_size=max(64, args.concurrency),
                          trace_configs=[] if args.no_byte_counter else [counter.trace_config()]) as kube:
        cpu0 = _own_cpu()
        result = await RewriteEngine(kube, args.target, options=options).run()
        cpu = _own_cpu() - cpu0
    return {"state": result.state.value, "seconds": result.elapsed_seconds, "cpu_seconds": cpu,
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

        t0, cpu0 = time.monotonic(), _own_cpu()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds, cpu = time.monotonic() - t0, _own_cpu() - cpu0
    return {"seconds": seconds, "writes_per_s": len(refs) / seconds, "statuses": statuses, "cpu_seconds": cpu}


def _own_cpu() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _probe_main(args: argparse.Namespace) -> dict[str, Any]:
    ns, name = args.secret.split("/", 1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    latencies: list[float] = []
    started: list[float] = []  # wall-clock start of each answered request, for --trace
    errors = 0
    statuses: dict[str, int] = {}
    sched0 = _own_schedstat()
    async with KubeClient(Credentials.login(), pool_size=1) as kube:
        while not stop.is_set():
            t0, wall = time.perf_counter(), time.time()
            try:
                await kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}", accept=METADATA_ONLY)
                latencies.append((time.perf_counter() - t0) * 1000)
                started.append(wall)
            except KubeError as err:
                errors += 1
                statuses[str(err.status)] = statuses.get(str(err.status), 0) + 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            await asyncio.sleep(args.interval)
    sched1 = _own_schedstat()
    if args.trace:  # one line per answered request: when it started (Unix seconds) and how long it took
        Path(args.trace).write_text("".join(f"{t:.4f}\t{ms:.3f}\n" for t, ms in zip(started, latencies, strict=True)))
    per = 1e6 * max(1, len(latencies) + errors)  # ns -> ms per request
    return {"requests": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "max_ms": max(latencies) if latencies else None,
            "statuses": statuses,
            "cpu_ms_per_request": round((sched1[0] - sched0[0]) / per, 3),
            "runqueue_ms_per_request": round((sched1[1] - sched0[1]) / per, 3)}


def _own_schedstat() -> tuple[int, int]:
    """This process's CPU time and time spent runnable but waiting for a CPU (run queue), in ns,
    from ``/proc/self/schedstat`` (main thread: the probe's event loop)."""
    try:
        with open("/proc/self/schedstat") as f:
            cpu, wait, _ = f.read().split()
        return int(cpu), int(wait)
    except (OSError, ValueError):
        return 0, 0


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.rewrite")
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine")
    e.add_argument("--target", required=True)
    e.add_argument("--concurrency", type=int, default=16)
    e.add_argument("--page-size", type=int, default=500)
    e.add_argument("--max-wps", type=float, default=0.0)
    e.add_argument("--no-byte-counter", action="store_true")
    c = sub.add_parser("ceiling")
    c.add_argument("--refs", required=True)
    c.add_argument("--concurrency", type=int, default=64)
    p = sub.add_parser("probe")
    p.add_argument("--secret", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--trace", help="write each request's start time and latency here (a diagnostic)")
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


def _reap(proc: subprocess.Popen[Any]) -> tuple[int, float]:
    """Wait for the child (``wait4``, so its CPU time comes with it); return its exit code and its
    whole life's user + system CPU seconds. Popen must not poll it first: the RSS poller needs it
    until it exits."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _run_python_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[dict[str, Any], float, float]:
    t0 = time.monotonic()
    proc = _python_child(cmd, env, log)
    poller = PeakRss([proc.pid])
    assert proc.stdout is not None
    out = proc.stdout.read()
    code, _ = _reap(proc)
    rss = poller.stop()[proc.pid]
    wall = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"{cmd[0]} exited {code}; see {log}")
    return json.loads(out.decode().strip().splitlines()[-1]), rss, wall


class ServerCpu:
    """CPU seconds (user + system, from ``/proc/<pid>/stat``) of the API server and etcd processes
    between ``__init__`` and ``stop()``: what the machine spent serving one contender. Read after the
    key switch (a restart makes a new API server process), so start-up is not counted."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: _proc_cpu(pid) for name, pid in pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: round(_proc_cpu(pid) - self.start[name], 3) for name, pid in self.pids.items()}


def process_start(pid: int) -> float:
    """When a process started, in Unix seconds: the origin of a Go process's ``gctrace`` times.

    ``/proc/<pid>/stat`` gives the start in clock ticks since boot (10 ms). It is placed against the
    clock since boot read now, not against ``btime`` in ``/proc/stat``, which is rounded to a whole
    second: an error of up to 1 s, as long as a GC mark phase on a 50,000-Secret server."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
    since_boot, now = time.clock_gettime(time.CLOCK_BOOTTIME), time.time()
    return now - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))


class ApiserverGc:
    """The API server's garbage collections during one contender's run, set against the other client's
    requests: kube-apiserver runs with ``GODEBUG=gctrace=1``, so each cycle is a line in its log.
    Created after the key switch (a new process, so its gctrace times start from its own start)."""

    def __init__(self, log: Path, pid: int) -> None:
        self.log, self.start, self.offset = log, process_start(pid), log.stat().st_size

    def report(self, trace: Path, slow_ms: float) -> dict[str, Any]:
        with self.log.open("rb") as f:
            f.seek(self.offset)
            lines = f.read().decode(errors="replace").splitlines()
        requests = [(float(t), float(ms)) for t, ms in (line.split("\t") for line in trace.read_text().splitlines())]
        return slow_requests_in_gc(requests, gc_marks(lines, self.start), slow_ms)


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


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
    (get_code, get_cpu), (rep_code, rep_cpu) = _reap(get), _reap(rep)
    peaks = poller.stop()
    get_rss, rep_rss = peaks[get.pid], peaks[rep.pid]
    seconds = time.monotonic() - t0
    return {"seconds": seconds, "writes_per_s": replaced / seconds, "peak_rss_mb": get_rss + rep_rss,
            "get_rss_mb": get_rss, "replace_rss_mb": rep_rss, "replaced": replaced, "other_lines": other,
            "exit_codes": [get_code, rep_code], "cpu_seconds": get_cpu + rep_cpu}


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


# ---------------------------------------------------------------------------------------- the Go ceiling


def loadgen_binary() -> Path:
    from aks_kms_lab.controlplane import tool

    return tool("loadgen")


def kubeconfig_flags(kubeconfig: Path) -> list[str]:
    """``loadgen`` flags for the current user of a kubeconfig: server, CA, client cert or token file.

    Only file references are supported (what the lab writes); an inline ``*-data`` field or an exec
    plugin is refused with the field's name."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    flags = ["-server", cluster["server"]]
    if cluster.get("certificate-authority"):
        flags += ["-ca", cluster["certificate-authority"]]
    if user.get("client-certificate"):
        flags += ["-client-cert", user["client-certificate"], "-client-key", user["client-key"]]
    elif user.get("token"):
        token_file = kubeconfig.with_name(kubeconfig.name + ".token")
        token_file.write_text(user["token"])
        token_file.chmod(0o600)
        flags += ["-token-file", str(token_file)]
    else:
        raise ValueError(f"{kubeconfig}: users[].user needs client-certificate/client-key or token (file paths "
                         f"or a token); found {sorted(user)}")
    return flags


def _go_ceiling(kubeconfig: Path, refs: Path, concurrency: int, log: Path) -> tuple[dict[str, Any], float, float]:
    """Run ``loadgen`` over the pre-fetched refs; its JSON, its peak RSS (MB) and its CPU seconds."""
    with log.open("ab") as err:
        proc = subprocess.Popen([str(loadgen_binary()), *kubeconfig_flags(kubeconfig), "-input", str(refs),
                                 "-concurrency", str(concurrency)], stdout=subprocess.PIPE, stderr=err)
    poller = PeakRss([proc.pid])
    assert proc.stdout is not None
    out = proc.stdout.read()
    code, cpu = _reap(proc)
    rss = poller.stop()[proc.pid]
    if code != 0:
        raise RuntimeError(f"loadgen exited {code}; see {log}")
    return json.loads(out.decode()), rss, cpu


# ---------------------------------------------------------------------------------------- identities and APF

_PLURALS = {"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings",
            "FlowSchema": "flowschemas", "PriorityLevelConfiguration": "prioritylevelconfigurations",
            "Namespace": "namespaces"}
CHART = REPO / "charts" / "aks-kms-operator"
RELEASE_NAMESPACE = "aks-kms-system"


def chart_objects() -> list[dict[str, Any]]:
    """The chart's identity and flow-control objects, rendered by the real helm (default values)."""
    from aks_kms_lab.controlplane import tool

    out = subprocess.run([str(tool("helm")), "template", "aks-kms-operator", str(CHART), "--namespace",
                          RELEASE_NAMESPACE, "--kube-version", "1.35.4"], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d and d.get("kind") in _PLURALS]


def _apply(cp: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply as the lab admin (the lab's own ``apply`` knows no flowcontrol kinds)."""
    group_version = obj["apiVersion"]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    ns = obj["metadata"].get("namespace")
    path = f"{base}/namespaces/{ns}/{_PLURALS[obj['kind']]}" if ns else f"{base}/{_PLURALS[obj['kind']]}"
    status, out = cp.request("PATCH", f"{path}/{obj['metadata']['name']}?fieldManager=bench&force=true", obj,
                             content_type="application/apply-patch+yaml")
    if status >= 300:
        raise RuntimeError(f"apply {obj['kind']}/{obj['metadata']['name']}: {status} {out}")
    return out


def _apf_headers(kubeconfig: Path, path: str,
                 accept: str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1") -> tuple[str, str]:
    """The FlowSchema and PriorityLevelConfiguration uids the API server answered one request of this
    kubeconfig's user with (``X-Kubernetes-PF-FlowSchema-UID``, ``X-Kubernetes-PF-PriorityLevel-UID``):
    proof of which APF flow a client is in."""
    import ssl
    import urllib.request

    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    req = urllib.request.Request(cluster["server"] + path, headers={
        "Authorization": f"Bearer {user['token']}", "Accept": accept})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        r.read()
        headers = r.headers
        return headers.get("X-Kubernetes-PF-FlowSchema-UID", ""), headers.get("X-Kubernetes-PF-PriorityLevel-UID", "")


def _name_of_uid(cp: Any, resource: str, uid: str) -> str:
    """The name of the APF object (``flowschemas`` or ``prioritylevelconfigurations``) with this uid."""
    status, out = cp.request("GET", f"/apis/flowcontrol.apiserver.k8s.io/v1/{resource}")
    items = out.get("items") or [] if status == 200 and isinstance(out, dict) else []
    return next((i["metadata"]["name"] for i in items if i["metadata"]["uid"] == uid), "")


def setup_identities(cp: Any, probe_secret: str) -> dict[str, Any]:
    """The chart's ServiceAccount, RBAC, FlowSchema and PriorityLevelConfiguration, a TokenRequest
    token for that ServiceAccount (the engine's identity under APF), and another ServiceAccount
    allowed to get the probe's Secret (the "other client": not system:masters, which APF exempts)."""
    objects = chart_objects()
    _apply(cp, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}})
    by_kind = {}
    for obj in objects:
        by_kind[obj["kind"]] = _apply(cp, obj)
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    operator = cp.service_account_kubeconfig(RELEASE_NAMESPACE, sa)
    probe_ns, probe_name = probe_secret.split("/", 1)
    probe = cp.service_account_kubeconfig("bench-probe", "other-client")
    _apply(cp, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "bench-probe", "namespace": probe_ns},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]})
    _apply(cp, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "bench-probe", "namespace": probe_ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench-probe"},
                "subjects": [{"kind": "ServiceAccount", "name": "other-client", "namespace": "bench-probe"}]})
    fs = by_kind["FlowSchema"]
    matched, _ = _apf_headers(operator, f"/api/v1/namespaces/{probe_ns}/secrets?limit=1")
    probe_fs, probe_pl = _apf_headers(probe, f"/api/v1/namespaces/{probe_ns}/secrets/{probe_name}",
                                      accept=METADATA_ONLY)
    pl_name = by_kind["PriorityLevelConfiguration"]["metadata"]["name"]
    return {"seats": priority_level_seats(cp, (pl_name, "workload-low", "global-default")),
            "operator_kubeconfig": operator, "probe_kubeconfig": probe,
            "service_account": f"{RELEASE_NAMESPACE}/{sa}",
            "flow_schema": fs["metadata"]["name"], "flow_schema_matched": matched == fs["metadata"]["uid"],
            "priority_level": by_kind["PriorityLevelConfiguration"]["metadata"]["name"],
            "priority_level_spec": by_kind["PriorityLevelConfiguration"]["spec"]["limited"],
            "probe_flow_schema": _name_of_uid(cp, "flowschemas", probe_fs),
            "probe_priority_level": _name_of_uid(cp, "prioritylevelconfigurations", probe_pl)}


def priority_level_seats(cp: Any, names: Sequence[str]) -> dict[str, float]:
    """Nominal concurrency limit (seats) of some APF priority levels, from the API server's
    ``apiserver_flowcontrol_nominal_limit_seats`` metric."""
    status, text = cp.request("GET", "/metrics")
    if status != 200 or not isinstance(text, str):
        return {}
    seats = {}
    for line in text.splitlines():
        if line.startswith("apiserver_flowcontrol_nominal_limit_seats{"):
            labels, _, value = line.rpartition(" ")
            level = labels.split('priority_level="', 1)[1].split('"', 1)[0]
            if level in names:
                seats[level] = float(value)
    return seats


# ---------------------------------------------------------------------------------------- one layout


def parse_size(spec: str) -> tuple[int, int]:
    """``N`` (N Secrets over N/100 namespaces) or ``N@M`` (N Secrets over M namespaces)."""
    try:
        size, _, namespaces = spec.partition("@")
        n = int(size)
        m = int(namespaces) if namespaces else max(1, n // 100)
    except ValueError:
        raise SystemExit(f"--sizes: {spec!r} is neither N nor N@M (N Secrets over M namespaces), "
                         "e.g. 20000@5000") from None
    if n < 1 or not 1 <= m <= n:
        raise SystemExit(f"--sizes: {spec!r}: need 1 <= namespaces <= Secrets")
    return n, m


def _cpu(client: float, server: dict[str, float], writes: int) -> dict[str, Any]:
    per = 1000 / max(1, writes)
    total = server.get("apiserver", 0.0) + server.get("etcd", 0.0)
    return {"client_s": round(client, 3), **{f"{k}_s": v for k, v in server.items()},
            "client_per_1k": round(client * per, 3), "server_per_1k": round(total * per, 3),
            "apiserver_per_1k": round(server.get("apiserver", 0.0) * per, 3),
            "etcd_per_1k": round(server.get("etcd", 0.0) * per, 3)}


def seats_for_cores(cores: int) -> list[str]:
    """kube-apiserver flags giving APF 15 seats per core (10 read-only + 5 mutating).

    APF divides *seats* among priority levels, not CPU. kube-apiserver's defaults (400 + 200 seats) suit
    a large control plane; on this benchmark's few shared cores 600 seats are far more requests than the
    cores can serve at once, so a priority level's share (the chart's rewrite level: 24 seats) still
    saturates the machine and says nothing about fairness. Sized to the cores, the shares mean what they
    mean on a control plane sized for its load. Exempt clients (the lab admin: the unthrottled engine,
    the ceilings, kubectl) are not counted against seats, so only the engine under APF and the other
    client feel it.
    """
    return [f"--max-requests-inflight={10 * cores}", f"--max-mutating-requests-inflight={5 * cores}"]


class BenchCluster:
    """A benchmark's control plane: etcd + one kube-apiserver whose aescbc keys stand in for KMS keys
    (``aks_kms_lab.encryption``), seeded with Secrets. ``switch_key`` makes every Secret stale, as a
    KMS key change does. Made by :func:`bench_cluster`."""

    def __init__(self, cp: Any, config: Path, slots: Any, keys: Iterator[str]) -> None:
        self.cp, self.config, self.slots, self._keys = cp, config, slots, keys
        self.creds = self._credentials()
        self.seed_seconds = 0.0

    def _credentials(self) -> Credentials:
        return Credentials(server=self.cp.server, ssl=self.cp.ssl_context(), headers={})

    def switch_key(self) -> str:
        """Write with the next key (restarting the API server); the new key's provider name."""
        from aks_kms_lab.encryption import aescbc_provider, encryption_configuration, provider_name, write_configuration

        self.slots = self.slots.apply(True, next(self._keys))
        write_configuration(self.config, encryption_configuration(self.slots, aescbc_provider))
        self.cp.restart_apiserver(self.config)
        self.creds = self._credentials()
        return provider_name(self.slots.current or "")


@contextlib.contextmanager
def bench_cluster(tmp: Path, size: int, namespaces: int, *, apiserver_args: Sequence[str] = (),
                  apiserver_env: Mapping[str, str] | None = None) -> Iterator[BenchCluster]:
    """A :class:`BenchCluster` in ``tmp`` with ``size`` Secrets over ``namespaces`` namespaces; the
    seeding time is ``seed_seconds`` on it."""
    from aks_kms_lab.controlplane import ControlPlane
    from aks_kms_lab.encryption import KeySlots, aescbc_provider, encryption_configuration, write_configuration
    from aks_kms_lab.seed import seed

    config = tmp / "encryption.yaml"
    keys = iter(f"https://bench.vault.azure.net/keys/k/v{i}" for i in range(1000))
    slots = KeySlots().apply(True, next(keys))
    write_configuration(config, encryption_configuration(slots, aescbc_provider))
    with ControlPlane(tmp / "cp", encryption_config=config, extra_apiserver_args=tuple(apiserver_args),
                      apiserver_env=dict(apiserver_env or {})) as cp:
        cluster = BenchCluster(cp, config, slots, keys)
        t0 = time.monotonic()
        asyncio.run(seed(cluster.creds, size, namespaces))
        cluster.seed_seconds = round(time.monotonic() - t0, 2)
        yield cluster


def parse_env(text: str) -> dict[str, str]:
    """``NAME=VALUE NAME=VALUE`` (``--apiserver-env``) as a mapping; a word without ``=`` is refused."""
    out = {}
    for word in text.split():
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise SystemExit(f"--apiserver-env: {word!r} is not NAME=VALUE (e.g. GOGC=400)")
        out[name] = value
    return out


CONTENDERS = ("engine", "kubectl", "ceiling", "ceiling_go", "engine_apf")


def bench_size(size: int, *, namespaces: int | None = None, concurrency: int = 64, page_size: int = 500,
               ceiling_concurrency: int = 64, skip: Sequence[str] = (), apiserver_args: Sequence[str] = (),
               repeat: int = 1, apf_max_wps: float = 0.0, apiserver_env: Mapping[str, str] | None = None,
               log: Any = print) -> dict[str, Any]:
    namespaces = namespaces or max(1, size // 100)
    label = f"{size}@{namespaces}"
    row: dict[str, Any] = {"size": size, "namespaces": namespaces, "layout": label, "cpus": os.cpu_count(),
                           "import_only_rss_mb": _import_only_rss(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="aks-kms-bench-") as tmp_name:
        tmp = Path(tmp_name)
        logs = Path(tempfile.gettempdir()) / f"aks-kms-bench-{label}.log"  # outlives the control plane
        row["apiserver_args"] = list(apiserver_args)
        row["apiserver_env"] = dict(apiserver_env or {})
        with bench_cluster(tmp, size, namespaces, apiserver_args=apiserver_args,
                           apiserver_env={"GODEBUG": "gctrace=1", **(apiserver_env or {})}) as cluster:
            cp = cluster.cp
            env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
            row["seed_seconds"] = cluster.seed_seconds
            log(f"[{label}] seeded {size} Secrets in {namespaces} namespaces in {row['seed_seconds']} s")
            fixed = next(iter(asyncio.run(_metadata(cluster.creds))))
            row["instrumentation_check_data_bytes"] = asyncio.run(_instrumentation_check(cluster.creds, fixed))
            ids = setup_identities(cp, fixed)
            row["apf"] = {k: v for k, v in ids.items() if not k.endswith("kubeconfig")}
            probe_env = {**os.environ, "KUBECONFIG": str(ids["probe_kubeconfig"])}
            operator_env = {**os.environ, "KUBECONFIG": str(ids["operator_kubeconfig"])}

            def switch_key() -> tuple[str, dict[str, tuple[str, str, str, str]]]:
                target = cluster.switch_key()
                return target, asyncio.run(_metadata(cluster.creds))

            def server_cpu() -> ServerCpu:
                assert cp.etcd is not None and cp.replicas[0] is not None
                return ServerCpu({"apiserver": cp.replicas[0].pid, "etcd": cp.etcd.pid})

            def idle_probe() -> dict[str, Any]:
                """The other client (a ServiceAccount, not exempt from APF) alone for 5 s: the baseline.
                Measured before every round, as the contenders are, and the median reported: one
                5-s window's p99 is its 4th-slowest request, and it varied 2.5-3.9 ms between layouts."""
                probe = _python_child(["probe", "--secret", fixed], probe_env, logs)
                time.sleep(5)
                idle = _stop_probe(probe)
                log(f"[{label}] other client idle: p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms")
                return idle

            def measured(run: Any) -> tuple[dict[str, Any], dict[str, Any]]:
                """Switch the key, then run one contender with the other client probing and the
                server's CPU counted; the contender's figures (with ``changed_rv``) and the probe's,
                with how much of its tail (over 2x the last idle p99) fell in the API server's GC."""
                target, before = switch_key()
                assert cp.replicas[0] is not None
                gc = ApiserverGc(cp.replica_log(0), cp.replicas[0].pid)
                trace = tmp / "probe-trace.tsv"
                probe = _python_child(["probe", "--secret", fixed, "--trace", str(trace)], probe_env, logs)
                time.sleep(0.5)
                cpu = server_cpu()
                result = run(target)
                result["cpu"] = _cpu(result.pop("cpu_seconds"), cpu.stop(), size)
                probed = _stop_probe(probe)
                probed["apiserver_gc"] = gc.report(trace, 2 * (idles[-1]["p99_ms"] or 0.0))
                result["changed_rv"] = _changed(before, asyncio.run(_metadata(cluster.creds)))
                return result, probed

            def engine(run_env: dict[str, str], count_bytes: bool = True, max_wps: float = 0.0) -> Any:
                def run(target: str) -> dict[str, Any]:
                    out, rss, wall = _run_python_child(
                        ["engine", "--target", target, "--concurrency", str(concurrency), "--page-size",
                         str(page_size), "--max-wps", str(max_wps),
                         *([] if count_bytes else ["--no-byte-counter"])], run_env, logs)
                    return {"seconds": round(out["seconds"], 3), "writes_per_s": round(out["writes_per_s"], 1),
                            "peak_rss_mb": round(rss, 1), "process_seconds": round(wall, 3),
                            "concurrency": concurrency, "page_size": page_size, "counters": out["counters"],
                            "throttled": out["throttled"], "bytes_received": out["bytes_received"],
                            "data_bytes_received": out["data_bytes_received"], "responses": out["responses"],
                            "cpu_seconds": out["cpu_seconds"], "byte_counter": count_bytes, "max_wps": max_wps}
                return run

            def kubectl(_target: str) -> dict[str, Any]:
                return {k: round(v, 3) if isinstance(v, float) else v
                        for k, v in _kubectl_replace(cp.kubeconfig, logs).items()}

            def ceiling(go: bool) -> Any:
                def run(_target: str) -> dict[str, Any]:
                    refs = tmp / "refs"
                    t0 = time.monotonic()
                    listed = asyncio.run(_metadata(cluster.creds))  # the pre-fetch: timed separately, not in the rate
                    list_seconds = time.monotonic() - t0
                    if go:
                        refs.write_text("".join(f"{ns}/{n} {uid} {rv}\n" for ns, n, uid, rv in listed.values()))
                        out, rss, client_cpu = _go_ceiling(cp.kubeconfig, refs, ceiling_concurrency, logs)
                        extra = {"statuses": out["statuses"], "http2_answers": out["http2"],
                                 "latency_ms": out["latency_ms"], "errors": out["errors"]}
                    else:
                        refs.write_text(json.dumps([list(v) for v in listed.values()]))
                        out, rss, _ = _run_python_child(["ceiling", "--refs", str(refs), "--concurrency",
                                                         str(ceiling_concurrency)], env, logs)
                        client_cpu, extra = out["cpu_seconds"], {"statuses": out["statuses"]}
                    return {"seconds": round(out["seconds"], 3), "writes_per_s": round(out["writes_per_s"], 1),
                            "peak_rss_mb": round(rss, 1), "list_seconds_excluded": round(list_seconds, 3),
                            "concurrency": ceiling_concurrency, **extra, "cpu_seconds": client_cpu}
                return run

            # The unthrottled engine is timed without the byte counter (its aiohttp trace costs ~20 % of the
            # rate: instrumentation the operator does not have); the engine under APF counts, and its rounds
            # are the proof that no Secret data arrives. Without them, one counted round (not timed) is run.
            plan = {"engine": engine(env, count_bytes=False), "kubectl_replace": kubectl,
                    "ceiling": ceiling(False), "ceiling_go": ceiling(True), "engine_apf": engine(operator_env)}
            if apf_max_wps:  # the engine under APF and paced by spec.rewrite.maxWritesPerSecond as well
                plan["engine_apf_paced"] = engine(operator_env, max_wps=apf_max_wps)
            runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
            idles: list[dict[str, Any]] = []
            for round_no in range(repeat):
                idles.append(idle_probe())
                for name, run in plan.items():
                    if name.replace("_replace", "") in skip or (name == "kubectl_replace" and round_no):
                        continue  # kubectl: once (minutes at 50000, and its shape does not change)
                    result, probed = measured(run)
                    runs.setdefault(name, []).append((result, probed))
                    c, g = result["cpu"], probed["apiserver_gc"]
                    log(f"[{label}] {name} #{round_no + 1}: {result['writes_per_s']:.0f} w/s, "
                        f"{result['peak_rss_mb']:.0f} MB, changed {result['changed_rv']}, "
                        f"CPU/1k client {c['client_per_1k']} s server {c['server_per_1k']} s, other client p50/p99 "
                        f"{_r(probed['p50_ms'])}/{_r(probed['p99_ms'])} ms"
                        + (f", {result['throttled']} x 429" if "throttled" in result else "")
                        + f"; API server GC marking {g.get('marking_share')} of the time (live heap up to "
                        f"{g.get('live_heap_mb_max')} MB), slow requests in marks {g.get('slow_in_marks_share')} "
                        f"of {g.get('slow_requests')}, p99 in/out of marks {_r(g.get('p99_in_marks_ms'))}/"
                        f"{_r(g.get('p99_outside_marks_ms'))} ms")
            if "engine_apf" in skip:  # the data proof: one counted round of the unthrottled engine, not timed
                result, probed = measured(engine(env, count_bytes=True))
                runs["engine_counted"] = [(result, probed)]
                log(f"[{label}] engine_counted (untimed): {result['data_bytes_received']} bytes of Secret data, "
                    f"changed {result['changed_rv']}")
            results: dict[str, Any] = {}
            idle = sorted(idles, key=lambda r: r["p99_ms"] or 0.0)[(len(idles) - 1) // 2]  # median by p99
            probes: dict[str, Any] = {"idle": {**idle, "runs_p99_ms": [_r(r["p99_ms"]) for r in idles]}}
            for name, done in runs.items():
                ordered = sorted(done, key=lambda r: r[0]["writes_per_s"])
                results[name], probes[name] = ordered[(len(ordered) - 1) // 2]  # the median run (lower middle)
                results[name]["runs_writes_per_s"] = [r[0]["writes_per_s"] for r in done]
                results[name]["runs_correct"] = all(r[0]["changed_rv"] == size for r in done)
                probes[name]["runs_p99_ms"] = [_r(r[1]["p99_ms"]) for r in done]

    row.update(results)
    row["load_after"] = os.getloadavg()
    counted = [r[0] for k in ("engine", "engine_apf", "engine_apf_paced", "engine_counted") for r in runs.get(k, [])
               if r[0]["byte_counter"]]
    row["data_bytes_received"] = sum(r["data_bytes_received"] for r in counted)
    row["data_bytes_counted_rounds"] = len(counted)  # engine rounds run with the byte counter
    row["bytes_received"] = {k: results[k]["bytes_received"] for k in ("engine_apf", "engine_counted")
                             if k in results and results[k]["byte_counter"]}
    row["other_clients"] = probes
    row["other_clients_ms"] = {k: {"p50": _r(v["p50_ms"]), "p99": _r(v["p99_ms"])} for k, v in probes.items()}
    row["correct"] = all(results[k]["runs_correct"] for k in results)
    row["repeat"] = repeat
    row["ratios"] = ratios(row)
    return row


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("engine", "ceiling", "probe"):
        return _child_main(argv)
    parser = argparse.ArgumentParser(prog="benchmarks.rewrite", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000 10000 50000",
                        help="N (N Secrets over N/100 namespaces) or N@M (over M namespaces), space-separated")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--concurrency", type=int, default=64,
                        help="the engine's; the same as the ceilings' by default, so the shapes are compared")
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--ceiling-concurrency", type=int, default=64)
    parser.add_argument("--apiserver-args", default=None,
                        help="extra kube-apiserver flags; default: APF seats sized to this machine's cores "
                             f"({' '.join(seats_for_cores(os.cpu_count() or 1))}); \"\" keeps kube-apiserver's "
                             "400 + 200")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every contender (kubectl: once), interleaved; the median run is reported")
    parser.add_argument("--apiserver-env", default="",
                        help="extra environment of kube-apiserver, NAME=VALUE space-separated (e.g. GOGC=400); "
                             "GODEBUG=gctrace=1 is always set, for the GC figures")
    parser.add_argument("--apf-max-wps", type=float, default=0.0,
                        help="also run the engine under APF paced to this many writes/s (engine_apf_paced): "
                             "spec.rewrite.maxWritesPerSecond's effect on the other client")
    parser.add_argument("--skip", default="", help=f"contenders to leave out, space-separated: {' '.join(CONTENDERS)}")
    args = parser.parse_args(argv)
    layouts = [parse_size(s) for s in args.sizes.split()]
    skip = args.skip.split()
    if unknown := set(skip) - set(CONTENDERS):
        raise SystemExit(f"--skip: unknown contender(s) {sorted(unknown)}; choose from {' '.join(CONTENDERS)}")
    if "ceiling_go" not in skip and not loadgen_binary().exists():
        raise SystemExit(f"--skip ceiling_go, or build the Go ceiling first: make tools (no {loadgen_binary()})")
    apiserver_args = (seats_for_cores(os.cpu_count() or 1) if args.apiserver_args is None
                      else args.apiserver_args.split())
    rows = []
    for size, namespaces in layouts:
        rows.append(bench_size(size, namespaces=namespaces, concurrency=args.concurrency, page_size=args.page_size,
                               ceiling_concurrency=args.ceiling_concurrency, skip=skip,
                               apiserver_args=apiserver_args, repeat=max(1, args.repeat),
                               apf_max_wps=args.apf_max_wps, apiserver_env=parse_env(args.apiserver_env),
                               log=lambda msg: print(msg, file=sys.stderr, flush=True)))
    text = json.dumps(rows, indent=2) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    taken = {f.name for f in RESULTS.iterdir()}
    (RESULTS / results_name(dt.date.today().isoformat(), args.sizes.split(), taken)).write_text(text)
    print(markdown_table(rows))
    proven = all(r["data_bytes_received"] == 0 and r["data_bytes_counted_rounds"] for r in rows)
    return 0 if proven and all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
