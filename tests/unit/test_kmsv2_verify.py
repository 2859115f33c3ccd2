"""verify.py against a small stand-in for etcd's JSON gateway, the digest check, and the plugin CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from aks_kms_lab import verify
from aks_kms_lab.kmsv2 import HEALTHY, LocalRsaWrapper, key_id_for
from aks_kms_lab.kmsv2 import kmsv2_service_pb2 as pb
from aks_kms_lab.kmsv2 import kmsv2_service_pb2_grpc as pb_grpc
from aks_kms_lab.kmsv2.encrypted_object_pb2 import EncryptedObject

KEY_A = "https://labvault.vault.azure.net/keys/etcd/0123456789abcdef0123456789abcdef"
KEY_B = "https://labvault.vault.azure.net/keys/etcd/fedcba9876543210fedcba9876543210"
REPO = Path(__file__).resolve().parents[2]


def kms_value(key_url: str) -> bytes:
    obj = EncryptedObject(encryptedData=os.urandom(60), keyID=key_id_for(key_url), encryptedDEKSource=b"w" * 256,
                          encryptedDEKSourceType=1)
    return b"k8s:enc:kms:v2:akv-x:" + obj.SerializeToString()


class FakeEtcdGateway:
    """Serves ``POST /v3/kv/range`` over a sorted dict, with limit/more and revisions, like etcd."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = dict(sorted((k.encode(), v) for k, v in data.items()))
        self.revision = 42
        self.requests: list[dict[str, Any]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                gateway.requests.append(body)
                start = base64.b64decode(body["key"])
                end = base64.b64decode(body.get("range_end", ""))
                keys = [k for k in gateway.data if start <= k and (not end or k < end)]
                limit = int(body.get("limit", 0)) or len(keys)
                page = keys[:limit]
                out: dict[str, Any] = {"header": {"revision": str(gateway.revision)}, "count": str(len(keys))}
                if page:
                    out["kvs"] = [{"key": base64.b64encode(k).decode(),
                                   "value": base64.b64encode(gateway.data[k]).decode(), "mod_revision": "7"}
                                  for k in page]
                if len(keys) > limit:
                    out["more"] = True
                raw = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def etcd() -> Iterator[FakeEtcdGateway]:
    data = {f"/registry/secrets/ns-{i % 3}/s-{i:03d}": kms_value(KEY_A) for i in range(7)}
    data |= {f"/registry/secrets/ns-1/b-{i}": kms_value(KEY_B) for i in range(3)}
    data["/registry/secrets/ns-2/plain"] = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret"
    data["/registry/secrets/ns-2/broken"] = b"\x01\x02"
    data["/registry/configmaps/ns-2/not-a-secret"] = b"k8s\x00..."
    data["/registry/secretsX/ns/outside-prefix"] = b"k8s\x00..."
    gateway = FakeEtcdGateway(data)
    yield gateway
    gateway.close()


def test_verify_counts_per_key_in_pages_at_one_revision(etcd: FakeEtcdGateway) -> None:
    report = verify.verify_etcd(etcd.url, [KEY_A, KEY_B], by_namespace=True, page_size=4)
    assert report.total == 12
    assert report.counts == {KEY_A: 7, KEY_B: 3, "identity": 1, "unreadable": 1}
    assert (report.plaintext, report.unreadable, report.revision) == (1, 1, 42)
    assert report.unreadable_keys == ["/registry/secrets/ns-2/broken"]
    assert report.namespaces is not None and report.namespaces["ns-1"] == {KEY_A: 2, KEY_B: 3}
    assert not report.all_under(KEY_A)
    assert len(etcd.requests) == 3  # 12 values, pages of 4
    assert [r.get("revision") for r in etcd.requests] == [None, 42, 42]  # one consistent snapshot
    text = report.render()
    assert "12 Secrets" in text and KEY_A in text and "unreadable: /registry/secrets/ns-2/broken" in text


def test_unknown_key_ids_are_reported_by_hash(etcd: FakeEtcdGateway) -> None:
    report = verify.verify_etcd(etcd.url, [KEY_A])
    assert report.counts[f"kms-v2-unknown-key:{key_id_for(KEY_B)}"] == 3


def test_cli_json_and_expect(etcd: FakeEtcdGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--etcd", etcd.url, "--key", KEY_A, "--key", KEY_B, "--json", "--namespaces"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 12 and out["counts"][KEY_B] == 3 and out["namespaces"]["ns-0"] == {KEY_A: 3}
    assert verify.main(["--etcd", etcd.url, "--expect", KEY_A]) == 1
    assert "not every Secret" in capsys.readouterr().err


class FakeApi:
    def __init__(self, secrets: list[dict[str, Any]]) -> None:
        self.secrets = secrets
        self.paths: list[str] = []

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        self.paths.append(path)
        offset = int(path.split("continue=")[1]) if "continue=" in path else 0
        page = self.secrets[offset:offset + 2]
        more = offset + 2 < len(self.secrets)
        return 200, {"items": page, "metadata": {"continue": str(offset + 2) if more else ""}}


def secret(ns: str, name: str, value: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "type": "Opaque",
            "data": {"k": base64.b64encode(value.encode()).decode()}}


def test_digests_detect_changed_and_missing_secrets_without_exposing_data() -> None:
    api = FakeApi([secret("a", "one", "v1"), secret("a", "two", "v2"), secret("b", "three", "v3")])
    before = verify.snapshot_digests(api, page_size=2)
    assert set(before) == {"a/one", "a/two", "b/three"}
    assert all(len(d) == 64 for d in before.values()) and "v1" not in json.dumps(before)
    assert verify.check_digests(api, before).ok
    api.secrets = [secret("a", "one", "v1"), secret("a", "two", "CHANGED"), secret("c", "new", "x")]
    report = verify.check_digests(api, before)
    assert not report.ok
    assert report.to_json() == {"checked": 2, "ok": False, "mismatched": ["a/two"], "missing": ["b/three"],
                                "unexpected": ["c/new"], "unreadable": []}
    assert any("limit=2" in p and "continue=2" in p for p in api.paths)


def test_plugin_runs_as_a_process() -> None:
    with tempfile.TemporaryDirectory(prefix="kms-", dir="/tmp") as d:
        sock, pem = Path(d) / "p.sock", Path(d) / "key.pem"
        env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
        proc = subprocess.Popen([sys.executable, "-m", "aks_kms_lab.kmsv2", "serve", "--socket", str(sock),
                                 "--key-id", KEY_A, "--local-key", str(pem)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
                time.sleep(0.05)
            with grpc.insecure_channel(f"unix://{sock}") as ch:
                stub = pb_grpc.KeyManagementServiceStub(ch)
                status = stub.Status(pb.StatusRequest(), timeout=5)
                wrapped = stub.Encrypt(pb.EncryptRequest(plaintext=b"s" * 32), timeout=5).ciphertext
            assert (status.healthz, status.key_id) == (HEALTHY, key_id_for(KEY_A))
            assert (pem.stat().st_mode & 0o777) == 0o600
            # the key file persists, so a restarted plugin still opens what it wrapped before
            assert LocalRsaWrapper.from_pem_file(KEY_A, pem).unwrap(wrapped) == b"s" * 32
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
        assert not sock.exists()
        out = subprocess.run([sys.executable, "-m", "aks_kms_lab.kmsv2", "key-id", KEY_A], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == key_id_for(KEY_A)
