"""The lab's KMS v2 plugin over a real Unix-socket gRPC channel, with an in-memory RSA key."""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aks_kms_lab.kmsv2 import (
    ALGORITHM_ANNOTATION,
    HEALTHY,
    VERSION_ANNOTATION,
    LocalRsaWrapper,
    PluginServer,
    key_id_for,
)
from aks_kms_lab.kmsv2 import kmsv2_service_pb2 as pb
from aks_kms_lab.kmsv2 import kmsv2_service_pb2_grpc as pb_grpc

KEY_A = "https://labvault.vault.azure.net/keys/etcd/0123456789abcdef0123456789abcdef"
KEY_B = "https://labvault.vault.azure.net/keys/etcd/fedcba9876543210fedcba9876543210"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 108-byte sun_path limit
    with tempfile.TemporaryDirectory(prefix="kms-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def wrapper() -> LocalRsaWrapper:
    return LocalRsaWrapper(KEY_A)


@pytest.fixture
def server(sockdir: Path, wrapper: LocalRsaWrapper) -> Iterator[PluginServer]:
    with PluginServer(sockdir / "a.sock", wrapper, health_ttl=0) as s:
        yield s


@pytest.fixture
def stub(server: PluginServer) -> Iterator[pb_grpc.KeyManagementServiceStub]:
    # the API server's dial: insecure, unix socket, authority localhost
    with grpc.insecure_channel(server.endpoint, options=[("grpc.default_authority", "localhost")]) as channel:
        yield pb_grpc.KeyManagementServiceStub(channel)


def test_key_id_is_sha256_of_the_versioned_key_url(server: PluginServer) -> None:
    assert server.key_id == hashlib.sha256(KEY_A.encode()).hexdigest() == key_id_for(KEY_A)
    assert server.endpoint.startswith("unix:///") and server.endpoint.endswith("/a.sock")


def test_status_is_healthy_with_v2_and_the_key_id(stub: pb_grpc.KeyManagementServiceStub,
                                                   server: PluginServer) -> None:
    status = stub.Status(pb.StatusRequest(), timeout=3)
    assert (status.version, status.healthz, status.key_id) == ("v2", HEALTHY, server.key_id)


def test_encrypt_decrypt_roundtrip(stub: pb_grpc.KeyManagementServiceStub, server: PluginServer) -> None:
    seed = bytes(range(32))
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=seed, uid="u1"), timeout=3)
    assert enc.key_id == server.key_id
    assert enc.ciphertext and enc.ciphertext != seed and len(enc.ciphertext) < 1024
    assert dict(enc.annotations) == {VERSION_ANNOTATION: b"1", ALGORITHM_ANNOTATION: b"RSA-OAEP-256"}
    dec = stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="u2", key_id=enc.key_id,
                                         annotations=enc.annotations), timeout=3)
    assert dec.plaintext == seed
    assert server.plugin.calls == {"Encrypt": 1, "Decrypt": 1}


def test_decrypt_rejects_another_key_id(stub: pb_grpc.KeyManagementServiceStub) -> None:
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=b"s" * 32, uid="u"), timeout=3)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, uid="u", key_id=key_id_for(KEY_B),
                                       annotations=enc.annotations), timeout=3)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match" in err.value.details()


def test_decrypt_rejects_unknown_algorithm_and_foreign_ciphertext(stub: pb_grpc.KeyManagementServiceStub,
                                                                  server: PluginServer) -> None:
    enc = stub.Encrypt(pb.EncryptRequest(plaintext=b"s" * 32, uid="u"), timeout=3)
    with pytest.raises(grpc.RpcError) as err:
        stub.Decrypt(pb.DecryptRequest(ciphertext=enc.ciphertext, key_id=server.key_id,
                                       annotations={ALGORITHM_ANNOTATION: b"RSA1_5"}), timeout=3)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    foreign = LocalRsaWrapper(KEY_A).wrap(b"s" * 32).ciphertext  # same URL, different key material
    with pytest.raises(grpc.RpcError) as err:
        stub.Decrypt(pb.DecryptRequest(ciphertext=foreign, key_id=server.key_id), timeout=3)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_two_instances_serve_two_key_versions(sockdir: Path, server: PluginServer,
                                              stub: pb_grpc.KeyManagementServiceStub) -> None:
    with PluginServer(sockdir / "b.sock", LocalRsaWrapper(KEY_B), health_ttl=0) as b, \
            grpc.insecure_channel(b.endpoint) as channel:
        stub_b = pb_grpc.KeyManagementServiceStub(channel)
        assert stub_b.Status(pb.StatusRequest(), timeout=3).key_id == key_id_for(KEY_B) != server.key_id
        enc_b = stub_b.Encrypt(pb.EncryptRequest(plaintext=b"b" * 32), timeout=3)
        with pytest.raises(grpc.RpcError):  # A cannot open what B wrapped, whatever the key ID says
            stub.Decrypt(pb.DecryptRequest(ciphertext=enc_b.ciphertext, key_id=enc_b.key_id), timeout=3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"enabled": False}, "not allowed on a disabled key"),
        ({"expires_on": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)}, "not allowed on an expired key"),
        ({"not_before": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)}, "not yet valid"),
    ],
)
def test_status_unhealthy_when_key_unusable(stub: pb_grpc.KeyManagementServiceStub, server: PluginServer,
                                            wrapper: LocalRsaWrapper, change: dict[str, object],
                                            reason: str) -> None:
    assert stub.Status(pb.StatusRequest(), timeout=3).healthz == HEALTHY
    for attr, value in change.items():
        setattr(wrapper, attr, value)
    status = stub.Status(pb.StatusRequest(), timeout=3)
    assert status.healthz != HEALTHY and reason in status.healthz
    assert status.key_id == server.key_id  # still reported: the API server needs it to stay put
    with pytest.raises(grpc.RpcError) as err:
        stub.Encrypt(pb.EncryptRequest(plaintext=b"s" * 32), timeout=3)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    wrapper.enabled, wrapper.expires_on, wrapper.not_before = True, None, None
    assert stub.Status(pb.StatusRequest(), timeout=3).healthz == HEALTHY  # and recovers


def test_status_verdict_is_cached_for_health_ttl(sockdir: Path) -> None:
    wrapper = LocalRsaWrapper(KEY_A)
    calls = {"wrap": 0}
    real_wrap = wrapper.wrap

    def counting_wrap(plaintext: bytes):  # type: ignore[no-untyped-def]
        calls["wrap"] += 1
        return real_wrap(plaintext)

    wrapper.wrap = counting_wrap  # type: ignore[method-assign]
    with PluginServer(sockdir / "c.sock", wrapper, health_ttl=60) as s, grpc.insecure_channel(s.endpoint) as ch:
        stub = pb_grpc.KeyManagementServiceStub(ch)
        for _ in range(5):
            assert stub.Status(pb.StatusRequest(), timeout=3).healthz == HEALTHY
        assert calls["wrap"] == 1
        wrapper.enabled = False
        assert stub.Status(pb.StatusRequest(), timeout=3).healthz == HEALTHY  # cached: at most ttl stale
        assert s.plugin.health(fresh=True) != HEALTHY


def test_socket_is_private_and_removed_on_stop(sockdir: Path) -> None:
    path = sockdir / "d.sock"
    with PluginServer(path, LocalRsaWrapper(KEY_A)):
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    assert not path.exists()


def test_socket_path_too_long_is_refused(sockdir: Path) -> None:
    with pytest.raises(ValueError, match="too long"):
        PluginServer(sockdir / ("x" * 120), LocalRsaWrapper(KEY_A))
