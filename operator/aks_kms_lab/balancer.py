"""A TCP load balancer on 127.0.0.1 in front of the lab's kube-apiserver replicas, as AKS has one.

AKS serves the API through an Azure load balancer in front of several kube-apiserver replicas. Two of
its properties matter to anything that re-encrypts Secrets, and this balancer reproduces both:

* it is a plain TCP pass-through: TLS ends at the replica, so a client cannot tell replicas apart
  except by connecting again;
* a connection is pinned to the replica it was first sent to for its whole life; only *new*
  connections are spread over the replicas that accept connections, by a hash of the client's address
  and port, as Azure Load Balancer hashes the 5-tuple (``distribution="hash"``, the default).
  ``distribution="round-robin"`` is there for tests that need a fixed order. Round-robin is not
  the default because it aliases: a client that opens a connection every half second, next to another
  one doing the same, would always meet the same replica, and a lab that spreads more evenly than
  Azure would make probes look more conclusive than they are.

So a client that keeps one HTTP connection alive talks to one replica only, however many requests it
sends. That is what lets a replica that has not reloaded its encryption configuration answer every
request of such a client, and what the lab must be able to show.

Replicas can be taken out of rotation (as an Azure health probe would once a replica stops answering)
with :meth:`TcpBalancer.set_in_rotation`; a replica that refuses connections is skipped as well.
Threads: one accept thread and two per proxied connection; :meth:`stop` closes every socket and joins
them all, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass
class BackendStats:
    """Connections the balancer sent to one replica."""

    accepted: int = 0  # connections proxied to it, ever
    active: int = 0  # connections open to it now
    refused: int = 0  # connect attempts it refused (not listening, restarting)


@dataclass
class _Pair:
    client: socket.socket
    backend: socket.socket
    index: int
    threads: list[threading.Thread] = field(default_factory=list)
    directions_done: int = 0
    closed: bool = False


class TcpBalancer:
    """Round-robin TCP pass-through from ``127.0.0.1:port`` to ``backends`` (host, port)."""

    def __init__(self, backends: Sequence[tuple[str, int]], *, port: int = 0, host: str = "127.0.0.1",
                 connect_timeout: float = 2.0, distribution: str = "hash") -> None:
        if distribution not in ("hash", "round-robin"):
            raise ValueError(f"distribution must be 'hash' or 'round-robin', not {distribution!r}")
        self.backends = list(backends)
        self.distribution = distribution
        self.host = host
        self._requested_port = port
        self.connect_timeout = connect_timeout
        self.stats = [BackendStats() for _ in self.backends]
        self._in_rotation = [True] * len(self.backends)
        self._next = 0
        self._lock = threading.Lock()
        self._pair_objs: dict[int, _Pair] = {}
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TcpBalancer:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port))
        listener.listen(128)
        listener.settimeout(0.2)  # the accept loop checks for stop this often
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="lab-balancer-accept", daemon=True)
        self._accept_thread.start()
        return self

    @property
    def port(self) -> int:
        if self._listener is None:
            return self._requested_port
        return int(self._listener.getsockname()[1])

    def stop(self) -> None:
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=10)
            self._accept_thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs = list(self._pair_objs.values())
        for pair in pairs:
            self._close_pair(pair)
        for pair in pairs:
            for t in pair.threads:
                if t is not threading.current_thread():
                    t.join(timeout=10)

    def __enter__(self) -> TcpBalancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def threads(self) -> list[threading.Thread]:
        """Every thread the balancer runs now (for leak checks in tests)."""
        with self._lock:
            out = [t for p in self._pair_objs.values() for t in p.threads if t.is_alive()]
        if self._accept_thread is not None and self._accept_thread.is_alive():
            out.append(self._accept_thread)
        return out

    # ------------------------------------------------------------------ rotation

    def set_in_rotation(self, index: int, in_rotation: bool) -> None:
        """Send new connections to replica ``index`` (or stop doing so; open ones are left alone)."""
        with self._lock:
            self._in_rotation[index] = in_rotation

    def in_rotation(self, index: int) -> bool:
        with self._lock:
            return self._in_rotation[index]

    def _candidates(self, peer: tuple[str, int]) -> list[int]:
        """Replicas in rotation, starting with the one the distribution picks for this client."""
        with self._lock:
            n = len(self.backends)
            if self.distribution == "hash":
                digest = hashlib.sha256(f"{peer[0]}:{peer[1]}:{self.port}".encode()).digest()
                start = int.from_bytes(digest[:8], "big") % n
            else:
                start = self._next
                self._next = (self._next + 1) % n
            return [(start + k) % n for k in range(n) if self._in_rotation[(start + k) % n]]

    # ------------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            client.settimeout(None)
            self._connect(client, peer)

    def _connect(self, client: socket.socket, peer: tuple[str, int]) -> None:
        for index in self._candidates(peer):
            try:
                backend = socket.create_connection(self.backends[index], timeout=self.connect_timeout)
            except OSError:
                with self._lock:
                    self.stats[index].refused += 1
                continue
            backend.settimeout(None)
            pair = _Pair(client, backend, index)
            with self._lock:
                if self._stopping.is_set():
                    break
                self.stats[index].accepted += 1
                self.stats[index].active += 1
                if self.distribution == "round-robin":  # past a refusing replica: keep the spread even
                    self._next = (index + 1) % len(self.backends)
                self._pair_objs[id(pair)] = pair
            pair.threads = [
                threading.Thread(target=self._pump, args=(pair, client, backend), daemon=True,
                                 name=f"lab-balancer-{index}-up"),
                threading.Thread(target=self._pump, args=(pair, backend, client), daemon=True,
                                 name=f"lab-balancer-{index}-down"),
            ]
            for t in pair.threads:
                t.start()
            return
        with contextlib.suppress(OSError):
            client.close()  # no replica takes connections: the client sees a reset, as behind an LB

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    # Half-close: the other direction may still have a response in flight.
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except OSError:
            self._close_pair(pair)
            return
        # This direction ended cleanly; the pair is done once the other direction ends too.
        with self._lock:
            pair.directions_done += 1
            both = pair.directions_done == 2
        if both:
            self._close_pair(pair)

    def _close_pair(self, pair: _Pair) -> None:
        with self._lock:
            if pair.closed:
                return
            pair.closed = True
            self.stats[pair.index].active -= 1
            self._pair_objs.pop(id(pair), None)
        for s in (pair.client, pair.backend):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
