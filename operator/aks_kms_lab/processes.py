"""Child processes that never outlive the lab or the test run that started them.

Each server runs in its own process group, logs to a file, and (unless it is meant to outlive its
parent, as with ``lab up``) is tied to the parent with ``PR_SET_PDEATHSIG`` so even a ``kill -9`` of
pytest takes it down. ``stop`` sends SIGTERM to the group, waits, then SIGKILLs what is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# No Python runs in a child between fork and exec (no preexec_fn): the lab forks from a process full of
# threads (gRPC KMS plugins, the fake Azure, the balancer), and Python code there can deadlock on a lock
# another thread held at fork time (dlopen's, an allocator's) or trip over inherited gRPC state, so a
# replica restart would now and then never come back. util-linux (essential on every Debian/Ubuntu) does
# the work instead, each tool exec'ing the next in the same process:
#   unshare --uts       a UTS namespace of its own, then sh writes its host name (see can_set_hostname)
#   setpriv --pdeathsig KILL   dies with the thread that started it (see _Spawner)
# and Popen's start_new_session gives the child its own process group (stop_pid signals the group).
_SET_HOSTNAME = 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"'


def _util_linux(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} (util-linux) is missing: the lab needs it to start its servers "
                                "(apt-get install util-linux)")
    return path


def own_hostname_argv(name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in a UTS namespace of its own with host name ``name`` (needs root).

    The host name is all that changes: network, mounts and PIDs stay shared. kube-apiserver derives its
    identity Lease name from the host name only (see ``controlplane``), so this is how replicas on one
    machine get one Lease each.
    """
    return [_util_linux("unshare"), "--uts", "--", "/bin/sh", "-c", _SET_HOSTNAME, name, *argv]


def die_with_parent_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``PR_SET_PDEATHSIG`` = SIGKILL: it dies with the thread that started it."""
    return [_util_linux("setpriv"), "--pdeathsig", "KILL", "--", *argv]


@functools.cache
def can_set_hostname() -> bool:
    """Whether this process may start children in their own UTS namespace (root, no seccomp veto)."""
    try:
        subprocess.run(own_hostname_argv("aks-kms-lab-probe", ["true"]), check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class _Spawner:
    """A daemon thread that lives as long as the process and does every fork."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as err:  # handed to the caller
                future.set_exception(err)

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="aks-kms-lab-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result()


_SPAWNER = _Spawner()


class ManagedProcess:
    """One server process with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, tie_to_parent: bool = True,
                 env: dict[str, str] | None = None, hostname: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.tie_to_parent = tie_to_parent
        self.env = env
        self.hostname = hostname  # run in a UTS namespace of its own with this host name (see can_set_hostname)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = die_with_parent_argv(self.argv) if self.tie_to_parent else list(self.argv)
        if self.hostname:
            argv = own_hostname_argv(self.hostname, argv)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            spawn = functools.partial(
                subprocess.Popen,
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits, not the process. A restart
            # requested from a short-lived thread (the fake ARM's operation thread) would otherwise
            # kill the new API server the moment that thread ends; fork from one thread that lives
            # as long as the process instead.
            self.proc = _SPAWNER.run(spawn) if self.tie_to_parent else spawn()
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        stop_pid(self.proc.pid, timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)
        self.proc = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid):
                return
            time.sleep(0.05)
