"""A complete local "AKS": real API server (keys switched as AKS would), fake Azure, real operator.

The API server's KMS providers are stood in by aescbc keys derived from each Key Vault key URL
(``aks_kms_lab.encryption.aescbc_provider``): same slots, same ordering, same staleness rules, so the
operator's key switch, rewrite and ledger are exercised for real. The lab (tests/e2e) uses real
KMS v2 plugins instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from aks_kms_lab.aks_sim import ApiServerKms
from aks_kms_lab.controlplane import ControlPlane, free_port
from aks_kms_lab.encryption import (
    KeySlots,
    aescbc_provider,
    encryption_configuration,
    write_configuration,
)
from aks_kms_lab.etcdraw import EtcdClient
from aks_kms_lab.fake_azure import FakeAzure
from aks_kms_lab.world import (
    CLUSTER,
    OPERATOR_NAMESPACE,
    RESOURCE_GROUP,
    SUBSCRIPTION,
    LabWorld,
    operator_env,
    platform_key,
    seed_azure,
)

from ..support import REPO, wait_for

POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"
SCRIPT = Path(sys.executable).parent / "aks-kms-operator"


class AksEnv:
    """``apiservers`` replicas behind the lab's balancer; ``roll_interval`` / ``lag_last_seconds`` are
    AKS-sim's (``aks_sim.ApiServerKms``, changeable later on ``self.kms``)."""

    def __init__(self, root: Path, *, audit: bool = False, apiservers: int = 1, roll_interval: float = 0.0,
                 lag_last_seconds: float | None = None, extra_apiserver_args: tuple[str, ...] = (),
                 detection_interval: float = 3600.0) -> None:
        self.root = root
        self.config = root / "encryption.yaml"
        write_configuration(self.config, encryption_configuration(KeySlots(), aescbc_provider))
        self.cp = ControlPlane(root / "cp", apiservers=apiservers, encryption_config=self.config,
                               audit_secret_writes=audit, extra_apiserver_args=extra_apiserver_args).start()
        self.cp.apply(yaml.safe_load((REPO / "manifests/crd/clusterencryptionpolicies.yaml").read_text()))
        wait_for(lambda: self.cp.request("GET", "/apis/aks-kms.dev/v1alpha1")[0] == 200, what="CRD served")
        self.cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
        self.fake = FakeAzure(root / "azure").start()
        self.world: LabWorld = seed_azure(self.fake)
        fake = self.fake
        self.kms = ApiServerKms(self.cp, self.config, aescbc_provider, roll_interval=roll_interval,
                                lag_last_seconds=lag_last_seconds, resolve_key=fake.newest_key_version,
                                platform_key=lambda: platform_key(fake), detection_interval=detection_interval)
        self.fake.on_kms_change = self.kms.on_kms_change
        self.env = {**os.environ, **operator_env(self.fake, self.cp.kubeconfig)}
        self.operator: subprocess.Popen[bytes] | None = None
        self.log = root / "operator.log"
        self.metrics_url = ""  # the running operator's /metrics

    # ---------------------------------------------------------------- operator process

    def start_operator(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.operator = subprocess.Popen([str(SCRIPT), "run", "--liveness=", "--log-format=plain",
                                          f"--metrics-address=127.0.0.1:{port}"],
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env)
        out.close()

    def kill_operator(self, sig: int = 9) -> None:
        if self.operator and self.operator.poll() is None:
            self.operator.send_signal(sig)
            self.operator.wait(timeout=30)
        self.operator = None

    def stop(self) -> None:
        self.kill_operator(15)
        self.kms.close()
        self.fake.stop()
        self.cp.stop()

    # ---------------------------------------------------------------- policies

    def apply_policy(self, body: dict[str, Any]) -> None:
        self.cp.apply(body)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        code, out = self.cp.request("PATCH", f"{POLICIES}/{name}", {"spec": spec},
                                    content_type="application/merge-patch+json")
        assert code == 200, out

    def policy(self, name: str) -> dict[str, Any]:
        return self.cp.request("GET", f"{POLICIES}/{name}")[1]

    def wait_status(self, name: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 120,
                    what: str = "status") -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                obj = self.policy(name)
            except OSError:  # the API server is rolling after a KMS change
                return None
            if not isinstance(obj, dict) or obj.get("kind") != "ClusterEncryptionPolicy":
                return None  # a Status (503 while the API server restarts)
            status = obj.get("status") or {}
            if status.get("observedGeneration") != obj["metadata"].get("generation"):
                return None
            return status if pred(status) else None

        try:
            return wait_for(check, timeout=timeout, interval=0.5, what=what)
        except AssertionError:
            tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise AssertionError(f"{what} not reached; status: {self.policy(name).get('status')}\n"
                                 f"cluster PUTs: {self.cluster_puts()}\n"
                                 f"operator log tail:\n{tail}") from None

    def wait_ready(self, name: str, timeout: float = 180) -> dict[str, Any]:
        return self.wait_status(name, lambda s: condition(s, "Ready") == "True", timeout, "Ready")

    def wait_stalled(self, name: str, reason: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait_status(
            name, lambda s: condition(s, "Stalled") == "True" and reason_of(s, "Stalled") == reason, timeout,
            f"Stalled {reason}")

    # ---------------------------------------------------------------- ARM, as a user would drive it

    def arm_client(self) -> Any:
        """The real azure-mgmt-containerservice client against the fake (client-secret credential)."""
        from azure.core.pipeline.policies import RetryPolicy
        from azure.core.pipeline.transport import RequestsTransport
        from azure.identity import ClientSecretCredential
        from azure.mgmt.containerservice import ContainerServiceClient

        ca = str(self.fake.ca_pem_path)
        credential = ClientSecretCredential(self.fake.tenant_id, self.fake.client_id, self.fake.client_secret,
                                            authority=self.fake.authority, disable_instance_discovery=True,
                                            connection_verify=ca)
        return ContainerServiceClient(
            credential, SUBSCRIPTION, base_url=self.fake.url, polling_interval=0.1,
            transport=RequestsTransport(connection_verify=ca, connection_timeout=5, read_timeout=30),
            retry_policy=RetryPolicy(retry_total=3, retry_backoff_factor=0.05, retry_backoff_max=0.5))

    def set_kms(self, key_id: str | None, *, timeout: float = 180) -> None:
        """PUT the cluster's KMS block (``None``: disable) through ARM and wait for the operation, as
        ``az aks update`` would: AKS-sim rolls the API servers before (or, lagging, after) it ends."""
        from azure.core import MatchConditions

        client = self.arm_client()
        try:
            body = client.managed_clusters.get(RESOURCE_GROUP, CLUSTER)
            kms: dict[str, Any] = {"enabled": key_id is not None, "keyVaultNetworkAccess": "Public"}
            if key_id is not None:
                kms["keyId"] = key_id
            body.security_profile.azure_key_vault_kms = kms
            client.managed_clusters.begin_create_or_update(
                RESOURCE_GROUP, CLUSTER, body, etag=body.e_tag, match_condition=MatchConditions.IfNotModified,
            ).result(timeout=timeout)
        finally:
            client.close()

    # ---------------------------------------------------------------- Azure write log

    def cluster_puts(self) -> list[dict[str, Any]]:
        return [w.summary for w in self.fake.writes if w.method == "PUT" and "managedClusters" in w.path]

    # ---------------------------------------------------------------- etcd

    def stored_under(self) -> dict[str, int]:
        """How many Secrets (outside the operator namespace) etcd holds under each provider."""
        counts: dict[str, int] = {}
        for key, value in self.etcd_secrets():
            if f"/secrets/{OPERATOR_NAMESPACE}/" in key:
                continue
            if value.startswith(b"k8s:enc:aescbc:v1:"):
                label = value.split(b":")[4].decode()
            elif value.startswith(b"k8s\x00"):
                label = "plaintext"
            else:
                label = "other"
            counts[label] = counts.get(label, 0) + 1
        return counts

    def etcd_secrets(self) -> list[tuple[str, bytes]]:
        return [(raw.key, raw.value) for raw in EtcdClient(self.cp.etcd_url).scan()]


class StatusRecorder:
    """Every status a policy is written with while it runs, from a watch (a poll could miss one that a
    later write replaces within milliseconds): ``with StatusRecorder(env.cp, name) as rec: ...`` then
    ``rec.statuses``. Each watch lasts 2 s and resumes from the last resourceVersion seen; when the
    watch cache no longer has it (an API server restarted: "too old resource version"), it lists again
    and records the status as listed."""

    def __init__(self, cp: ControlPlane, name: str) -> None:
        self.cp, self.name = cp, name
        self.statuses: list[dict[str, Any]] = []
        self._selector = urllib.parse.urlencode({"fieldSelector": f"metadata.name={name}"})
        self._stop = threading.Event()
        self._rv = self._list()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _list(self) -> str:
        """List the policy (recording its status); retried while the API server's storage is
        (re)initializing after a restart (429) or the server is down."""
        def listed() -> dict[str, Any] | None:
            try:
                code, out = self.cp.request("GET", f"{POLICIES}?{self._selector}")
            except OSError:
                return None
            return out if code == 200 else None

        out = wait_for(listed, timeout=60, interval=0.2, what=f"a list of policy {self.name}")
        self.statuses += [item.get("status") or {} for item in out.get("items") or []]
        return str(out["metadata"]["resourceVersion"])

    def _watch(self) -> None:
        while not self._stop.is_set():
            url = f"{self.cp.server}{POLICIES}?{self._selector}&watch=1&timeoutSeconds=2&resourceVersion={self._rv}"
            try:
                with urllib.request.urlopen(url, context=self.cp.ssl_context(), timeout=10) as answer:
                    for line in answer:
                        event = json.loads(line)
                        if event.get("type") == "ERROR":  # 410: resume from a fresh list
                            self._rv = self._list()
                            break
                        obj = event.get("object") or {}
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._rv = obj["metadata"]["resourceVersion"]
                            self.statuses.append(obj.get("status") or {})
            except OSError:  # the API server rolls after a KMS change: resume
                self._stop.wait(0.2)


def condition(status: dict[str, Any], type_: str) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == type_), None)


def reason_of(status: dict[str, Any], type_: str) -> str | None:
    return next((c.get("reason") for c in status.get("conditions") or [] if c["type"] == type_), None)
