"""Leader election on a ``coordination.k8s.io/v1`` Lease: of all operator replicas, exactly one acts.

Why: two reconcilers would each decide "the next step is the ARM PUT" and each send it, and two
rewrites would race their checkpoints. kopf's peering only pauses lower priorities and freezes equal
ones, so it is not mutual exclusion; a Lease with optimistic concurrency is (the client-go recipe):

* **acquire** only when the Lease is free (no holder, or a holder that released it) or has not
  changed for a whole ``leaseDurationSeconds`` *as seen by this process's own monotonic clock*
  (never by comparing another node's ``renewTime`` with our wall clock); every write is a PUT that
  carries the ``resourceVersion`` we read, so of two standbys racing for an expired Lease one gets
  409 and stays standby;
* **renew** every ``renew_interval`` seconds while leading;
* **stop acting at once** when no renewal has succeeded for ``renew_deadline`` seconds (less than
  the lease duration, so we stop before any standby may consider the Lease expired) or when the
  Lease names someone else. Carrying on "carefully" is what a split brain looks like. The process
  logs why and then, by default (``AKS_KMS_LEADER_ON_LOSS=restart``), re-executes itself: the
  exec replaces every thread and task at once, exactly as an exit would, and the fresh process
  rejoins as a standby without depending on a supervisor and without the kubelet's crash-loop
  back-off. (Why not only exit: the lab and the tests run the operator without a supervisor, and
  the lab's single API server is down for more than ten seconds while it reloads a KMS key.)
  ``AKS_KMS_LEADER_ON_LOSS=exit`` exits with ``EXIT_LEADERSHIP_LOST`` instead, client-go's
  pattern, and leaves the restart to the Deployment. Either way a process that still finds itself
  the holder (same ``POD_NAME``, or same pid after the re-exec) takes its Lease back at once;
* **release** on graceful shutdown (holder cleared) so the standby takes over within one retry
  interval instead of one lease duration.

The handlers block in a kopf startup handler until ``acquire`` returns, so no handler or daemon of
a standby ever runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import socket
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .kube import KubeClient, KubeError

log = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
EXIT_LEADERSHIP_LOST = 3
_FALSE = {"false", "0", "no", "off", "disabled"}


@dataclass(frozen=True)
class LeaderSettings:
    """Who we are and the Lease timings (client-go's defaults: 15 s lease, 10 s renew deadline)."""

    enabled: bool = True
    namespace: str = "aks-kms-system"
    lease_name: str = "aks-kms-operator"
    identity: str = ""
    lease_duration: float = 15.0
    renew_interval: float = 5.0
    renew_deadline: float = 10.0
    retry_interval: float = 2.0
    on_loss: str = "restart"  # or "exit"

    def __post_init__(self) -> None:
        if self.on_loss not in ON_LOSS:
            raise ValueError(f"leader election: AKS_KMS_LEADER_ON_LOSS must be one of {sorted(ON_LOSS)}")
        if not 0 < self.renew_interval < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < renew interval < renew deadline < lease duration, got "
                             f"{self.renew_interval} < {self.renew_deadline} < {self.lease_duration}")
        if self.retry_interval <= 0:
            raise ValueError("leader election retry interval must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LeaderSettings:
        """``AKS_KMS_LEADER_ELECTION`` (default true), ``AKS_KMS_LEASE_NAME``,
        ``AKS_KMS_LEASE_DURATION_SECONDS`` (renew interval and deadline follow as 1/3 and 2/3 of it
        unless ``AKS_KMS_LEASE_RENEW_INTERVAL_SECONDS``/``AKS_KMS_LEASE_RENEW_DEADLINE_SECONDS`` say
        otherwise); the identity is ``POD_NAME`` (downward API), else hostname and pid."""
        env = os.environ if env is None else env

        def num(name: str, default: float) -> float:
            return float(env.get(name) or default)

        duration = num("AKS_KMS_LEASE_DURATION_SECONDS", cls.lease_duration)
        return cls(
            enabled=(env.get("AKS_KMS_LEADER_ELECTION") or "true").strip().lower() not in _FALSE,
            namespace=env.get("AKS_KMS_NAMESPACE") or env.get("POD_NAMESPACE") or cls.namespace,
            lease_name=env.get("AKS_KMS_LEASE_NAME") or cls.lease_name,
            identity=env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            lease_duration=duration,
            renew_interval=num("AKS_KMS_LEASE_RENEW_INTERVAL_SECONDS", duration / 3),
            renew_deadline=num("AKS_KMS_LEASE_RENEW_DEADLINE_SECONDS", duration * 2 / 3),
            retry_interval=num("AKS_KMS_LEASE_RETRY_INTERVAL_SECONDS", min(cls.retry_interval, duration / 5)),
            on_loss=(env.get("AKS_KMS_LEADER_ON_LOSS") or cls.on_loss).strip().lower(),
        )

    def stop_acting(self) -> Callable[[str], None]:
        """What to do on losing the Lease (``on_loss``)."""
        return ON_LOSS[self.on_loss]


# ---------------------------------------------------------------------------------------- pure part

@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease that election reads."""

    holder: str
    duration: float
    transitions: int
    acquire_time: str | None
    resource_version: str

    @classmethod
    def parse(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )


def may_take(record: LeaseRecord, identity: str, *, unchanged_for: float) -> bool:
    """True when ``identity`` may write itself into the Lease.

    ``unchanged_for`` is how long *this process* has seen the same resourceVersion: expiry is judged
    on our own clock from the moment we first saw the current record, never from the holder's
    ``renewTime`` (another node's clock).
    """
    if not record.holder or record.holder == identity:
        return True
    return unchanged_for >= record.duration


def micro_time(now: dt.datetime) -> str:
    """A ``MicroTime`` as the API expects it (RFC 3339, microseconds, UTC)."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(name: str, namespace: str, identity: str, *, duration: float, now: dt.datetime,
               previous: LeaseRecord | None) -> dict[str, Any]:
    """The Lease to PUT (or POST when ``previous`` is None) to hold it as ``identity``.

    ``identity=""`` releases it. ``leaseTransitions`` counts changes of holder, as client-go does
    (a release is not one: the next holder's takeover is).
    """
    stamp = micro_time(now)
    keeps = previous is not None and previous.holder == identity and bool(identity)
    changes = previous is not None and bool(identity) and previous.holder != identity
    transitions = 0 if previous is None else previous.transitions + (1 if changes else 0)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None:
        metadata["resourceVersion"] = previous.resource_version
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, math.ceil(duration)),
        "acquireTime": previous.acquire_time if keeps and previous and previous.acquire_time else stamp,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


# ---------------------------------------------------------------------------------- losing the lease

def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def exit_now(reason: str) -> None:
    """Lost leadership: log why and end the process without running anything else.

    ``os._exit`` and not an exception or a graceful kopf stop: a graceful stop would let the
    reconcile daemons run on for their cancellation timeout while a standby may already act.
    """
    log.critical("leadership lost, exiting (status %d) so that a restart rejoins as a standby: %s",
                 EXIT_LEADERSHIP_LOST, reason)
    _flush_logs()
    os._exit(EXIT_LEADERSHIP_LOST)


def restart_now(reason: str) -> None:
    """Lost leadership: log why and re-execute this very command line as a fresh standby.

    ``sys.orig_argv`` is the command as started (``python -m ...`` included), so the new image is
    the same program; nothing of the old one (threads, tasks, sockets) survives the exec.
    """
    log.critical("leadership lost, restarting as a standby: %s", reason)
    _flush_logs()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    finally:  # exec failed: still never act again
        os._exit(EXIT_LEADERSHIP_LOST)


ON_LOSS: dict[str, Callable[[str], None]] = {"restart": restart_now, "exit": exit_now}


# ------------------------------------------------------------------------------------------ elector


class LeaderElector:
    """Acquire, renew and release one Lease; see the module docstring for the rules.

    ``kube`` should be a client of its own (a small pool): lease renewals must never queue behind
    the rewrite's 64 concurrent requests.
    """

    def __init__(self, kube: KubeClient, settings: LeaderSettings, *,
                 on_lost: Callable[[str], None] = exit_now) -> None:
        self.kube = kube
        self.settings = settings
        self.on_lost = on_lost
        self.leading = False
        self.holder = ""  # the holder we last saw (ourselves while leading)
        self._record: LeaseRecord | None = None  # the last record we read or wrote
        self._observed_at = 0.0  # monotonic time we first saw self._record's resourceVersion
        self._renewed_at = -math.inf  # monotonic start of the last successful acquire/renew
        self._task: asyncio.Task[None] | None = None

    @property
    def _collection(self) -> str:
        return LEASES.format(namespace=self.settings.namespace)

    @property
    def _path(self) -> str:
        return f"{self._collection}/{self.settings.lease_name}"

    def _observe(self, lease: Mapping[str, Any], at: float) -> LeaseRecord:
        record = LeaseRecord.parse(lease)
        if self._record is None or record.resource_version != self._record.resource_version:
            self._observed_at = at
        self._record = record
        self.holder = record.holder
        return record

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards. Raises on transport/API errors."""
        s = self.settings
        started = time.monotonic()
        if self.leading and self._record is not None:  # fast path: renew on top of what we wrote
            body = lease_body(s.lease_name, s.namespace, s.identity, duration=s.lease_duration,
                              now=dt.datetime.now(dt.UTC), previous=self._record)
            try:
                self._observe(await self.kube.request("PUT", self._path, body=body), started)
            except KubeError as err:
                if err.status != 409:
                    raise
            else:
                self._renewed_at = started
                return True
        try:
            lease = await self.kube.request("GET", self._path)
        except KubeError as err:
            if err.status != 404:
                raise
            body = lease_body(s.lease_name, s.namespace, s.identity, duration=s.lease_duration,
                              now=dt.datetime.now(dt.UTC), previous=None)
            try:
                created = await self.kube.request("POST", self._collection, body=body)
            except KubeError as race:
                if race.status == 409:  # another replica created it first
                    return False
                if race.status == 404:
                    raise KubeError(404, race.reason, f"namespace {s.namespace} does not exist (the operator's "
                                    "namespace: AKS_KMS_NAMESPACE or POD_NAMESPACE)", body=race.body) from race
                raise
            self._observe(created, started)
            self._renewed_at = started
            return True
        record = self._observe(lease, time.monotonic())
        if not may_take(record, s.identity, unchanged_for=time.monotonic() - self._observed_at):
            return False
        body = lease_body(s.lease_name, s.namespace, s.identity, duration=s.lease_duration,
                          now=dt.datetime.now(dt.UTC), previous=record)
        try:
            self._observe(await self.kube.request("PUT", self._path, body=body), started)
        except KubeError as err:
            if err.status == 409:  # the resourceVersion moved: someone else won the race
                return False
            raise
        self._renewed_at = started
        return True

    async def acquire(self) -> None:
        """Block until we hold the Lease (standby until then); errors are logged and retried."""
        s = self.settings
        seen = None
        while True:
            try:
                if await self.try_acquire_or_renew():
                    self.leading = True
                    log.info("leading: holding lease %s/%s as %s (transitions %d)", s.namespace, s.lease_name,
                             s.identity, self._record.transitions if self._record else 0)
                    return
                if self.holder != seen:
                    seen = self.holder
                    log.info("standing by: lease %s/%s is held by %s (lease %gs)", s.namespace, s.lease_name,
                             self.holder, self._record.duration if self._record else s.lease_duration)
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as err:
                log.warning("leader election: cannot read or write lease %s/%s: %s", s.namespace, s.lease_name, err)
            await asyncio.sleep(s.retry_interval)

    def start_renewing(self) -> asyncio.Task[None]:
        assert self.leading, "acquire() first"
        self._task = asyncio.create_task(self._renew_loop(), name="lease renewal")
        return self._task

    async def _renew_loop(self) -> None:
        s = self.settings
        ok = True
        while True:
            deadline = self._renewed_at + s.renew_deadline
            pause = s.renew_interval if ok else s.retry_interval
            await asyncio.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._lose(f"no successful renewal of lease {s.namespace}/{s.lease_name} for "
                                  f"{s.renew_deadline:g}s (lease duration {s.lease_duration:g}s)")
            try:
                ok = await asyncio.wait_for(self.try_acquire_or_renew(), timeout=remaining)
            except TimeoutError:
                ok = False
                log.warning("leader election: renewal of lease %s/%s timed out", s.namespace, s.lease_name)
            except (KubeError, aiohttp.ClientError, OSError) as err:
                ok = False
                log.warning("leader election: renewal of lease %s/%s failed: %s", s.namespace, s.lease_name, err)
            if not ok and self.holder and self.holder != s.identity:
                return self._lose(f"lease {s.namespace}/{s.lease_name} is now held by {self.holder}")

    def _lose(self, reason: str) -> None:
        self.leading = False
        self.on_lost(reason)

    async def release(self) -> None:
        """Stop renewing and clear the holder, so a standby need not wait for the Lease to expire."""
        s = self.settings
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not self.leading or self._record is None:
            return
        self.leading = False
        body = lease_body(s.lease_name, s.namespace, "", duration=1, now=dt.datetime.now(dt.UTC),
                          previous=self._record)
        try:
            await self.kube.request("PUT", self._path, body=body)
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning("could not release lease %s/%s (the standby waits for it to expire): %s",
                        s.namespace, s.lease_name, err)
        else:
            log.info("released lease %s/%s", s.namespace, s.lease_name)


@contextlib.asynccontextmanager
async def standby_liveness(endpoint: str | None) -> AsyncIterator[None]:
    """Answer the liveness endpoint while standing by.

    kopf serves its liveness endpoint only after every startup handler has finished, and a standby
    waits inside one: without this, the kubelet would restart a healthy standby over and over.
    The server is closed before kopf opens its own on the same address.
    """
    if not endpoint:
        yield
        return
    url = urllib.parse.urlsplit(endpoint)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"leader": False, "standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/", alive)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host=url.hostname or "0.0.0.0", port=url.port or 80, reuse_address=True).start()
        yield
    finally:
        await runner.cleanup()
