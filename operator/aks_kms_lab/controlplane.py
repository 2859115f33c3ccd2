"""A real Kubernetes control plane on 127.0.0.1: etcd plus one or more kube-apiservers, nothing else.

Used by the integration tests (one per test session) and by the lab. What it provides:

* ``apiservers=N`` kube-apiserver replicas on the one etcd, as AKS runs them: each on its own
  loopback port with its OWN encryption configuration file (so a KMS change can be rolled one
  replica at a time, and a replica that has not been rolled keeps serving with its old keys), behind
  a TCP load balancer (``balancer.TcpBalancer``) that spreads new connections round-robin and pins
  each connection to one replica. With N > 1, ``server``, the kubeconfigs and the service-account
  issuer name the balancer; with N = 1 there is no balancer and ``server`` is the one replica;

* etcd and kube-apiserver built by ``make tools`` (``.cache/bin``), on free loopback ports, with a
  throwaway data directory;
* secure serving with a generated CA, client-certificate authentication for the admin
  (``system:masters``), and real service-account tokens (TokenRequest) for named service accounts,
  so RBAC is exercised exactly as in a cluster;
* ``--encryption-provider-config`` with automatic reload, ``restart_replica`` /
  ``stop_replica`` / ``start_replica`` for one replica and ``restart_apiserver`` (all replicas,
  one at a time) for tests and for the lab's "AKS rolls the API server" step;
* one apiserver identity Lease per replica (see :func:`ControlPlane._replica_hostname`);
* kubeconfig files, readiness by ``/readyz``, and a clean stop: no process survives ``stop``, a
  failed test, or even a ``kill -9`` of the parent (see ``processes``).

There is no controller-manager or scheduler: namespaces never finish deleting and no pods run. The
operator and its tests need neither.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .balancer import TcpBalancer
from .pki import CertificateAuthority, service_account_keypair
from .processes import ManagedProcess, can_set_hostname

REPO_ROOT = Path(__file__).resolve().parents[2]


def tools_bin() -> Path:
    """Where ``make tools`` puts etcd, kube-apiserver, kubectl and helm."""
    return Path(os.environ.get("AKS_KMS_TOOLS_BIN", REPO_ROOT / ".cache" / "bin"))


def tool(name: str) -> Path:
    path = tools_bin() / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools` first (it builds {name} from Go modules)")
    return path


DRAIN_SECONDS = 1.0  # see ControlPlane.stop_replica

# Ports handed out by this process and not yet known to be bound by their server (see free_port).
_handed_out: set[int] = set()


def _port_range() -> tuple[int, int] | None:
    """``AKS_KMS_LAB_PORTS=LO-HI`` (both included): ports from this range only; None: the kernel chooses.

    Parallel test workers (``pytest -n``) each get their own range below the kernel's ephemeral range, so
    two labs starting at once never pick the same port, and no outgoing connection (which takes its local
    port from the ephemeral range) can grab a port between our probe and the server's own bind.
    """
    raw = os.environ.get("AKS_KMS_LAB_PORTS", "").strip()
    if not raw:
        return None
    try:
        lo, hi = (int(part) for part in raw.split("-", 1))
    except ValueError:
        raise ValueError(f"AKS_KMS_LAB_PORTS={raw!r}: expected LO-HI, e.g. 20000-21499") from None
    if not 1024 <= lo < hi <= 65535:
        raise ValueError(f"AKS_KMS_LAB_PORTS={raw!r}: expected 1024 <= LO < HI <= 65535")
    return lo, hi


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server we are about to start."""
    span = _port_range()
    if span is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    lo, hi = span  # both ends included
    size = hi - lo + 1
    start = random.randrange(size)
    for offset in range(size):
        port = lo + (start + offset) % size
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            if len(_handed_out) > size // 2:  # long runs: forget what was handed out, those servers are bound
                _handed_out.clear()
                _handed_out.add(port)
            return port
    raise ControlPlaneError(f"no free port left in AKS_KMS_LAB_PORTS={lo}-{hi}")


class ControlPlaneError(RuntimeError):
    pass


class ReplicaNotReady(ControlPlaneError):
    """A replica runs and answers /livez but never became ready (e.g. it cannot decrypt stored Secrets
    and its watch cache never fills); it was put back into rotation as it is."""


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int  # what clients use: the balancer with several replicas, else the one replica
    replicas: tuple[int, ...] = ()  # each replica's own port

    def to_json(self) -> dict[str, Any]:
        return {"etcd_client": self.etcd_client, "etcd_peer": self.etcd_peer, "apiserver": self.apiserver,
                "replicas": list(self.replicas)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ports:
        replicas = tuple(data.get("replicas") or (data["apiserver"],))
        return cls(int(data["etcd_client"]), int(data["etcd_peer"]), int(data["apiserver"]), replicas)


class ControlPlane:
    """etcd + ``apiservers`` kube-apiserver replicas (+ a balancer when several) in ``workdir``."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        apiservers: int = 1,
        encryption_config: Path | None = None,
        tie_to_parent: bool = True,
        extra_apiserver_args: tuple[str, ...] = (),
        audit_secret_writes: bool = False,
        apiserver_env: dict[str, str] | None = None,
    ) -> None:
        """``apiserver_env``: variables added to the replicas' environment (e.g. ``GODEBUG=gctrace=1``,
        which the benchmark reads from the replica's log)."""
        if apiservers < 1:
            raise ValueError("apiservers must be at least 1")
        self._own_workdir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="aks-kms-cp-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.encryption_config = encryption_config
        self.tie_to_parent = tie_to_parent
        self.extra_apiserver_args = extra_apiserver_args
        self.audit_secret_writes = audit_secret_writes
        self.apiserver_env = dict(apiserver_env or {})
        self.pki = CertificateAuthority(self.dir / "pki")
        self.ports = self._load_or_pick_ports(apiservers)
        self.apiservers = len(self.ports.replicas)
        self.etcd: ManagedProcess | None = None
        self.replicas: list[ManagedProcess | None] = [None] * self.apiservers
        # The encryption configuration each replica was last started with (its own copy), None = none.
        self.replica_configs: list[Path | None] = [None] * self.apiservers
        self._replica_locks = [threading.RLock() for _ in range(self.apiservers)]
        self.balancer: TcpBalancer | None = None
        self.distinct_identities = self.apiservers > 1 and can_set_hostname()

    # ------------------------------------------------------------------ addresses and files

    def _load_or_pick_ports(self, apiservers: int) -> Ports:
        """Ports persist in ``ports.json`` so a handle on a running control plane (``lab``) finds them.

        A saved file wins over ``apiservers`` (an outside handle need not know how many replicas run);
        a larger ``apiservers`` adds replicas.
        """
        path = self.dir / "ports.json"
        if path.exists():
            ports = Ports.from_json(json.loads(path.read_text()))
            if len(ports.replicas) >= apiservers:
                return ports
            replicas = ports.replicas + tuple(free_port() for _ in range(apiservers - len(ports.replicas)))
            front = ports.apiserver if len(ports.replicas) > 1 else free_port()
            ports = Ports(ports.etcd_client, ports.etcd_peer, front, replicas)
        else:
            replicas = tuple(free_port() for _ in range(apiservers))
            front = replicas[0] if apiservers == 1 else free_port()
            ports = Ports(free_port(), free_port(), front, replicas)
        path.write_text(json.dumps(ports.to_json()))
        return ports

    @property
    def server(self) -> str:
        """The API as clients see it: the balancer (several replicas) or the one replica."""
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def replica_servers(self) -> list[str]:
        """Each replica's own URL (bypassing the balancer)."""
        return [f"https://127.0.0.1:{port}" for port in self.ports.replicas]

    @property
    def balanced(self) -> bool:
        return self.apiservers > 1

    @property
    def apiserver(self) -> ManagedProcess | None:
        """Replica 0 (the only one with ``apiservers=1``)."""
        return self.replicas[0]

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.etcd_client}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.pki.cert_path

    def replica_config_path(self, index: int) -> Path:
        """Replica ``index``'s own EncryptionConfiguration file (a copy; only a roll changes it)."""
        return self.dir / f"replica-{index}" / "encryption.yaml"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ControlPlane:
        try:
            self._start_etcd()
            # Start every replica at once, then wait for each: measured on 2 cores, 1/2/3 replicas are
            # ready in 4.1/4.9/5.7 s.
            for i in range(self.apiservers):
                self._spawn_replica(i, self.encryption_config)
            for i in range(self.apiservers):
                self._wait(lambda i=i: self.replica_ready(i), f"kube-apiserver replica {i}", self.replicas[i], 90)
            if self.balanced:
                self.balancer = TcpBalancer([("127.0.0.1", p) for p in self.ports.replicas],
                                            port=self.ports.apiserver).start()
                self._wait(self._ready, "the API through the balancer", None, 30)
            self._write_admin_kubeconfig()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
            self.balancer = None
        for i, proc in enumerate(self.replicas):
            if proc:
                proc.stop()
            self.replicas[i] = None
        if self.etcd:
            self.etcd.stop()
        self.etcd = None
        if self._own_workdir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """Every process of this control plane that is alive (the balancer is a thread, not a process)."""
        return [p.pid for p in (self.etcd, *self.replicas) if p and p.alive()]

    def _start_etcd(self) -> None:
        data = self.dir / "etcd-data"
        p = self.ports
        self.etcd = ManagedProcess(
            "etcd",
            [
                str(tool("etcd")),
                "--name=lab",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
                f"--initial-cluster=lab=http://127.0.0.1:{p.etcd_peer}",
                "--unsafe-no-fsync",  # a throwaway lab: durability across power loss is not a goal
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
            self.dir / "logs" / "etcd.log",
            tie_to_parent=self.tie_to_parent,
        ).start()
        self._wait(lambda: self._http_ok(f"{self.etcd_url}/health"), "etcd", self.etcd, 30)

    def _replica_hostname(self, index: int) -> str | None:
        """The host name replica ``index`` runs under, or None for the machine's own.

        kube-apiserver names its identity Lease (kube-system, label
        ``apiserver.kubernetes.io/identity=kube-apiserver``) ``apiserver-<hash>``, where the hash is
        taken over ``os.Hostname()`` and the fixed string "kube-apiserver" only
        (k8s.io/apiserver/pkg/server/config.go, ``NewConfig``); no flag or environment variable
        changes it. Replicas on one machine would therefore share one Lease. So each replica of a
        multi-replica control plane runs in a UTS namespace of its own with the host name
        ``lab-apiserver-<i>`` (``processes.ManagedProcess(hostname=...)``), which gives each its own
        Lease as on AKS. Without the privilege for that (not root), replicas share the Lease; that
        only makes the Lease's holder flip between them on renewals, and nothing in the lab or the
        operator reads it.
        """
        return f"lab-apiserver-{index}" if self.distinct_identities else None

    def _apiserver_argv(self, index: int, config: Path | None) -> list[str]:
        serving = self.pki.issue(f"apiserver-{index}", f"kube-apiserver-{index}", hosts=("127.0.0.1", "localhost"),
                                 server=True)
        sa = service_account_keypair(self.dir / "pki")
        argv = [
            str(tool("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.replicas[index]}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={self.pki.cert_path}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=true",
            "--profiling=false",
            f"--cert-dir={self.dir / 'pki'}",
            "--v=1",
        ]
        if self.balanced:
            # Every replica advertises 127.0.0.1 with its own port; the lease endpoint reconciler would
            # rewrite the `kubernetes` Service's port every 10 s, replica against replica. Nothing in
            # the lab uses that Service (no pods, no kube-proxy).
            argv.append("--endpoint-reconciler-type=none")
        if self.audit_secret_writes:
            argv += [f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self._audit_log(index)}",
                     "--audit-log-format=json"]
        if config is not None:
            argv += [
                f"--encryption-provider-config={config}",
                "--encryption-provider-config-automatic-reload=true",
            ]
        return argv + list(self.extra_apiserver_args)

    @property
    def audit_log(self) -> Path:
        """Replica 0's audit log (see :meth:`secret_writes` for all replicas)."""
        return self._audit_log(0)

    def _audit_log(self, index: int) -> Path:
        return self.dir / "logs" / ("audit.jsonl" if index == 0 else f"audit-{index}.jsonl")

    def _audit_policy(self) -> Path:
        """Record every write to a Secret (metadata level: never the data), nothing else."""
        path = self.dir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "verbs": ["patch", "update", "create", "delete"],
                       "resources": [{"group": "", "resources": ["secrets"]}]},
                      {"level": "None"}],
        }))
        return path

    def secret_writes(self, verb: str = "patch") -> list[dict[str, Any]]:
        """Audited Secret writes (namespace, name, code, time, replica) of every replica, oldest first."""
        out = []
        for index in range(self.apiservers):
            path = self._audit_log(index)
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                event = json.loads(line)
                ref = event.get("objectRef") or {}
                if event.get("verb") == verb and event.get("stage") == "ResponseComplete":
                    out.append({"namespace": ref.get("namespace"), "name": ref.get("name"),
                                "code": (event.get("responseStatus") or {}).get("code"),
                                "time": event.get("stageTimestamp"), "replica": index})
        return sorted(out, key=lambda w: w["time"] or "")

    # ------------------------------------------------------------------ replicas

    def _spawn_replica(self, index: int, config: Path | bool | None) -> None:
        """Start replica ``index`` (not waiting); ``config``: a file to copy in, None = no encryption,
        False = the copy it had."""
        if config is not False:
            if config is None:
                self.replica_configs[index] = None
            else:
                own = self.replica_config_path(index)
                own.parent.mkdir(parents=True, exist_ok=True)
                tmp = own.with_suffix(".tmp")
                shutil.copyfile(config, tmp)  # type: ignore[arg-type]
                tmp.replace(own)
                self.replica_configs[index] = own
        self.replicas[index] = ManagedProcess(
            f"kube-apiserver-{index}", self._apiserver_argv(index, self.replica_configs[index]),
            self.replica_log(index),
            tie_to_parent=self.tie_to_parent, hostname=self._replica_hostname(index),
            env={**os.environ, **self.apiserver_env} if self.apiserver_env else None,
        ).start()

    def replica_log(self, index: int) -> Path:
        """Replica ``index``'s log (stdout and stderr), appended across restarts."""
        return self.dir / "logs" / ("kube-apiserver.log" if index == 0 else f"kube-apiserver-{index}.log")

    def stop_replica(self, index: int) -> None:
        """Take replica ``index`` out of the balancer's rotation, let the requests it is serving finish
        (up to ``DRAIN_SECONDS``, as a load balancer's deregistration delay does), then stop it: the
        connections still open then (watches, kept-alive clients) drop."""
        with self._replica_locks[index]:
            if self.balancer is not None:
                self.balancer.set_in_rotation(index, False)
                # A connection accepted just before the switch would otherwise meet a replica in shutdown (503).
                deadline = time.monotonic() + DRAIN_SECONDS
                while self.balancer.stats[index].active and time.monotonic() < deadline:
                    time.sleep(0.05)
            proc = self.replicas[index]
            if proc is not None:
                proc.stop()
            self.replicas[index] = None

    def start_replica(self, index: int, encryption_config: Path | bool | None = False,
                      timeout: float = 90, *, accept_live: bool = False) -> None:
        """Start replica ``index`` (``encryption_config`` as in :meth:`restart_replica`), wait for its
        /readyz, then put it back into the balancer's rotation.

        ``accept_live``: if it is not ready after ``timeout`` but answers /livez, put it into
        rotation anyway and raise :class:`ReplicaNotReady` (what a rolled AKS control plane that
        cannot read its own Secrets looks like: serving, with errors)."""
        with self._replica_locks[index]:
            if self.replicas[index] is not None and self.replicas[index].alive():  # type: ignore[union-attr]
                raise ControlPlaneError(f"replica {index} is already running")
            self._spawn_replica(index, encryption_config)
            try:
                self._wait(lambda: self.replica_ready(index), f"kube-apiserver replica {index}",
                           self.replicas[index], timeout)
            except ControlPlaneError:
                if not (accept_live and self.replica_live(index)):
                    raise
                if self.balancer is not None:
                    self.balancer.set_in_rotation(index, True)
                raise ReplicaNotReady(f"kube-apiserver replica {index} is live but not ready after {timeout:.0f}s: "
                                      f"{self.readyz_failures(index)}") from None
            if self.balancer is not None:
                self.balancer.set_in_rotation(index, True)

    def restart_replica(self, index: int, encryption_config: Path | bool | None = False,
                        timeout: float = 90, *, accept_live: bool = False) -> None:
        """Roll one replica: out of rotation, stop, start with ``encryption_config`` (a file copied into
        the replica's own; None: no encryption; False: keep its current one), wait until ready, back
        into rotation. The other replicas keep serving with whatever configuration they have."""
        with self._replica_locks[index]:
            self.stop_replica(index)
            self.start_replica(index, encryption_config, timeout, accept_live=accept_live)

    def restart_apiserver(self, encryption_config: Path | bool | None = False) -> None:
        """Roll every replica, one at a time (as AKS does after a KMS change); ``False`` keeps each
        replica's current configuration."""
        if encryption_config is not False:
            self.encryption_config = encryption_config or None  # type: ignore[assignment]
        for index in range(self.apiservers):
            self.restart_replica(index, encryption_config)

    def _replica_ok(self, index: int, path: str) -> bool:
        try:
            status, _ = self.request("GET", path, timeout=3, server=self.replica_servers[index])
        except OSError:
            return False
        return status == 200

    def replica_ready(self, index: int) -> bool:
        return self._replica_ok(index, "/readyz")

    def replica_live(self, index: int) -> bool:
        return self._replica_ok(index, "/livez")

    def readyz_failures(self, index: int) -> str:
        """The failing /readyz checks of one replica (names only), for messages."""
        try:
            _, body = self.request("GET", "/readyz?verbose", timeout=3, server=self.replica_servers[index])
        except OSError as err:
            return str(err)
        failing = [line.strip() for line in str(body).splitlines() if line.startswith("[-]")]
        return ", ".join(failing) or "no failing check reported"

    def identity_leases(self) -> list[str]:
        """Names of the kube-apiserver identity Leases in kube-system (one per replica host name)."""
        status, body = self.request(
            "GET", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
                   "?labelSelector=apiserver.kubernetes.io%2Fidentity%3Dkube-apiserver")
        if status != 200:
            raise ControlPlaneError(f"listing identity leases: {status} {body}")
        return sorted(item["metadata"]["name"] for item in body.get("items") or [])

    def _wait(self, check: Any, what: str, proc: ManagedProcess | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise ControlPlaneError(f"{what} exited during start-up:\n{proc.log_tail()}")
            if check():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{what} not ready after {timeout:.0f}s:\n{proc.log_tail() if proc else ''}")

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    # ------------------------------------------------------------------ API access (admin)

    def _admin_cert(self) -> tuple[Path, Path]:
        pair = self.pki.issue("admin", "lab-admin", organizations=("system:masters",))
        return pair.cert, pair.key

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.cert_path))
        cert, key = self._admin_cert()
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                timeout: float = 30, server: str | None = None, accept: str = "application/json") -> tuple[int, Any]:
        """A plain admin API call, for setup in tests and the lab (never on a hot path).

        Each call is a new connection, so through the balancer calls spread over the replicas;
        ``server`` (one of :attr:`replica_servers`) talks to one replica directly. ``accept`` asks for
        another representation (metadata-only answers for Secrets)."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request((server or self.server) + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": accept})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as r:
                return r.status, _decode(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read())

    def _ready(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz", timeout=3)
        except OSError:
            return False
        return status == 200

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply one object as the lab admin."""
        api = obj["apiVersion"]
        base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
        plural = _PLURALS[obj["kind"]]
        ns = obj["metadata"].get("namespace")
        path = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        path += f"/{obj['metadata']['name']}?fieldManager=aks-kms-lab&force=true"
        status, out = self.request("PATCH", path, obj, content_type="application/apply-patch+yaml")
        if status >= 300:
            raise ControlPlaneError(f"apply {obj['kind']}/{obj['metadata']['name']}: {status} {out}")
        return out

    # ------------------------------------------------------------------ kubeconfigs

    def _kubeconfig(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {"server": self.server,
                                                     "certificate-authority": str(self.pki.cert_path)}}],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "user"}}],
            "current-context": "lab",
        }

    def _write_admin_kubeconfig(self) -> None:
        cert, key = self._admin_cert()
        config = self._kubeconfig({"client-certificate": str(cert), "client-key": str(key)})
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def service_account_kubeconfig(self, namespace: str, name: str, *, hours: int = 24) -> Path:
        """Create the namespace and ServiceAccount if needed and mint a real bound token for it."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace}})
        status, out = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": hours * 3600}},
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: {status} {out}")
        path = self.dir / f"kubeconfig-{namespace}-{name}"
        path.write_text(yaml.safe_dump(self._kubeconfig({"token": out["status"]["token"]})))
        path.chmod(0o600)
        return path


def _decode(raw: bytes) -> Any:
    """JSON when it is JSON (API objects), text otherwise (/readyz, plain-text 429s)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


_PLURALS = {
    "Namespace": "namespaces",
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "CustomResourceDefinition": "customresourcedefinitions",
    "ClusterEncryptionPolicy": "clusterencryptionpolicies",
}
