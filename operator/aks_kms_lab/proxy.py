"""The lab's HTTPS proxy: real Azure host names, answered by the fake Azure, and nothing else.

Why a proxy: the Azure CLI (and any Azure SDK) builds its URLs from Azure's public names
(``https://login.microsoftonline.com``, ``https://management.azure.com``, ``https://<vault>.vault.azure.net``
on port 443). A CONNECT proxy on 127.0.0.1 takes those names without /etc/hosts edits, a root port or a
custom cloud: the client honours ``HTTPS_PROXY`` and trusts the fake's CA through ``REQUESTS_CA_BUNDLE``
(``aks-kms-operator lab env --az`` prints both). TLS stays end to end between the client and the fake,
whose certificate names these hosts (``fake_azure.server.AZURE_HOSTS``).

The proxy connects every allowed tunnel to the fake's *public* listener (``FakeAzure.public_port``), so
what arrives through it is public-network traffic: a vault whose public access is disabled refuses it,
as Azure does, while the KMS plugin, which connects to the fake's own address (the private link), still
reaches it. ``CONNECT`` to any other host or port is refused with 403 and the connection closed: the lab
never forwards anywhere else, and plain-HTTP proxying is not offered (405).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import select
import socket
import socketserver
import threading
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

_MAX_HEADER = 16 * 1024
_IDLE_SECONDS = 120.0  # a tunnel with no traffic either way for this long is closed


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """``host`` matches one of the patterns (``*.vault.azure.net`` matches exactly one label)."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            suffix = pattern[1:]
            if host.endswith(suffix) and "." not in host[: -len(suffix)] and host[: -len(suffix)]:
                return True
        elif fnmatch.fnmatchcase(host, pattern):
            return True
    return False


class _Handler(socketserver.BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        client.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
            if len(head) > _MAX_HEADER:
                self._answer(client, 431, "Request Header Fields Too Large")
                return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0].upper() != "CONNECT":
            self._answer(client, 405, "Method Not Allowed", "the lab proxy only tunnels HTTPS (CONNECT)")
            return
        host, _, port = parts[1].rpartition(":")
        host = host.strip("[]")
        if port != "443" or not host_allowed(host, self.server.allowed):
            log.info("proxy: refused CONNECT %s", parts[1])
            self.server.refused.append(parts[1])
            self._answer(client, 403, "Forbidden", f"the lab proxy serves only {', '.join(self.server.allowed)} "
                                                   "on port 443; it never reaches the internet")
            return
        try:
            upstream = socket.create_connection(self.server.upstream, timeout=10)
        except OSError as err:
            self._answer(client, 502, "Bad Gateway", f"the fake Azure is not answering: {err}")
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                upstream.sendall(rest)
            self._pipe(client, upstream)

    def _pipe(self, client: socket.socket, upstream: socket.socket) -> None:
        sockets = [client, upstream]
        for s in sockets:
            s.setblocking(True)
            s.settimeout(None)
        last = time.monotonic()
        while not self.server.stopping.is_set():
            readable, _, _ = select.select(sockets, [], [], 0.5)
            if not readable:
                if time.monotonic() - last > _IDLE_SECONDS:
                    return
                continue
            last = time.monotonic()
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                other = upstream if s is client else client
                try:
                    other.sendall(data)
                except OSError:
                    return

    @staticmethod
    def _answer(client: socket.socket, status: int, reason: str, detail: str = "") -> None:
        body = (detail or reason).encode() + b"\n"
        with contextlib.suppress(OSError):
            client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
                           "\r\nConnection: close\r\n\r\n".encode() + body)


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], allowed: tuple[str, ...]) -> None:
        self.upstream = upstream
        self.allowed = allowed
        self.stopping = threading.Event()
        self.refused: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class AzureProxy:
    """CONNECT proxy on 127.0.0.1 that tunnels ``allowed`` hosts (port 443) to ``upstream`` only."""

    def __init__(self, upstream_port: int, allowed: Iterable[str]) -> None:
        self._server = _ProxyServer(("127.0.0.1", upstream_port), tuple(allowed))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Value for ``HTTPS_PROXY``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def refused(self) -> list[str]:
        """``host:port`` of every CONNECT refused so far (for tests and ``lab status``)."""
        return list(self._server.refused)

    def start(self) -> AzureProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="lab-azure-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
