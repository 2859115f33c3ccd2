"""API credentials that change while the operator runs, against the real API server (issue 9, defect 4).

Every token here is a real TokenRequest token *bound to a Secret* (``boundObjectRef``): deleting that
Secret invalidates the token at once (after the API server's 10 s token cache), which is how these
tests rotate and revoke credentials without waiting an hour:

* an ``exec`` plugin (kubelogin's place on Entra-ID AKS clusters): a small script that mints such a
  token and prints an ExecCredential; the client must call it again when the token is rejected or
  its ``expirationTimestamp`` is near;
* the in-cluster service account: the token file is rewritten (as the kubelet does) and the old
  token revoked; the client must read the new file;
* inline client certificates leave no file behind in the temp directory;
* the real ``aks-kms-operator run`` process logs in through an exec plugin, and keeps working (kopf's
  watch and patches, our own client) after its first token is revoked.

Identities are checked with a SelfSubjectReview, which any authenticated user may create and which
names the user: a request that went out anonymously or with a dead token cannot pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from aks_kms_lab.controlplane import ControlPlane, free_port
from aks_kms_operator.kube import Credentials, CredentialSource, KubeClient

from ..support import unreachable_azure_env, wait_for

pytestmark = pytest.mark.integration
NS = "creds-test"
REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"

# The exec plugin: stdlib only, admin credentials from its environment (the kubeconfig's exec.env),
# binds each token to the Secret named in state.json, counts its calls in calls.log. It never
# prints anything but the ExecCredential, and writes no token anywhere.
PLUGIN = r'''
import datetime, json, os, ssl, sys, urllib.request
here = os.path.dirname(os.path.abspath(__file__))
state = json.load(open(os.path.join(here, "state.json")))
ctx = ssl.create_default_context(cafile=os.environ["LAB_CA"])
ctx.load_cert_chain(os.environ["LAB_CERT"], os.environ["LAB_KEY"])
server, ns, sa = os.environ["LAB_SERVER"], os.environ["LAB_NS"], os.environ["LAB_SA"]
def call(method, path, body=None):
    req = urllib.request.Request(server + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.load(r)
secret = call("GET", f"/api/v1/namespaces/{ns}/secrets/{state['secret']}")["metadata"]
minted = call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", {
    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
    "spec": {"expirationSeconds": 3600,
             "boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": secret["name"], "uid": secret["uid"]}}})
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=int(os.environ["LAB_EXPIRY"]))
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(state["secret"] + "\n")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": minted["status"]["token"],
                             "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}))
'''


# ---------------------------------------------------------------------------------------------- helpers

def admin_files(cp: ControlPlane) -> tuple[Path, Path]:
    return cp._admin_cert()


def ensure_account(cp: ControlPlane, name: str, *, cluster_admin: bool = False) -> None:
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    cp.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}})
    if cluster_admin:  # the operator process below needs its usual rights; the chart test checks them
        cp.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                  "metadata": {"name": f"{NS}-{name}"},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                  "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}]})


def bound_secret(cp: ControlPlane, name: str) -> dict[str, Any]:
    """An empty Secret that only serves as the object tokens are bound to."""
    return cp.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}})


def mint(cp: ControlPlane, account: str, secret: dict[str, Any]) -> str:
    code, out = cp.request("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{account}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600, "boundObjectRef": {
            "kind": "Secret", "apiVersion": "v1", "name": secret["metadata"]["name"],
            "uid": secret["metadata"]["uid"]}}})
    assert code == 201, out
    return str(out["status"]["token"])


def who_with_token(cp: ControlPlane, token: str) -> int:
    """HTTP status of a SelfSubjectReview made with ``token`` alone (401 once it is revoked)."""
    req = urllib.request.Request(cp.server + REVIEW, method="POST",
                                 data=json.dumps({"apiVersion": "authentication.k8s.io/v1",
                                                  "kind": "SelfSubjectReview"}).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(cp.ca_path)), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def revoke(cp: ControlPlane, secret: dict[str, Any], token: str) -> None:
    """Delete the Secret ``token`` is bound to and wait until the API server refuses the token."""
    code, out = cp.request("DELETE", f"/api/v1/namespaces/{NS}/secrets/{secret['metadata']['name']}")
    assert code == 200, out
    wait_for(lambda: who_with_token(cp, token) == 401, timeout=40, interval=1, what="the old token to be refused")


async def whoami(kube: KubeClient) -> str:
    review = await kube.request("POST", REVIEW, body={"apiVersion": "authentication.k8s.io/v1",
                                                      "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


def bearer(creds: Credentials) -> str:
    return str(creds.headers.get("Authorization", "")).split(" ", 1)[-1]


def exec_kubeconfig(cp: ControlPlane, folder: Path, account: str, *, expiry_seconds: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(PLUGIN)
    cert, key = admin_files(cp)
    env = {"LAB_CA": str(cp.ca_path), "LAB_CERT": str(cert), "LAB_KEY": str(key), "LAB_SERVER": cp.server,
           "LAB_NS": NS, "LAB_SA": account, "LAB_EXPIRY": str(expiry_seconds)}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": cp.server, "certificate-authority": str(cp.ca_path)}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "exec", "namespace": NS}}],
        "users": [{"name": "exec", "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
            "args": [str(folder / "plugin.py")], "interactiveMode": "Never",
            "env": [{"name": k, "value": v} for k, v in env.items()]}}}],
    }
    path = folder / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def point_plugin_at(folder: Path, secret: dict[str, Any]) -> None:
    (folder / "state.json").write_text(json.dumps({"secret": secret["metadata"]["name"]}))


def plugin_calls(folder: Path) -> int:
    log = folder / "calls.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


# ------------------------------------------------------------------------------------------ exec plugin

@pytest.mark.parametrize("expiry_seconds", [60, 7200], ids=["expiring-soon", "revoked-before-expiry"])
def test_exec_plugin_is_called_again_when_its_token_dies(control_plane: ControlPlane, tmp_path: Path,
                                                          expiry_seconds: int) -> None:
    """``expiring-soon``: the ExecCredential's expiry is within the loader's 5-minute margin, so the
    plugin is re-run on the periodic check. ``revoked-before-expiry``: the token is valid "for two
    hours" but revoked now; only the 401 → reload → retry path can save the request."""
    cp = control_plane
    account = f"exec-{expiry_seconds}"
    ensure_account(cp, account)
    first = bound_secret(cp, f"{account}-a")
    point_plugin_at(tmp_path, first)
    source = CredentialSource.from_kubeconfig(exec_kubeconfig(cp, tmp_path, account, expiry_seconds=expiry_seconds))
    user = f"system:serviceaccount:{NS}:{account}"

    async def scenario() -> None:
        async with KubeClient(source) as kube:
            assert await whoami(kube) == user
            old_token = bearer(await source.current())
            calls, reloads = plugin_calls(tmp_path), source.reloads
            assert calls >= 1
            # rotate: new tokens are bound to a second Secret; the first one goes, and its token with it
            point_plugin_at(tmp_path, bound_secret(cp, f"{account}-b"))
            await asyncio.to_thread(revoke, cp, first, old_token)
            for _ in range(3):
                assert await whoami(kube) == user
            assert plugin_calls(tmp_path) > calls, "the exec plugin was not run again"
            assert bearer(await source.current()) != old_token
            if expiry_seconds > 300:
                assert source.reloads > reloads, "a 401 must reload the credentials"
            # kopf's login reads the same source: a fresh token, and the context's namespace for Events
            info = source.connection_info()
            assert info.token and info.token != old_token and info.default_namespace == NS
            async with aiohttp.ClientSession(headers=info.as_http_headers()) as session, session.post(
                    cp.server + REVIEW, ssl=info.as_ssl_context(),
                    json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}) as resp:
                assert resp.status == 201 and (await resp.json())["status"]["userInfo"]["username"] == user

    asyncio.run(scenario())


# -------------------------------------------------------------------------------------------- in-cluster

def test_in_cluster_token_file_rotation(control_plane: ControlPlane, tmp_path: Path) -> None:
    """The kubelet rewrites the projected token file; the old token stops working (here: revoked at
    once). Requests keep working: the 401 makes the in-cluster loader read the file again."""
    cp = control_plane
    account = "in-cluster"
    ensure_account(cp, account)
    first = bound_secret(cp, "in-cluster-a")
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    shutil.copy(cp.ca_path, sa_dir / "ca.crt")
    (sa_dir / "namespace").write_text(NS)

    def write_token(token: str) -> None:  # atomically, like the kubelet's symlink swap
        (sa_dir / "token.new").write_text(token)
        os.replace(sa_dir / "token.new", sa_dir / "token")

    old_token = mint(cp, account, first)
    write_token(old_token)
    port = cp.server.rsplit(":", 1)[1]
    source = CredentialSource.in_cluster(sa_dir, environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                                         "KUBERNETES_SERVICE_PORT": port})
    user = f"system:serviceaccount:{NS}:{account}"

    async def scenario() -> None:
        async with KubeClient(source) as kube:
            assert await whoami(kube) == user
            reloads = source.reloads
            write_token(mint(cp, account, bound_secret(cp, "in-cluster-b")))
            await asyncio.to_thread(revoke, cp, first, old_token)
            for _ in range(3):
                assert await whoami(kube) == user
            assert source.reloads == reloads + 1, "exactly one reload, at the first 401"
            assert bearer(await source.current()) != old_token
        info = source.connection_info()
        assert info.default_namespace == NS and info.token and info.token != old_token

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------ no files left behind

@pytest.fixture
def private_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """Point ``tempfile`` (and so every library's temp files) at an empty directory for one test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved


def test_inline_client_certificate_leaves_no_temp_files(control_plane: ControlPlane, tmp_path: Path,
                                                        private_tmpdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig with certificate-authority-data, client-certificate-data and client-key-data
    (what ``az aks get-credentials --admin`` writes): log in, make requests, hand the identity to
    kopf, close: nothing of the key material stays in the temp directory."""
    cp = control_plane
    cert, key = admin_files(cp)

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": cp.server,
                                                 "certificate-authority-data": b64(cp.ca_path)}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
    }
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def scenario() -> None:
        async with KubeClient(Credentials.login()) as kube:
            assert await whoami(kube) == "lab-admin"
        source = CredentialSource.discover()
        async with KubeClient(source) as kube:
            assert await whoami(kube) == "lab-admin"
        info = source.connection_info()  # what kopf's login gets
        info.as_ssl_context()  # and what kopf does with it

    asyncio.run(scenario())
    assert sorted(p.name for p in private_tmpdir.iterdir()) == []


# ----------------------------------------------------------------------------- the real operator process

def test_operator_process_logs_in_with_an_exec_plugin(crd_installed: ControlPlane, tmp_path: Path) -> None:
    """``aks-kms-operator run`` with an exec-plugin kubeconfig handles a policy, and keeps handling
    policies after the first token is revoked (kopf re-logs in on 401; our client reloads)."""
    cp = crd_installed
    account = "exec-operator"
    ensure_account(cp, account, cluster_admin=True)
    first = bound_secret(cp, f"{account}-a")
    folder = tmp_path / "exec"
    kubeconfig = exec_kubeconfig(cp, folder, account, expiry_seconds=7200)
    point_plugin_at(folder, first)
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "AKS_KMS_NAMESPACE": NS, "POD_NAME": "exec-operator",
           "AKS_KMS_ERROR_RETRY_SECONDS": "2", **unreachable_azure_env()}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    script = Path(sys.executable).parent / "aks-kms-operator"
    names = ["creds-exec-1", "creds-exec-2"]

    def create(name: str) -> None:
        code, body = cp.request("POST", POLICIES, {
            "apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy", "metadata": {"name": name},
            "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg",
                                 "name": name}}})
        assert code == 201, body

    def handled(name: str) -> bool:
        _, obj = cp.request("GET", f"{POLICIES}/{name}")
        return bool((obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
                    and "aks-kms.dev/finalizer" in obj["metadata"].get("finalizers", []))

    with open(log, "w") as out:
        proc = subprocess.Popen([str(script), "run", f"--liveness=http://127.0.0.1:{free_port()}/healthz",
                                 "--log-format=plain"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        create(names[0])
        try:
            wait_for(lambda: handled(names[0]), timeout=90, what=f"{names[0]} handled via the exec plugin")
            calls = plugin_calls(folder)
            point_plugin_at(folder, bound_secret(cp, f"{account}-b"))
            # The operator's token is bound to the first Secret (it is in no file: the plugin prints it
            # to the operator only). A probe token bound to the same Secret shows when the deletion has
            # taken effect; then the API server's 10 s cache of successful token reviews runs out.
            probe = mint(cp, account, first)
            revoke(cp, first, probe)
            time.sleep(11)
            create(names[1])
            wait_for(lambda: handled(names[1]), timeout=120, what=f"{names[1]} handled after the revocation")
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- operator log (tail) ---\n{log.read_text()[-5000:]}") from None
        assert plugin_calls(folder) > calls
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=40)
        for name in names:
            cp.request("PATCH", f"{POLICIES}/{name}", {"metadata": {"finalizers": None}},
                       content_type="application/merge-patch+json")
            cp.request("DELETE", f"{POLICIES}/{name}")
