"""Raw etcd reads through etcd's JSON gateway (``POST /v3/kv/range``), and what a stored value is.

The verifier must look *under* the API server: only the bytes in etcd say which key encrypted a
Secret. The gateway speaks JSON with base64 keys and values, so the standard library is enough.
Reads are paginated (``limit``) and pinned to the revision of the first page, so a scan of 50k
Secrets is one consistent snapshot and holds one page in memory at a time.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from .kmsv2.envelope import PREFIX as KMS_V2_PREFIX
from .kmsv2.envelope import EnvelopeError, KmsV2Value, parse
from .kmsv2.wrappers import key_id_for

SECRETS_PREFIX = "/registry/secrets/"
PROTOBUF_MAGIC = b"k8s\x00"
JSON_START = b"{"  # an API server with --storage-media-type=application/json
_ENC = b"k8s:enc:"


def prefix_range_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's ``WithPrefix``)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class RawValue:
    key: str  # /registry/secrets/<namespace>/<name>
    value: bytes
    mod_revision: int

    @property
    def namespace(self) -> str:
        return self.key.rstrip("/").split("/")[-2]

    @property
    def name(self) -> str:
        return self.key.rstrip("/").split("/")[-1]


class EtcdClient:
    """The few range reads the lab needs, over etcd's v3 JSON gateway."""

    def __init__(self, url: str, *, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.last_revision = 0  # the revision the last scan read at

    def _range(self, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(f"{self.url}/v3/kv/range", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.loads(r.read())

    def get(self, key: str) -> RawValue | None:
        out = self._range({"key": _b64(key.encode())})
        kvs = out.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]  # type: ignore[index]
        return RawValue(key, base64.b64decode(kv.get("value", "")), int(kv.get("mod_revision", 0)))

    def put(self, key: str, value: bytes) -> None:
        """Write one raw value, bypassing the API server (tests: a value no API server can decrypt)."""
        req = urllib.request.Request(f"{self.url}/v3/kv/put", method="POST",
                                     data=json.dumps({"key": _b64(key.encode()), "value": _b64(value)}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            r.read()

    def scan(self, prefix: str = SECRETS_PREFIX, *, page_size: int = 500,
             keys_only: bool = False) -> Iterator[RawValue]:
        """Every key under ``prefix`` in key order, one page at a time, at one revision
        (``keys_only``: values come back empty)."""
        start = prefix.encode()
        end = prefix_range_end(start)
        revision = 0
        while True:
            body: dict[str, object] = {"key": _b64(start), "range_end": _b64(end), "limit": page_size}
            if keys_only:
                body["keys_only"] = True
            if revision:
                body["revision"] = revision
            out = self._range(body)
            if not revision:
                revision = int(out.get("header", {}).get("revision", 0))  # type: ignore[union-attr]
                self.last_revision = revision
            kvs = out.get("kvs") or []
            for kv in kvs:  # type: ignore[union-attr]
                key = base64.b64decode(kv["key"])
                yield RawValue(key.decode(errors="replace"), base64.b64decode(kv.get("value", "")),
                               int(kv.get("mod_revision", 0)))
            if not out.get("more") or not kvs:
                return
            start = key + b"\x00"


# ---------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class StoredAs:
    """How one value is stored.

    ``kind``: ``kms-v2`` (``key_url`` set when the key ID is a known key's), ``identity`` (plaintext),
    ``other`` (another provider, e.g. ``aescbc:v1:key1`` or ``kms:v1:<name>`` in ``provider``),
    ``unreadable`` (neither: a truncated or foreign value; ``detail`` says why).
    """

    kind: str
    provider: str = ""
    key_id: str = ""
    key_url: str | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        """One string per bucket of the verify report."""
        if self.kind == "kms-v2":
            return self.key_url or f"kms-v2-unknown-key:{self.key_id}"
        if self.kind == "other":
            return self.provider
        return self.kind


class Classifier:
    """Classifies stored values, mapping KMS v2 key IDs back to the key URLs we know."""

    def __init__(self, key_urls: list[str] | tuple[str, ...] = ()) -> None:
        self.key_urls = {key_id_for(url): url for url in key_urls}

    def classify(self, value: bytes) -> StoredAs:
        if value.startswith(KMS_V2_PREFIX):
            try:
                parsed: KmsV2Value = parse(value)
            except EnvelopeError as e:
                return StoredAs("unreadable", detail=str(e))
            return StoredAs("kms-v2", provider=parsed.provider, key_id=parsed.key_id,
                            key_url=self.key_urls.get(parsed.key_id))
        if value.startswith(_ENC):
            # k8s:enc:<type>:<version>:<provider or key name>:...
            parts = value[len(_ENC):].split(b":", 3)
            if len(parts) < 4:
                return StoredAs("unreadable", detail="encryption prefix without a provider name")
            return StoredAs("other", provider=b":".join(parts[:3]).decode(errors="replace"))
        if value.startswith(PROTOBUF_MAGIC) or value.startswith(JSON_START):
            return StoredAs("identity")
        return StoredAs("unreadable", detail="no known prefix")
