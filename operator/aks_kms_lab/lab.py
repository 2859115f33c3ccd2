"""The lab: a local "AKS" (real etcd + kube-apiserver with KMS v2 plugins, fake Azure) in one directory.

:class:`LabRuntime` runs everything in-process (the supervisor process runs one until SIGTERM).
:func:`up`, :func:`down`, :func:`status`, :func:`seed_lab` and :func:`verify_lab` work on a lab
directory from the outside, as the ``aks-kms-operator lab`` CLI and the e2e tests do.

Files in the lab directory::

    supervisor.pid  supervisor.log  ready | failed
    controlplane/   etcd + kube-apiserver replicas (ports.json, pki/, logs/, replica-<i>/encryption.yaml)
    azure/          the fake Azure's CA and write log
    kms/            one KMS v2 plugin socket per loaded key version
    encryption.yaml the API server's EncryptionConfiguration   slots.json  AKS's KMS key slots
    kubeconfig      admin kubeconfig    env  operator environment (KEY=VALUE)    world.json  seeded IDs
    seed.json       digests of seeded Secrets (never their data)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .aks_sim import ApiServerKms
from .controlplane import REPO_ROOT, ControlPlane
from .encryption import KeySlots, encryption_configuration, kms_v2_provider, provider_name, write_configuration
from .fake_azure.server import AZURE_HOSTS
from .processes import pid_alive, stop_pid
from .proxy import AzureProxy
from .verify import (
    IDENTITY,
    ApiReadReport,
    DigestReport,
    VerifyReport,
    check_digests,
    read_through_api,
    secret_names,
    snapshot_digests,
    verify_etcd,
)
from .world import OPERATOR_NAMESPACE, LabWorld, operator_env, platform_key, seed_azure

log = logging.getLogger(__name__)

DEFAULT_DIR = REPO_ROOT / ".lab"
CRD = REPO_ROOT / "manifests" / "crd" / "clusterencryptionpolicies.yaml"
POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"
READY_TIMEOUT = 120.0
DEFAULT_APISERVERS = 2  # AKS runs several replicas behind a load balancer; see docs/lab.md for the cost


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @property
    def pid(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def ready(self) -> Path:
        return self.root / "ready"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def controlplane(self) -> Path:
        return self.root / "controlplane"

    @property
    def azure(self) -> Path:
        return self.root / "azure"

    @property
    def kms(self) -> Path:
        return self.root / "kms"

    @property
    def encryption(self) -> Path:
        return self.root / "encryption.yaml"

    @property
    def slots(self) -> Path:
        return self.root / "slots.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def world(self) -> Path:
        return self.root / "world.json"

    @property
    def seed(self) -> Path:
        return self.root / "seed.json"


# ---------------------------------------------------------------------------------- in-process runtime


class LabRuntime:
    """Control plane, fake Azure, one KMS v2 plugin per loaded key version, AKS's KMS behaviour.

    ``apiservers`` kube-apiserver replicas behind the balancer; ``roll_interval`` and
    ``lag_last_seconds`` are AKS-sim's (``aks_sim.ApiServerKms``); change them later on ``kms``.
    """

    def __init__(self, root: Path, *, apiservers: int = 1, roll_interval: float = 0.0,
                 lag_last_seconds: float | None = None, detection_interval: float | None = None) -> None:
        self.paths = LabPaths(Path(root).resolve())
        # How often the lab's AKS looks for a new customer key version on the Managed experience (AKS: about
        # 6 hours; the lab: LAB_AKS_KEY_DETECTION_SECONDS, default 20 s).
        self.detection_interval = detection_interval if detection_interval is not None else float(
            os.environ.get("LAB_AKS_KEY_DETECTION_SECONDS", "20"))
        self.apiservers = apiservers
        self.roll_interval = roll_interval
        self.lag_last_seconds = lag_last_seconds
        self.cp: ControlPlane | None = None
        self.fake: Any = None
        self.world: LabWorld | None = None
        self.env: dict[str, str] = {}
        self.kms: ApiServerKms | None = None
        self.plugins: dict[str, Any] = {}
        self.proxy: Any = None
        self._plugin_lock = threading.Lock()

    def socket_for(self, key_url: str) -> Path:
        return self.paths.kms / f"{provider_name(key_url)}.sock"

    def _load_key(self, key_url: str) -> None:
        from .kmsv2 import KeyVaultWrapper, PluginServer

        with self._plugin_lock:
            if key_url in self.plugins:
                return
            wrapper = KeyVaultWrapper.from_env(key_url, self.env)
            self.plugins[key_url] = PluginServer(self.socket_for(key_url), wrapper).start()

    def start(self) -> LabRuntime:
        from .fake_azure import FakeAzure

        p = self.paths
        p.root.mkdir(parents=True, exist_ok=True)
        p.kms.mkdir(exist_ok=True)
        provider = kms_v2_provider(self.socket_for)
        try:
            write_configuration(p.encryption, encryption_configuration(KeySlots(), provider))
            self.cp = ControlPlane(p.controlplane, apiservers=self.apiservers, encryption_config=p.encryption).start()
            self.cp.apply(yaml.safe_load(CRD.read_text()))
            self.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
            _wait(lambda: self.cp.request("GET", "/apis/aks-kms.dev/v1alpha1")[0] == 200, 60, "CRD served")
            self.fake = FakeAzure(p.azure).start()
            self.proxy = AzureProxy(self.fake.public_port, AZURE_HOSTS).start()
            forget_key_vault_challenges()
            self.world = seed_azure(self.fake)
            shutil.copyfile(self.cp.kubeconfig, p.kubeconfig)
            p.kubeconfig.chmod(0o600)
            self.env = operator_env(self.fake, p.kubeconfig)
            fake = self.fake
            self.kms = ApiServerKms(self.cp, p.encryption, provider, load_key=self._load_key, state_path=p.slots,
                                    roll_interval=self.roll_interval, lag_last_seconds=self.lag_last_seconds,
                                    resolve_key=fake.newest_key_version, platform_key=lambda: platform_key(fake),
                                    detection_interval=self.detection_interval)
            self.kms.write_config()  # records the (empty) slots
            if self.kms.managed_source:
                self.kms.start_detector()
            self.fake.on_kms_change = self.kms.on_kms_change
            self._write_files()
            p.pid.write_text(str(os.getpid()))  # the supervisor, or the test process running it in-process
            p.ready.write_text("ready\n")
        except BaseException:
            self.stop()
            raise
        return self

    def _write_files(self) -> None:
        assert self.cp and self.world
        p = self.paths
        extra = {f"LAB_KEY_V{i + 1}": url for i, url in enumerate(self.world.key_versions)}
        extra["LAB_PRIVATE_KEY"] = self.world.private_key_versions[0]
        extra["LAB_PRIVATE_VAULT_ID"] = self.world.private_vault_id
        extra["ETCD_URL"] = self.cp.etcd_url
        extra["LAB_AZ_PROXY"] = self.proxy.url  # see az_env(): the Azure CLI's way in
        extra["LAB_SP_OBJECT_ID"] = self.fake.principal_id  # the lab app's service principal (object ID)
        extra["LAB_AZ_USER"] = self.fake.user_name  # the directory user `lab env --az` signs in
        extra["LAB_AZ_PASSWORD"] = self.fake.user_password
        lines = [f"{k}={shlex.quote(v)}" for k, v in {**self.env, **extra}.items()]
        p.env.write_text("\n".join(lines) + "\n")
        p.env.chmod(0o600)  # holds the fake Azure's client secret
        p.world.write_text(json.dumps(asdict(self.world), indent=2))

    def stop(self) -> None:
        self.paths.ready.unlink(missing_ok=True)
        if self.kms is not None:
            self.kms.close()  # a lagging roll must not restart a replica of a stopped control plane
        for plugin in list(self.plugins.values()):
            with contextlib.suppress(Exception):
                plugin.stop()
        self.plugins.clear()
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.fake is not None:
            self.fake.stop()
            self.fake = None
        if self.cp is not None:
            self.cp.stop()
            self.cp = None

    def pids(self) -> list[int]:
        return self.cp.pids() if self.cp else []


def forget_key_vault_challenges() -> None:
    """Forget every vault's cached challenge before a new lab's plugins start.

    azure-keyvault keeps every vault's authentication challenge (which names the tenant) in a
    process-wide cache keyed by host. Every fake is the one tenant ``fake_azure.server.TENANT_ID``,
    but a fake given a tenant of its own serves the same vault host names; had one run earlier in this
    process, the new lab's plugins would ask for tokens of that tenant, and the credential refuses
    before sending anything. Real vault names are global, so this cannot happen against Azure; it is
    the lab's to undo.
    """
    from azure.keyvault.keys._shared import http_challenge_cache

    http_challenge_cache.clear()


def _wait(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------------------------- the lab from outside


def supervisor_pid(root: Path) -> int | None:
    path = LabPaths(Path(root)).pid
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_running(root: Path) -> bool:
    pid = supervisor_pid(root)
    return bool(pid and pid_alive(pid) and LabPaths(Path(root)).ready.exists())


def up(root: Path = DEFAULT_DIR, *, timeout: float = READY_TIMEOUT, apiservers: int = DEFAULT_APISERVERS,
       roll_interval: float = 0.0, lag_last_seconds: float | None = None) -> str:
    """Start the detached supervisor and wait until the lab is ready; 'started' or 'running'."""
    p = LabPaths(Path(root).resolve())
    pid = supervisor_pid(p.root)
    if pid and pid_alive(pid):
        if p.ready.exists():
            return "running"
        raise LabError(f"a lab supervisor (pid {pid}) is starting in {p.root}; wait, or run `lab down`")
    if p.root.exists() and any(p.root.iterdir()):
        raise LabError(f"{p.root} holds a stale lab (its supervisor is not running); "
                       f"run `aks-kms-operator lab down{_dir_arg(p.root)}` to clean it, then `lab up` again")
    p.root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "operator"),
                                                                      os.environ.get("PYTHONPATH")]))}
    with open(p.log, "ab") as out:
        argv = [sys.executable, "-m", "aks_kms_lab.supervisor", "--dir", str(p.root), "--apiservers", str(apiservers),
                "--roll-interval", str(roll_interval)]
        if lag_last_seconds is not None:
            argv += ["--lag-last", str(lag_last_seconds)]
        proc = subprocess.Popen(argv,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=str(p.root))
    p.pid.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.ready.exists():
            return "started"
        if p.failed.exists() or proc.poll() is not None:
            break
        time.sleep(0.2)
    else:
        stop_pid(proc.pid)
        raise LabError(f"the lab was not ready after {timeout:.0f}s; see {p.log}; run `lab down` to clean up")
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    tail = "\n".join(p.log.read_text(errors="replace").splitlines()[-20:]) if p.log.exists() else ""
    raise LabError(f"the lab failed to start (see {p.log}); run `lab down` to clean up\n{tail}")


def _dir_arg(root: Path) -> str:
    return "" if root == DEFAULT_DIR.resolve() else f" --dir {root}"


def _leftover_pids(root: Path) -> list[int]:
    """Processes started for this lab directory (etcd, kube-apiserver) that outlived the supervisor."""
    found: list[int] = []
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle + b"/" in cmdline or b"\x00" + needle + b"\x00" in b"\x00" + cmdline:  # a path under it, or it
            found.append(int(entry.name))
    return found


def down(root: Path = DEFAULT_DIR) -> bool:
    """Stop the supervisor (and anything left of the lab), remove the directory. True if there was a lab."""
    p = LabPaths(Path(root).resolve())
    if not p.root.exists():
        return False
    pid = supervisor_pid(p.root)
    if pid and pid_alive(pid):
        stop_pid(pid, timeout=60)
    for leftover in _leftover_pids(p.root):
        stop_pid(leftover, timeout=10)
    shutil.rmtree(p.root, ignore_errors=True)
    return True


def read_env(root: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in LabPaths(Path(root)).env.read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = shlex.split(value)[0] if value else ""
    return env


AZ_CLI_VENV = REPO_ROOT / ".cache" / "azure-cli" / "bin"  # `make azure-cli` installs it there


def az_env(root: Path = DEFAULT_DIR) -> dict[str, str]:
    """The environment under which the real Azure CLI talks to a running lab, with Azure's own names.

    ``HTTPS_PROXY`` is the lab's proxy (only Entra, ARM, Graph and ``*.vault.azure.net``, all answered
    by the fake; see ``proxy.py``), ``REQUESTS_CA_BUNDLE`` the fake's CA, ``AZURE_CONFIG_DIR`` a
    directory inside the lab (``~/.azure`` is left alone and ``lab down`` forgets the login), and
    ``NO_PROXY`` keeps the lab's own 127.0.0.1 endpoints (API server, etcd) direct. ``KUBECONFIG``
    points kubectl at the lab, so the seed's ``kubectl get secrets -A -o json | kubectl replace -f -``
    runs as written. ``LAB_AZ_USER``/``LAB_AZ_PASSWORD`` are the lab's directory user, whom
    :func:`az_env_script` signs in (the Azure docs' commands assume a signed-in user: ``az ad
    signed-in-user show``); the lab app's service principal and its object ID (``LAB_SP_OBJECT_ID``) are
    exported too, for ``az login --service-principal`` or the operator.
    """
    p = LabPaths(Path(root).resolve())
    if not is_running(p.root):
        raise LabError(f"no running lab in {p.root}; run `lab up` first")
    env = read_env(p.root)
    if not {"LAB_AZ_PROXY", "LAB_AZ_USER", "LAB_AZ_PASSWORD", "LAB_SP_OBJECT_ID"} <= env.keys():
        raise LabError(f"the lab in {p.root} has no Azure proxy or lab user (started by an older version); "
                       "run `lab down` and `lab up`")
    world = read_world(p.root)
    return {
        "HTTPS_PROXY": env["LAB_AZ_PROXY"],
        "NO_PROXY": "127.0.0.1,localhost",
        "REQUESTS_CA_BUNDLE": env["AKS_KMS_CA_BUNDLE"],
        "AZURE_CONFIG_DIR": str(p.root / "az"),
        "AZURE_CORE_COLLECT_TELEMETRY": "false",  # telemetry would try a host the proxy refuses
        "AZURE_TENANT_ID": env["AZURE_TENANT_ID"],
        "AZURE_CLIENT_ID": env["AZURE_CLIENT_ID"],
        "AZURE_CLIENT_SECRET": env["AZURE_CLIENT_SECRET"],
        "LAB_SP_OBJECT_ID": env["LAB_SP_OBJECT_ID"],
        "LAB_AZ_USER": env["LAB_AZ_USER"],
        "LAB_AZ_PASSWORD": env["LAB_AZ_PASSWORD"],
        "LAB_SUBSCRIPTION": world.public_vault_id.split("/")[2],
        "KUBECONFIG": str(p.kubeconfig),
    }


def az_env_script(root: Path = DEFAULT_DIR) -> str:
    """``lab env --az``: shell exports of :func:`az_env`, then the lab user's login (``--only-show-errors``
    hides az's warning that password sign-in does not work with MFA, which the lab has not)."""
    env = az_env(root)
    lines = ["# the Azure CLI against the lab: eval \"$(aks-kms-operator lab env --az)\""]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if (AZ_CLI_VENV / "az").exists():  # `make azure-cli`'s az, after any az already on PATH
        lines.append(f'export PATH="$PATH":{shlex.quote(str(AZ_CLI_VENV.parent / "shim"))}')
        shim = AZ_CLI_VENV.parent / "shim"
        shim.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another lab (test worker) made it first
            (shim / "az").symlink_to(AZ_CLI_VENV / "az")
    lines.append('az login --username "$LAB_AZ_USER" --password "$LAB_AZ_PASSWORD" --output none --only-show-errors')
    return "\n".join(lines) + "\n"


def read_world(root: Path) -> LabWorld:
    return LabWorld(**json.loads(LabPaths(Path(root)).world.read_text()))


def control_plane(root: Path) -> ControlPlane:
    """An admin handle on a running lab's API server (does not start anything)."""
    return ControlPlane(LabPaths(Path(root).resolve()).controlplane, tie_to_parent=False)


def status(root: Path = DEFAULT_DIR) -> dict[str, Any]:
    p = LabPaths(Path(root).resolve())
    pid = supervisor_pid(p.root)
    out: dict[str, Any] = {"dir": str(p.root), "running": is_running(p.root), "supervisorPid": pid}
    if not p.root.exists():
        out["state"] = "absent"
        return out
    out["state"] = "running" if out["running"] else ("starting" if pid and pid_alive(pid) else "stale")
    ports = p.controlplane / "ports.json"
    slots = json.loads(p.slots.read_text()) if p.slots.exists() else {}
    if ports.exists():
        ports_data = json.loads(ports.read_text())
        out["apiserver"] = f"https://127.0.0.1:{ports_data['apiserver']}"
        out["etcd"] = f"http://127.0.0.1:{ports_data['etcd_client']}"
        replicas = ports_data.get("replicas") or [ports_data["apiserver"]]
        out["balancer"] = out["apiserver"] if len(replicas) > 1 else None
        out["replicas"] = _replica_status(p.root, replicas, slots.get("replicas") or [], out["running"])
    if p.env.exists():
        env = read_env(p.root)
        out["fakeAzure"] = env.get("AKS_KMS_ARM_ENDPOINT")
        out["azProxy"] = env.get("LAB_AZ_PROXY")
    out["kubeconfig"] = str(p.kubeconfig)
    if slots:
        out["kms"] = {k: v for k, v in slots.items() if k != "replicas"}
    out["plugins"] = sorted(s.name for s in p.kms.glob("*.sock")) if p.kms.exists() else []
    return out


def _replica_status(root: Path, ports: list[int], slots: list[dict[str, Any]], probe: bool) -> list[dict[str, Any]]:
    """Each replica: URL, whether /readyz answers 200 (only asked of a running lab), the keys it loads."""
    cp = control_plane(root)
    out = []
    for i, port in enumerate(ports):
        url = f"https://127.0.0.1:{port}"
        ready: bool | None = None
        if probe:
            try:
                ready = cp.request("GET", "/readyz", timeout=3, server=url)[0] == 200
            except OSError:
                ready = False
        entry: dict[str, Any] = {"index": i, "server": url, "ready": ready}
        if i < len(slots):
            entry["kms"] = slots[i]
        out.append(entry)
    return out


def _credentials(root: Path) -> Any:
    from aks_kms_operator.kube import Credentials

    cp = control_plane(root)
    ctx = ssl.create_default_context(cafile=str(cp.ca_path))
    cert, key = cp._admin_cert()
    ctx.load_cert_chain(str(cert), str(key))
    return Credentials(server=cp.server, ssl=ctx, headers={})


def seed_lab(root: Path = DEFAULT_DIR, *, secrets: int, namespaces: int, prefix: str = "team") -> int:
    """Create Secrets through the API; record content digests (not data) in ``seed.json``."""
    from .seed import namespace_names, save_digests, seed

    p = LabPaths(Path(root).resolve())
    if not is_running(p.root):
        raise LabError(f"no running lab in {p.root}; run `lab up` first")
    asyncio.run(seed(_credentials(p.root), secrets, namespaces, prefix=prefix))
    digests = snapshot_digests(control_plane(p.root), namespaces=namespace_names(namespaces, prefix))
    save_digests(p.seed, digests)
    return len(digests)


@dataclass
class LabVerification:
    expected: str | None
    report: VerifyReport
    content: DigestReport | None
    key_labels: dict[str, str]  # key URL -> V1/V2/... for display
    api: ApiReadReport | None = None  # every Secret read through the API (None: not asked, --no-content)

    @property
    def unreadable(self) -> list[str]:
        """Secrets the API cannot serve (namespace/name), e.g. stored under a key no API server loads."""
        return sorted(self.api.unreadable) if self.api else []

    @property
    def ok(self) -> bool:
        stored_ok = self.report.unreadable == 0 and (self.expected is None or self.report.all_under(self.expected))
        return stored_ok and not self.unreadable and (self.content is None or self.content.ok)

    def to_json(self) -> dict[str, Any]:
        api = None
        if self.api is not None:
            api = {"served": len(self.api.digests), "unreadable": len(self.api.unreadable),
                   "firstUnreadable": {k: self.api.unreadable[k] for k in self.api.first_unreadable()}}
        return {"ok": self.ok, "expected": self.expected, "etcd": self.report.to_json(), "api": api,
                "content": self.content.to_json() if self.content else None, "keys": self.key_labels}

    def render(self) -> str:
        lines = [f"{self.report.total} Secrets in etcd (revision {self.report.revision})"]
        for label, count in sorted(self.report.counts.items(), key=lambda i: -i[1]):
            name = self.key_labels.get(label)
            shown = "plaintext (identity)" if label == IDENTITY else (f"{label} [{name}]" if name else label)
            lines.append(f"  {count:>8}  {shown}")
        if self.report.unreadable_keys:
            lines.append("  unreadable: " + ", ".join(self.report.unreadable_keys))
        if self.expected is None:
            lines.append("expected: (no policy reports encryptedWith yet; not checked)")
        else:
            name = self.key_labels.get(self.expected)
            under = self.report.under(self.expected)
            lines.append(f"expected: {self.expected}{f' [{name}]' if name else ''}: "
                         f"{under}/{self.report.total} {'OK' if self.report.all_under(self.expected) else 'FAIL'}")
        if self.api is None:
            lines.append("API: Secrets not read through the API (--no-content); readability not checked")
        else:
            bad = self.api.unreadable
            lines.append(f"API: {len(self.api.digests)} Secrets served, {len(bad)} unreadable: "
                         f"{'OK' if not bad else 'FAIL'}")
            for name in self.api.first_unreadable():
                lines.append(f"  ! {name}: {bad[name]}")
            if len(bad) > 10:
                lines.append(f"  ... and {len(bad) - 10} more")
        if self.content is None:
            lines.append("content: no seed.json (run `lab seed`); not checked" if self.api is not None
                         else "content: not checked (--no-content)")
        else:
            c = self.content
            lines.append(f"content: {c.checked} seeded Secrets checked, {len(c.mismatched)} changed, "
                         f"{len(c.missing)} missing, {len(c.unreadable)} unreadable: {'OK' if c.ok else 'FAIL'}")
            for name in (c.mismatched + c.missing)[:10]:
                lines.append(f"  ! {name}")
        lines.append("verify: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


def policy_encrypted_with(root: Path, name: str = "default") -> str | None:
    try:
        code, body = control_plane(root).request("GET", f"{POLICIES}/{name}")
    except OSError:
        return None
    if code != 200 or not isinstance(body, dict):
        return None
    return ((body.get("status") or {}).get("encryptedWith")) or None


def policy_experience(root: Path, name: str = "default") -> str:
    """status.cluster.experience of the policy (None, Legacy, Managed; '' when unknown)."""
    try:
        code, body = control_plane(root).request("GET", f"{POLICIES}/{name}")
    except OSError:
        return ""
    if code != 200 or not isinstance(body, dict):
        return ""
    return str(((body.get("status") or {}).get("cluster") or {}).get("experience") or "")


def aks_current_key(root: Path) -> str | None:
    """The key version the lab's AKS writes with now (its current slot), from slots.json."""
    try:
        data = json.loads(LabPaths(Path(root).resolve()).slots.read_text())
    except (OSError, ValueError):
        return None
    return str(data.get("current") or "") or None if data.get("enabled") else None


def verify_lab(root: Path = DEFAULT_DIR, *, expect: str | None = None, content: bool = True) -> LabVerification:
    p = LabPaths(Path(root).resolve())
    if not is_running(p.root):
        raise LabError(f"no running lab in {p.root}; run `lab up` first")
    env = read_env(p.root)
    world = read_world(p.root)
    labels = {url: f"V{i + 1}" for i, url in enumerate(world.key_versions)}
    labels.update({url: f"private V{i + 1}" for i, url in enumerate(world.private_key_versions)})
    if expect is None:
        expect = policy_encrypted_with(p.root)
        if policy_experience(p.root) == "Managed" or (
                expect and expect != IDENTITY and not re.search(r"/[0-9A-Fa-f]{32}/?$", expect)):
            # The Managed experience: AKS picks the version and re-encrypts itself (encryptedWith moves only
            # with spec.verify), so the lab's AKS says which key every Secret must be under now.
            expect = aks_current_key(p.root) or expect
    current = aks_current_key(p.root)
    if current and current not in labels:
        labels[current] = "AKS current"
    keys = list(labels) + ([expect] if expect and expect != IDENTITY and expect not in labels else [])
    report = verify_etcd(env["ETCD_URL"], keys)
    digests = api = None
    if content:
        cp = control_plane(p.root)
        names = {ns: set(v) for ns, v in secret_names(env["ETCD_URL"]).items()}
        expected = json.loads(p.seed.read_text()) if p.seed.exists() else None
        for key in expected or {}:  # a seeded Secret that is gone is asked for by name: "missing"
            ns, name = key.split("/", 1)
            names.setdefault(ns, set()).add(name)
        api = read_through_api(cp, {ns: sorted(v) for ns, v in names.items()}, everything=True)
        if expected is not None:
            namespaces = sorted({k.split("/", 1)[0] for k in expected})
            digests = check_digests(cp, expected, namespaces=namespaces, read=api)
    return LabVerification(expect, report, digests, labels, api)
