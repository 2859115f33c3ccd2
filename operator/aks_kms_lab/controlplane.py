"""A real Kubernetes control plane on 127.0.0.1: etcd plus kube-apiserver, nothing else.

Used by the integration tests (one per test session) and by the lab. What it provides:

* etcd and kube-apiserver built by ``make tools`` (``.cache/bin``), on free loopback ports, with a
  throwaway data directory;
* secure serving with a generated CA, client-certificate authentication for the admin
  (``system:masters``), and real service-account tokens (TokenRequest) for named service accounts,
  so RBAC is exercised exactly as in a cluster;
* ``--encryption-provider-config`` with automatic reload, and ``restart_apiserver`` for tests and
  for the lab's "AKS rolls the API server" step;
* kubeconfig files, readiness by ``/readyz``, and a clean stop: no process survives ``stop``, a
  failed test, or even a ``kill -9`` of the parent (see ``processes``).

There is no controller-manager or scheduler: namespaces never finish deleting and no pods run. The
operator and its tests need neither.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .pki import CertificateAuthority, service_account_keypair
from .processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]


def tools_bin() -> Path:
    """Where ``make tools`` puts etcd, kube-apiserver, kubectl and helm."""
    return Path(os.environ.get("AKS_KMS_TOOLS_BIN", REPO_ROOT / ".cache" / "bin"))


def tool(name: str) -> Path:
    path = tools_bin() / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make tools` first (it builds {name} from Go modules)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlaneError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int


class ControlPlane:
    """etcd + kube-apiserver in ``workdir``; see the module docstring."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        encryption_config: Path | None = None,
        tie_to_parent: bool = True,
        extra_apiserver_args: tuple[str, ...] = (),
        audit_secret_writes: bool = False,
    ) -> None:
        self._own_workdir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="aks-kms-cp-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.encryption_config = encryption_config
        self.tie_to_parent = tie_to_parent
        self.extra_apiserver_args = extra_apiserver_args
        self.audit_secret_writes = audit_secret_writes
        self.pki = CertificateAuthority(self.dir / "pki")
        self.ports = self._load_or_pick_ports()
        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None

    # ------------------------------------------------------------------ addresses and files

    def _load_or_pick_ports(self) -> Ports:
        path = self.dir / "ports.json"
        if path.exists():
            return Ports(**json.loads(path.read_text()))
        ports = Ports(free_port(), free_port(), free_port())
        path.write_text(json.dumps(ports.__dict__))
        return ports

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.etcd_client}"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.pki.cert_path

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ControlPlane:
        try:
            self._start_etcd()
            self._start_apiserver()
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
        for proc in (self.apiserver, self.etcd):
            if proc:
                proc.stop()
        self.apiserver = self.etcd = None
        if self._own_workdir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [p.pid for p in (self.etcd, self.apiserver) if p and p.alive()]

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

    def _apiserver_argv(self) -> list[str]:
        serving = self.pki.issue("apiserver", "kube-apiserver", hosts=("127.0.0.1", "localhost"), server=True)
        sa = service_account_keypair(self.dir / "pki")
        argv = [
            str(tool("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports.apiserver}",
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
        if self.audit_secret_writes:
            argv += [f"--audit-policy-file={self._audit_policy()}", f"--audit-log-path={self.audit_log}",
                     "--audit-log-format=json"]
        if self.encryption_config is not None:
            argv += [
                f"--encryption-provider-config={self.encryption_config}",
                "--encryption-provider-config-automatic-reload=true",
            ]
        return argv + list(self.extra_apiserver_args)

    @property
    def audit_log(self) -> Path:
        return self.dir / "logs" / "audit.jsonl"

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
        """Audited Secret writes (namespace, name, user, time), oldest first."""
        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if event.get("verb") == verb and event.get("stage") == "ResponseComplete":
                out.append({"namespace": ref.get("namespace"), "name": ref.get("name"),
                            "code": (event.get("responseStatus") or {}).get("code"),
                            "time": event.get("stageTimestamp")})
        return out

    def _start_apiserver(self) -> None:
        self.apiserver = ManagedProcess(
            "kube-apiserver", self._apiserver_argv(), self.dir / "logs" / "kube-apiserver.log",
            tie_to_parent=self.tie_to_parent,
        ).start()
        self._wait(self._ready, "kube-apiserver", self.apiserver, 90)

    def restart_apiserver(self, encryption_config: Path | bool | None = False) -> None:
        """Roll the API server (as AKS does after a KMS change); ``False`` keeps the current config."""
        if encryption_config is not False:
            self.encryption_config = encryption_config or None  # type: ignore[assignment]
        if self.apiserver:
            self.apiserver.stop()
        self._start_apiserver()

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
                timeout: float = 30) -> tuple[int, Any]:
        """A plain admin API call, for setup in tests and the lab (never on a hot path)."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
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
