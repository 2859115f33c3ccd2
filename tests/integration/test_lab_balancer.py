"""The lab's TCP balancer against plain TCP servers on 127.0.0.1 (no kube-apiserver needed).

Each backend answers every connection with its own name, then echoes; that is enough to see where
a connection went, that it stays there, and what happens when a backend is gone or out of rotation.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from aks_kms_lab.balancer import TcpBalancer
from aks_kms_lab.controlplane import free_port

pytestmark = pytest.mark.integration


class NamedEcho:
    """Says its name on connect, then echoes until the client half-closes, then closes."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.accept = threading.Thread(target=self._loop, daemon=True)
        self.accept.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.sendall(self.name + b"\n")
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.accept.join(timeout=5)


@pytest.fixture
def backends() -> Iterator[list[NamedEcho]]:
    servers = [NamedEcho(f"b{i}") for i in range(3)]
    yield servers
    for s in servers:
        s.close()


def hello(port: int) -> tuple[socket.socket, str]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    return conn, conn.makefile("rb").readline().decode().strip()


def test_round_robin_pinning_rotation_and_refused_backends(backends: list[NamedEcho]) -> None:
    dead = free_port()  # nothing listens there
    lb = TcpBalancer([("127.0.0.1", b.port) for b in backends[:2]] + [("127.0.0.1", dead)],
                     distribution="round-robin").start()
    try:
        names = []
        for _ in range(4):
            conn, name = hello(lb.port)
            names.append(name)
            conn.close()
        assert names == ["b0", "b1", "b0", "b1"]  # the dead backend is skipped, order kept
        assert lb.stats[2].refused >= 1 and lb.stats[2].accepted == 0

        kept, first = hello(lb.port)
        for i in range(5):  # a kept-alive connection stays where it went
            kept.sendall(f"ping {i}\n".encode())
            assert kept.recv(64) == f"ping {i}\n".encode()
        lb.set_in_rotation(int(first[1]), False)
        for _ in range(3):
            conn, name = hello(lb.port)
            assert name != first  # out of rotation: no new connection ...
            conn.close()
        kept.sendall(b"still\n")
        assert kept.recv(64) == b"still\n"  # ... but open ones are left alone

        # Half-close: the client's end of the request does not cut off the response.
        conn, _ = hello(lb.port)
        conn.sendall(b"last words\n")
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(64):
            received += chunk
        assert received == b"last words\n"
        conn.close()
        kept.close()
        threads = lb.threads()
    finally:
        lb.stop()
    assert not any(t.is_alive() for t in threads)
    assert lb.threads() == []


def test_a_backend_that_stops_listening_gets_no_new_connections(backends: list[NamedEcho]) -> None:
    lb = TcpBalancer([("127.0.0.1", b.port) for b in backends[:2]], distribution="round-robin").start()
    try:
        a, name_a = hello(lb.port)
        b, name_b = hello(lb.port)
        assert {name_a, name_b} == {"b0", "b1"}
        backends[0].close()  # b0 stops listening (its open connection stays, as with a draining server)
        survivor = b if name_b == "b1" else a
        survivor.sendall(b"x\n")
        assert survivor.recv(8) == b"x\n"
        for _ in range(3):  # b0 refuses now: every new connection goes to b1
            conn, name = hello(lb.port)
            assert name == "b1"
            conn.close()
        assert lb.stats[0].refused >= 1
        a.close()
        b.close()
    finally:
        lb.stop()


def test_no_backend_accepting_resets_the_client() -> None:
    lb = TcpBalancer([("127.0.0.1", free_port())]).start()
    try:
        conn = socket.create_connection(("127.0.0.1", lb.port), timeout=5)
        assert conn.recv(8) == b""  # closed at once: nothing to talk to
        conn.close()
    finally:
        lb.stop()


def test_hash_distribution_spreads_like_azure_and_does_not_alias(backends: list[NamedEcho]) -> None:
    """The default picks a backend from the client's address and port (Azure hashes the 5-tuple): over
    many connections both backends get a fair share, and every other connection is not always the same
    one (strict round-robin would give a client that alternates with another one a single backend)."""
    lb = TcpBalancer([("127.0.0.1", b.port) for b in backends[:2]]).start()
    try:
        names = []
        for _ in range(120):
            with socket.create_connection(("127.0.0.1", lb.port)) as conn:
                names.append(conn.recv(8).strip().decode())
        assert 30 <= names.count("b0") <= 90, names  # binomial(120, 1/2): 5 standard deviations
        assert {names[i] for i in range(0, 120, 2)} == {"b0", "b1"}  # even-numbered ones are not aliased
    finally:
        lb.stop()
