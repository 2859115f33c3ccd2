"""The lab's KMS v2 plugin: one gRPC server on a Unix socket per Key Vault key version.

It behaves like AKS's plugin (Azure/kubernetes-kms) where the API server can tell:

* key ID = hex SHA-256 of the versioned key URL, so rotating the key version means a new plugin
  instance with a new key ID, and the API server's config lists one provider per loaded version;
* Encrypt wraps the API server's seed with RSA-OAEP-256 and refuses to answer if the key that
  wrapped is not the configured one; it stores ``version.azure.akv.io`` and ``algorithm.azure.akv.io``
  annotations, and Decrypt refuses any other key ID or annotation values;
* Status is a real wrap + unwrap, so a disabled or expired key (or an unreachable vault) turns the
  plugin unhealthy. The verdict is cached for ``health_ttl`` seconds: the API server polls every
  minute (10 s while unhealthy), and readiness probes and tests may poll more often.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc

from . import kmsv2_service_pb2 as pb
from . import kmsv2_service_pb2_grpc as pb_grpc
from .wrappers import ALGORITHM, KeyUnavailableError, KeyWrapper, key_id_for

log = logging.getLogger(__name__)

API_VERSION = "v2"
HEALTHY = "ok"
VERSION_ANNOTATION = "version.azure.akv.io"
ALGORITHM_ANNOTATION = "algorithm.azure.akv.io"
ENCRYPTION_RESPONSE_VERSION = b"1"
MAX_CIPHERTEXT = 1024


class KmsPlugin(pb_grpc.KeyManagementServiceServicer):
    """The servicer: Status, Encrypt and Decrypt for one key version."""

    def __init__(self, wrapper: KeyWrapper, *, health_ttl: float = 5.0) -> None:
        self.wrapper = wrapper
        self.key_url = wrapper.key_url
        self.key_id = key_id_for(wrapper.key_url)
        self.health_ttl = health_ttl
        self.calls: Counter[str] = Counter()  # per RPC, for tests and logs
        self._health_lock = threading.Lock()
        self._health: tuple[float, str] | None = None  # (monotonic time checked, verdict)

    # ------------------------------------------------------------------ health

    def health(self, *, fresh: bool = False) -> str:
        """``"ok"`` or the reason the key is unusable, from a wrap + unwrap at most ``health_ttl`` old."""
        with self._health_lock:
            now = time.monotonic()
            if not fresh and self._health is not None and now - self._health[0] < self.health_ttl:
                return self._health[1]
            verdict = self._probe()
            self._health = (time.monotonic(), verdict)
            if verdict != HEALTHY:
                log.warning("key %s unhealthy: %s", self.key_url, verdict)
            return verdict

    def _probe(self) -> str:
        probe = secrets.token_bytes(32)
        try:
            wrapped = self.wrapper.wrap(probe)
            if key_id_for(wrapped.key_url) != self.key_id:
                return f"key {wrapped.key_url} wrapped, but this plugin serves {self.key_url}"
            if self.wrapper.unwrap(wrapped.ciphertext) != probe:
                return "unwrap did not return the wrapped probe"
        except KeyUnavailableError as e:
            return str(e) or type(e).__name__
        except Exception as e:  # health must answer, whatever the wrapper raised
            log.exception("health probe of %s failed", self.key_url)
            return f"{type(e).__name__}: {e}"
        return HEALTHY

    # ------------------------------------------------------------------ RPCs

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        self.calls["Status"] += 1
        return pb.StatusResponse(version=API_VERSION, healthz=self.health(), key_id=self.key_id)

    def Encrypt(self, request: pb.EncryptRequest, context: grpc.ServicerContext) -> pb.EncryptResponse:
        self.calls["Encrypt"] += 1
        if not request.plaintext:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "plaintext is empty")
        try:
            wrapped = self.wrapper.wrap(request.plaintext)
        except KeyUnavailableError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"encrypt with {self.key_url}: {e}")
        if key_id_for(wrapped.key_url) != self.key_id:
            # The real plugin checks the kid Key Vault returns: a key URL that resolved to another
            # version must never produce a ciphertext stored under this key ID.
            context.abort(grpc.StatusCode.INTERNAL,
                          f"key {wrapped.key_url} wrapped, but this plugin serves {self.key_url}")
        if len(wrapped.ciphertext) > MAX_CIPHERTEXT:
            context.abort(grpc.StatusCode.INTERNAL, "wrapped key exceeds 1 KiB")
        return pb.EncryptResponse(
            ciphertext=wrapped.ciphertext,
            key_id=self.key_id,
            annotations={VERSION_ANNOTATION: ENCRYPTION_RESPONSE_VERSION, ALGORITHM_ANNOTATION: ALGORITHM.encode()},
        )

    def Decrypt(self, request: pb.DecryptRequest, context: grpc.ServicerContext) -> pb.DecryptResponse:
        self.calls["Decrypt"] += 1
        if request.key_id != self.key_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"key ID {request.key_id!r} does not match this plugin's key ID {self.key_id!r}")
        annotations = dict(request.annotations)
        version = annotations.get(VERSION_ANNOTATION, ENCRYPTION_RESPONSE_VERSION)
        algorithm = annotations.get(ALGORITHM_ANNOTATION, ALGORITHM.encode())
        if version != ENCRYPTION_RESPONSE_VERSION or algorithm != ALGORITHM.encode():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unsupported encryption version {version!r} or algorithm {algorithm!r}")
        try:
            plaintext = self.wrapper.unwrap(request.ciphertext)
        except KeyUnavailableError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"decrypt with {self.key_url}: {e}")
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"decrypt with {self.key_url}: {e}")
        return pb.DecryptResponse(plaintext=plaintext)


class PluginServer:
    """A :class:`KmsPlugin` served on a Unix socket; usable in-process (tests) and by ``serve``.

    >>> with PluginServer(Path("/tmp/kms-a.sock"), LocalRsaWrapper(url)) as server:  # doctest: +SKIP
    ...     server.endpoint   # "unix:///tmp/kms-a.sock", for the EncryptionConfiguration
    """

    def __init__(self, socket_path: Path | str, wrapper: KeyWrapper, *, health_ttl: float = 5.0,
                 max_workers: int = 16) -> None:
        self.socket_path = Path(socket_path)
        if len(str(self.socket_path)) > 100:  # sun_path is 108 bytes including the terminator
            raise ValueError(f"socket path too long for a Unix socket: {self.socket_path}")
        self.plugin = KmsPlugin(wrapper, health_ttl=health_ttl)
        self.max_workers = max_workers
        self._server: grpc.Server | None = None

    @property
    def key_id(self) -> str:
        return self.plugin.key_id

    @property
    def key_url(self) -> str:
        return self.plugin.key_url

    @property
    def endpoint(self) -> str:
        """The ``endpoint`` value for the API server's EncryptionConfiguration."""
        return f"unix://{self.socket_path.resolve()}"

    def start(self) -> PluginServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a killed predecessor
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers,
                                                        thread_name_prefix=f"kms-{self.key_id[:8]}"))
        pb_grpc.add_KeyManagementServiceServicer_to_server(self.plugin, server)
        server.add_insecure_port(f"unix:{self.socket_path.resolve()}")
        server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server
        log.info("KMS v2 plugin for %s (key ID %s) on %s", self.key_url, self.key_id, self.endpoint)
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self.socket_path.is_socket():
            self.socket_path.unlink()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> PluginServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
