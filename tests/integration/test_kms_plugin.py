"""The lab's KMS v2 plugin behind the real kube-apiserver, checked underneath in etcd.

One control plane for the module (its own, with an EncryptionConfiguration): Secrets land under
key A; after AKS-style rotation (config [B, A, identity] + API server roll) new Secrets land under
B, old ones stay readable under A, and a no-op write moves an old Secret to B exactly once. Then the
same with a plugin that wraps through the fake Key Vault with the real azure-keyvault-keys SDK.
The tests are one scenario and run in file order.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aks_kms_lab import verify
from aks_kms_lab.controlplane import ControlPlane
from aks_kms_lab.encryption import provider_name
from aks_kms_lab.etcdraw import EtcdClient
from aks_kms_lab.kmsv2 import (
    ALGORITHM_ANNOTATION,
    HEALTHY,
    VERSION_ANNOTATION,
    KeyVaultWrapper,
    LocalRsaWrapper,
    PluginServer,
    key_id_for,
    open_value,
    parse,
)

pytestmark = pytest.mark.integration

KEY_A = "https://labvault.vault.azure.net/keys/etcd/0123456789abcdef0123456789abcdef"
KEY_B = "https://labvault.vault.azure.net/keys/etcd/fedcba9876543210fedcba9876543210"


def write_encryption_configuration(path: Path, kms: list[tuple[str, str]]) -> Path:
    """AKS's layout: one KMS v2 provider per loaded key version (writer first), then identity.

    Written here rather than with ``aks_kms_lab.encryption`` (the lab's AKS slots) because these
    tests need arbitrary provider lists; the provider names come from there, so they match.
    """
    config = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": [
            *({"kms": {"apiVersion": "v2", "name": provider_name(url), "endpoint": endpoint, "timeout": "3s"}}
              for url, endpoint in kms),
            {"identity": {}},
        ]}],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))  # JSON is YAML
    tmp.replace(path)  # atomic: the API server's automatic reload may read the file at any time
    return path


@dataclass
class Lab:
    cp: ControlPlane
    config: Path
    sockdir: Path
    wrapper_a: LocalRsaWrapper
    plugin_a: PluginServer
    plugin_b: PluginServer
    digests: dict[str, str]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    sockdir = Path(tempfile.mkdtemp(prefix="kms-", dir="/tmp"))  # short: sun_path is 108 bytes
    wrapper_a = LocalRsaWrapper(KEY_A)
    plugin_a = PluginServer(sockdir / "plugin-A.sock", wrapper_a, health_ttl=1).start()
    plugin_b = PluginServer(sockdir / "plugin-B.sock", LocalRsaWrapper(KEY_B), health_ttl=1).start()
    workdir = tmp_path_factory.mktemp("kms-plugin")
    config = write_encryption_configuration(workdir / "encryption-config.yaml", [(KEY_A, plugin_a.endpoint)])
    cp = ControlPlane(workdir / "cp", encryption_config=config)
    try:
        with cp:
            yield Lab(cp, config, sockdir, wrapper_a, plugin_a, plugin_b, {})
    finally:
        plugin_a.stop()
        plugin_b.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def create_secrets(cp: ControlPlane, namespace: str, count: int) -> None:
    cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    for i in range(count):
        status, out = cp.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s-{i}"},
            "data": {"password": base64.b64encode(f"{namespace}-{i}".encode()).decode()}})
        assert status == 201, out


def resource_version(cp: ControlPlane, namespace: str, name: str) -> str:
    status, out = cp.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert status == 200, out
    return str(out["metadata"]["resourceVersion"])


def noop_patch(cp: ControlPlane, namespace: str, name: str) -> str:
    status, out = cp.request("PATCH", f"/api/v1/namespaces/{namespace}/secrets/{name}", {},
                             content_type="application/merge-patch+json")
    assert status == 200, out
    return str(out["metadata"]["resourceVersion"])


def stored_under(lab: Lab, namespace: str, *keys: str) -> dict[str, int]:
    report = verify.verify_etcd(lab.cp.etcd_url, [KEY_A, KEY_B, *keys], by_namespace=True)
    assert report.unreadable == 0
    return dict((report.namespaces or {}).get(namespace, {}))


def rotate(lab: Lab, *kms: tuple[str, str]) -> None:
    write_encryption_configuration(lab.config, list(kms))
    lab.cp.restart_apiserver(lab.config)


def test_api_server_is_ready_with_the_kms_provider(lab: Lab) -> None:
    status, body = lab.cp.request("GET", "/readyz?verbose")
    assert status == 200 and "[+]kms-providers ok" in body, body
    assert lab.plugin_a.plugin.calls["Status"] >= 1 and lab.plugin_a.plugin.calls["Encrypt"] >= 1


def test_secrets_are_stored_under_key_a(lab: Lab) -> None:
    create_secrets(lab.cp, "team-a", 5)
    assert stored_under(lab, "team-a") == {KEY_A: 5}
    lab.digests.update(verify.snapshot_digests(lab.cp, namespaces=["team-a"]))
    assert len(lab.digests) == 5

    # The stored bytes are our plugin's envelope: provider name, key ID, annotations, and a payload
    # that opens with key A's private key to the API server's protobuf encoding of the Secret.
    raw = EtcdClient(lab.cp.etcd_url).get("/registry/secrets/team-a/s-0")
    assert raw is not None
    value = parse(raw.value)
    assert value.provider == provider_name(KEY_A)
    assert value.key_id == key_id_for(KEY_A)
    assert dict(value.obj.annotations) == {VERSION_ANNOTATION: b"1", ALGORITHM_ANNOTATION: b"RSA-OAEP-256"}
    plaintext = open_value(value, raw.key, lab.wrapper_a.unwrap)
    assert plaintext.startswith(b"k8s\x00") and b"team-a-0" not in raw.value


def test_rotation_writes_new_secrets_under_b_and_keeps_old_ones_readable(lab: Lab) -> None:
    rv_before = resource_version(lab.cp, "team-a", "s-0")
    rotate(lab, (KEY_B, lab.plugin_b.endpoint), (KEY_A, lab.plugin_a.endpoint))

    create_secrets(lab.cp, "team-b", 3)
    assert stored_under(lab, "team-b") == {KEY_B: 3}
    assert stored_under(lab, "team-a") == {KEY_A: 5}
    assert verify.check_digests(lab.cp, lab.digests, namespaces=["team-a"]).ok  # read back through A
    assert resource_version(lab.cp, "team-a", "s-0") == rv_before  # a read rewrites nothing


def test_noop_write_reencrypts_an_old_secret_under_b_exactly_once(lab: Lab) -> None:
    rv_before = resource_version(lab.cp, "team-a", "s-1")
    rv_after = noop_patch(lab.cp, "team-a", "s-1")
    assert rv_after != rv_before  # stale under A: rewritten
    assert noop_patch(lab.cp, "team-a", "s-1") == rv_after  # current under B: left alone
    assert stored_under(lab, "team-a") == {KEY_A: 4, KEY_B: 1}

    for i in range(5):
        noop_patch(lab.cp, "team-a", f"s-{i}")
    assert stored_under(lab, "team-a") == {KEY_B: 5}
    assert verify.check_digests(lab.cp, lab.digests, namespaces=["team-a"]).ok


# ---------------------------------------------------------------------------------- fake Key Vault


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[Any]:
    fake_azure_mod = pytest.importorskip("aks_kms_lab.fake_azure")
    with fake_azure_mod.FakeAzure() as fake:
        yield fake


def test_key_vault_plugin_through_the_sdk(lab: Lab, fake_azure: Any) -> None:
    """Runs last: it leaves Secrets under a key whose plugin stops with the test."""
    vault_id = fake_azure.add_vault("00000000-0000-0000-0000-000000000000", "rg", "labvault2")
    fake_azure.grant_role(fake_azure.principal_id, vault_id, "Key Vault Crypto User")
    key_c = fake_azure.create_key("labvault2", "etcd")
    env = {
        "AZURE_TENANT_ID": fake_azure.tenant_id,
        "AZURE_CLIENT_ID": fake_azure.client_id,
        "AZURE_CLIENT_SECRET": fake_azure.client_secret,
        "AZURE_AUTHORITY_HOST": fake_azure.authority,
        "AKS_KMS_CA_BUNDLE": str(fake_azure.ca_pem_path),
        "AKS_KMS_KEYVAULT_ENDPOINT": fake_azure.url,
    }
    wrapper = KeyVaultWrapper.from_env(key_c, env)
    with PluginServer(lab.sockdir / "plugin-C.sock", wrapper, health_ttl=0) as plugin_c:
        assert plugin_c.plugin.health() == HEALTHY
        rotate(lab, (key_c, plugin_c.endpoint), (KEY_B, lab.plugin_b.endpoint), (KEY_A, lab.plugin_a.endpoint))
        assert plugin_c.plugin.calls["Encrypt"] >= 1  # the API server's seed, wrapped by the SDK

        create_secrets(lab.cp, "team-c", 2)
        assert stored_under(lab, "team-c", key_c) == {key_c: 2}
        noop_patch(lab.cp, "team-a", "s-0")
        assert stored_under(lab, "team-a", key_c) == {key_c: 1, KEY_B: 4}
        assert verify.check_digests(lab.cp, lab.digests, namespaces=["team-a"]).ok

        # The stored seed opens only through the vault: unwrapKey is a Key Vault call.
        unwraps = sum(1 for r in fake_azure.requests if r.path.endswith("/unwrapkey") and r.status == 200)
        raw = EtcdClient(lab.cp.etcd_url).get("/registry/secrets/team-c/s-0")
        assert raw is not None
        assert open_value(parse(raw.value), raw.key, wrapper.unwrap).startswith(b"k8s\x00")
        assert sum(1 for r in fake_azure.requests if r.path.endswith("/unwrapkey") and r.status == 200) == unwraps + 1

        # A disabled key turns the plugin unhealthy (the vault refuses unwrapKey), as on AKS.
        fake_azure.set_key_attributes(key_c, enabled=False)
        assert "KeyDisabled" in plugin_c.plugin.health()
        fake_azure.set_key_attributes(key_c, enabled=True)
        assert plugin_c.plugin.health() == HEALTHY
    # No rotation back to [B, A]: Secrets are stored under C now, and an API server whose config
    # drops a key still in use never becomes ready ("no matching prefix found" while listing
    # Secrets), which is the hazard the operator's rotation rules exist for. This test is the
    # module's last; the control plane goes with the module fixture.
