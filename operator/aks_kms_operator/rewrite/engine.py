"""The re-encryption engine: one no-op write per Secret, metadata only, namespace by namespace.

How it works (design.md 2.4): the API server rewrites an unchanged object only when its stored copy
is stale (encrypted under a key that is not the write key), and then the resourceVersion changes.
So a no-op write per Secret re-encrypts exactly the stale ones and the answer's resourceVersion says
which: changed = re-encrypted, unchanged = already current.

The write
---------
``PATCH /api/v1/namespaces/<ns>/secrets/<name>`` with ``Content-Type: application/merge-patch+json``,
body ``{"metadata": {"uid": <listed uid>, "resourceVersion": <listed rv>}}`` and
``Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1``.

Chosen after trying three patch types against the real kube-apiserver v1.35.4 (etcd 3.6, two aescbc
keys, write key switched by restarting the API server; the check is repeated by
``tests/integration/test_rewrite.py``):

* JSON merge patch, server-side apply (``apply-patch+yaml`` with only apiVersion, kind, name, uid,
  resourceVersion, as the in-tree storage-version migrator sends) and a JSON patch ``test`` op all
  re-encrypted a stale Secret (etcd prefix ``k8s:enc:aescbc:v1:key1:`` -> ``key2:``, new RV), and
  all left the full object, including data, type, labels, annotations, ownerReferences and
  ``managedFields`` (managers, operations, timestamps), identical apart from the RV; a second
  merge patch left the RV alone.
* Deleted Secret: merge patch -> **404** (a merge patch can never create); SSA -> 409 only because
  of the uid precondition (an apply patch *can* create an object, the uid is the only guard).
* Secret changed since the list: 409 (the RV is a precondition). Deleted and re-created under the
  same name: 409 (new RV; the uid differs too).
* Merge patch needs no field manager, so no managedFields entry can ever appear for the engine.

Merge patch is therefore the safer choice: the same no-op effect as SSA, and re-creating a deleted
Secret is impossible by construction, not by precondition.

Outcomes: 2xx -> re-encrypted (RV changed) or already current; 404/409 -> skipped (deleted, or
someone else wrote it after the key switch, so it is current); 429 -> shared back-off honouring
Retry-After, then retry (bounded); 5xx, timeouts, dropped connections -> retries with capped,
jittered exponential back-off for up to ``RetryPolicy.retry_for`` seconds (default 60: longer than
an API server restart, which AKS does on every KMS change); anything else (403, 422, a webhook's
denial) -> failed, recorded with ``namespace/name``. Every listed Secret ends in exactly one
outcome; nothing is retried forever.

Memory: one list page (metadata only) plus a bounded queue, whatever the number of Secrets.
Secret data never reaches this process: lists ask for ``PartialObjectMetadataList`` and writes for
``PartialObjectMetadata``, and nothing here reads or logs anything but metadata.

Pipeline: ``list_concurrency`` listers take namespaces in sorted order and feed one bounded write
queue that ``concurrency`` workers drain, so the lists of the next namespaces overlap the writes of
the current ones and the queue does not run dry at every namespace boundary (with thousands of small
namespaces the old one-namespace-at-a-time loop spent most of its time waiting for lists). At most
``max_open_namespaces`` namespaces are open (taken but not yet part of the finished prefix), which
bounds both memory and the work redone after a crash.

Pause: ``paused`` (the operator's GET of its policy) is asked at most once per
``pause_check_interval`` seconds, whoever is listing; ``request_pause()`` (for a watch event) takes
effect at the next namespace or page without any request.

Resume: namespaces are opened in sorted order; the checkpoint's ``last_namespace`` is the highest
namespace such that it and every namespace before it are finished: listed to the end and every
write answered (several namespaces can be in flight at once, and they can finish in any order).
A restarted engine with the same target key skips those; a different target key
starts over. Periodic saves carry the live counters (for ``kubectl get``); the save at a pause or at
the end carries exact counters for the finished namespaces only. After a crash, the Secrets of
namespaces that were in flight are written again (they come back as already current) and may be
counted twice in ``seen`` / ``alreadyCurrent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..kube import MERGE_PATCH, METADATA_LIST, METADATA_ONLY, KubeClient, KubeError
from .checkpoint import CheckpointStore, RewriteCheckpoint
from .counters import Outcome, RewriteCounters, classify_status, classify_write
from .ratelimit import BackoffGate, RetryPolicy, TokenBucket

log = logging.getLogger(__name__)

Predicate = Callable[[], bool | Awaitable[bool]]


@dataclass(frozen=True)
class SecretRef:
    """What the list tells us about one Secret: identity and the RV to use as a precondition."""

    namespace: str
    name: str
    uid: str
    resource_version: str

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def noop_patch(uid: str, resource_version: str | None) -> dict[str, Any]:
    """The no-op merge patch: identity and preconditions only."""
    meta: dict[str, Any] = {"uid": uid}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"metadata": meta}


@dataclass(frozen=True)
class RewriteOptions:
    concurrency: int = 8
    page_size: int = 500
    max_writes_per_second: float = 0.0  # 0: no cap (429-aware only)
    checkpoint_interval: float = 5.0  # seconds between checkpoint saves, at most
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue_size: int = 0  # 0: 4 x concurrency
    max_failures_recorded: int = 20
    list_concurrency: int = 0  # namespaces listed at once; 0: concurrency // 4, between 2 and 8
    pause_check_interval: float = 1.0  # seconds between two calls of the ``paused`` predicate, at least
    max_open_namespaces: int = 256  # namespaces taken but not yet in the finished prefix, at most

    @property
    def listers(self) -> int:
        """How many namespaces are listed at once."""
        return self.list_concurrency or min(8, max(2, self.concurrency // 4))

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> RewriteOptions:
        """From ``api.v1alpha1.RewriteSpec`` (or any object with the same attributes)."""
        return cls(concurrency=spec.concurrency, page_size=spec.page_size,
                   max_writes_per_second=spec.max_writes_per_second, **overrides)


class RunState(enum.StrEnum):
    COMPLETED = "Completed"
    PAUSED = "Paused"


@dataclass(frozen=True)
class RewriteResult:
    state: RunState
    target_key_id: str
    counters: RewriteCounters  # the whole run, including what was done before a resume
    namespaces_total: int
    namespaces_done: int
    last_namespace: str
    started_at: str
    completed_at: str
    elapsed_seconds: float  # this invocation
    writes_per_second: float  # this invocation: answered writes / elapsed
    throttled: int  # 429s seen by this invocation
    resumed: bool  # continued from a checkpoint of the same target key

    @property
    def completed(self) -> bool:
        return self.state is RunState.COMPLETED

    @property
    def paused(self) -> bool:
        return self.state is RunState.PAUSED


def _utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_PAUSED: Any = object()  # the cluster-wide pager's "stopped at a pause" marker


def namespace_order(ns: str) -> str:
    """The engine's namespace order: the API server's storage key order (``/registry/secrets/<ns>/``),
    which is the order a cluster-wide list returns Secrets in. It differs from plain name order only
    when one name is another's prefix followed by ``-`` (``a-b`` comes before ``a``)."""
    return ns + "/"


def finished_before(ns: str, watermark: str) -> bool:
    """Whether a checkpoint with ``last_namespace == watermark`` proves ``ns`` finished.

    Both orders must agree: checkpoints written before the key order was adopted used name order,
    and one namespace finished in both orders is finished in either. Where they disagree (``a-b``
    against ``a``) the namespace is written again: never skipped."""
    return bool(watermark) and ns <= watermark and namespace_order(ns) <= namespace_order(watermark)


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    value = fn(*args)
    return await value if inspect.isawaitable(value) else value


class _NamespaceTracker:
    """Which namespaces are in flight, and the watermark: the last namespace of the finished prefix.

    Pure bookkeeping (no I/O, no awaits): namespaces must be ``open``ed in sorted order; each one
    finishes when it was ``listed`` to the end and every ``add``ed write had its ``finish_one``, in
    any order across namespaces. The watermark moves only over a contiguous run of finished
    namespaces from the front, so everything at or before it is done, whatever is still in flight.
    """

    def __init__(self, watermark: str, committed: RewriteCounters, done: int) -> None:
        self.watermark = watermark
        self.committed = committed  # exact counters of finished namespaces
        self.done = done
        self._open: OrderedDict[str, list[Any]] = OrderedDict()  # ns -> [pending, listed, counters]
        self.finished = asyncio.Event()  # set whenever the watermark moves (the checkpoint loop clears it)
        self.room = asyncio.Event()  # set whenever the watermark moves (listers waiting for room clear it)
        self.last_opened = ""

    def __len__(self) -> int:
        """Namespaces opened and not yet in the finished prefix."""
        return len(self._open)

    def open(self, ns: str, max_failures: int) -> RewriteCounters:
        if self.last_opened and namespace_order(ns) <= namespace_order(self.last_opened):
            raise ValueError(f"namespace {ns!r} opened after {self.last_opened!r}: namespaces must be opened "
                             "in sorted order (``namespace_order``), once each")
        self.last_opened = ns
        counters = RewriteCounters(max_failures=max_failures)
        self._open[ns] = [0, False, counters]
        return counters

    def add(self, ns: str) -> None:
        self._open[ns][0] += 1

    def finish_one(self, ns: str) -> None:
        self._open[ns][0] -= 1
        self._advance()

    def listed(self, ns: str) -> None:
        self._open[ns][1] = True
        self._advance()

    def _advance(self) -> None:
        while self._open:
            ns, (pending, listed, counters) = next(iter(self._open.items()))
            if pending or not listed:
                return
            del self._open[ns]
            self.watermark = ns
            self.committed.add(counters)
            self.done += 1
            self.finished.set()
            self.room.set()


class RewriteEngine:
    """Re-encrypt every Secret (or those of ``namespaces``) under the API server's current write key.

    ``target_key_id`` names the key the run writes under; it only keys the checkpoint (same id:
    resume; other id: start over). ``paused`` is checked before every list page; when it is true the
    engine finishes the writes already queued, saves the checkpoint and returns ``RunState.PAUSED``.
    ``before_write(ref)`` is a test seam called between the list and the write of each Secret.
    """

    def __init__(
        self,
        client: KubeClient,
        target_key_id: str,
        *,
        options: RewriteOptions | None = None,
        checkpoint: CheckpointStore | None = None,
        paused: Predicate | None = None,
        namespaces: Collection[str] | None = None,
        before_write: Callable[[SecretRef], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        label: str = "rewrite",
    ) -> None:
        self.client = client
        self.target_key_id = target_key_id
        self.options = options or RewriteOptions()
        self.store = checkpoint
        self.paused = paused
        self.namespace_filter = set(namespaces) if namespaces is not None else None
        self.before_write = before_write
        self.label = label  # names the run in logs: "rewrite", or "verification pass 2"
        self._clock = clock
        self._sleep = sleep
        self.gate = BackoffGate(clock=clock, sleep=sleep)
        self.bucket = TokenBucket(self.options.max_writes_per_second,
                                  max(1.0, self.options.max_writes_per_second), clock=clock, sleep=sleep)
        self._save_lock = asyncio.Lock()
        self._list_error_since = 0.0
        self._pause_lock = asyncio.Lock()
        self._pause_requested = False
        self._pause_checked_at: float | None = None  # clock() of the last call of ``paused``
        self._interrupted = False  # a pause stopped the listing before its end

    # ------------------------------------------------------------------ run

    async def run(self) -> RewriteResult:
        t0 = self._clock()
        opts = self.options
        previous = await self.store.load() if self.store else None
        resumed = previous is not None and previous.target_key_id == self.target_key_id
        if resumed and previous is not None and previous.completed:
            log.info("%s for key %s already completed at %s", self.label, self.target_key_id, previous.completed_at)
            return self._result(RunState.COMPLETED, previous, t0, 0, resumed=True)
        state = previous if resumed and previous is not None else RewriteCheckpoint(
            target_key_id=self.target_key_id, started_at=_utcnow())
        state.counters.max_failures = opts.max_failures_recorded

        all_namespaces = await self._namespaces()
        todo = [ns for ns in all_namespaces if not finished_before(ns, state.last_namespace)]
        self._all_namespaces = all_namespaces
        state.namespaces_total = len(all_namespaces)
        state.namespaces_done = len(all_namespaces) - len(todo)
        if (not resumed or not state.secrets_total) and self.namespace_filter is not None:
            # A run opened by the planner has no total yet. Every namespace: the first page of the
            # cluster-wide list brings it (``_fetch_pages``), with no request of its own.
            state.secrets_total = await self._count_secrets(todo)
        self.state = state
        self.live = state.counters.copy()  # everything seen so far, for progress
        tracker = _NamespaceTracker(state.last_namespace, state.counters, state.namespaces_done)
        self.tracker = tracker
        self._run_done = 0
        self._t0 = t0
        log.info("%s for key %s: %d namespaces to do of %d (resumed: %s)", self.label, self.target_key_id, len(todo),
                 len(all_namespaces), resumed)

        queue: asyncio.Queue[tuple[SecretRef, RewriteCounters] | None] = asyncio.Queue(
            opts.queue_size or 4 * opts.concurrency)
        workers = [asyncio.create_task(self._worker(queue), name=f"rewrite-worker-{i}")
                   for i in range(opts.concurrency)]
        saver = asyncio.create_task(self._checkpoint_loop(), name="rewrite-checkpoint")
        if self.namespace_filter is None:
            # Every namespace: one cluster-wide list, in storage order, pages fetched ahead of the writes.
            listers = [asyncio.create_task(self._list_cluster(queue, tracker), name="rewrite-lister")]
        else:
            names = iter(todo)
            listers = [asyncio.create_task(self._lister(names, queue, tracker), name=f"rewrite-lister-{i}")
                       for i in range(max(1, opts.listers))]
        try:
            await asyncio.gather(*listers)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        except BaseException:
            for task in (*listers, *workers):
                task.cancel()
            saver.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*listers, *workers, saver, return_exceptions=True)
            raise
        paused = self._interrupted
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver

        state.last_namespace = tracker.watermark
        state.namespaces_done = len(all_namespaces) if not paused else self._namespaces_done(tracker.watermark)
        state.counters = tracker.committed
        state.current_namespace = ""
        elapsed = max(self._clock() - t0, 1e-9)
        state.writes_per_second = self._run_done / elapsed
        run_state = RunState.PAUSED if paused else RunState.COMPLETED
        if not paused:
            state.completed_at = _utcnow()
        await self._save(state, force=True)
        result = self._result(run_state, state, t0, self._run_done, resumed=resumed)
        log.info("%s %s: %s", self.label, run_state.value, result.counters)
        return result

    def _result(self, run_state: RunState, state: RewriteCheckpoint, t0: float, done: int, *,
                resumed: bool) -> RewriteResult:
        elapsed = max(self._clock() - t0, 1e-9)
        return RewriteResult(
            state=run_state, target_key_id=state.target_key_id, counters=state.counters.copy(),
            namespaces_total=state.namespaces_total, namespaces_done=state.namespaces_done,
            last_namespace=state.last_namespace, started_at=state.started_at, completed_at=state.completed_at,
            elapsed_seconds=elapsed, writes_per_second=done / elapsed, throttled=self.gate.throttled_total,
            resumed=resumed)

    def request_pause(self) -> None:
        """Pause at the next namespace or list page, without asking ``paused`` (for a watch event).

        The writes already queued finish and the checkpoint is saved, as for a pause the predicate
        reports."""
        self._pause_requested = True

    async def _is_paused(self) -> bool:
        """Whether to stop opening namespaces and pages: ``request_pause()`` was called, or the
        ``paused`` predicate said so. The predicate (a GET of the policy, in the operator) is asked at
        most once per ``pause_check_interval`` seconds, and by one lister at a time: listing a
        namespace of three Secrets must not cost an extra request."""
        if self._pause_requested:
            return True
        if self.paused is None:
            return False
        async with self._pause_lock:
            if self._pause_requested:
                return True
            now = self._clock()
            if self._pause_checked_at is not None and now - self._pause_checked_at < self.options.pause_check_interval:
                return False
            self._pause_checked_at = now
            if await _call(self.paused):
                self._pause_requested = True
        return self._pause_requested


    # ------------------------------------------------------------------ listing

    async def _list_retry(self, err: Exception, attempt: int) -> bool:
        if attempt == 1:
            self._list_error_since = self._clock()
        if isinstance(err, KubeError):
            if err.status == 429:
                self.gate.throttled(err.retry_after)
                if attempt >= self.options.retry.max_throttled_attempts:
                    return False
                await self.gate.wait()
                return True
            if err.status < 500:
                return False
        if self.options.retry.give_up(attempt, self._clock() - self._list_error_since):
            return False
        await self._sleep(self.options.retry.delay(attempt, getattr(err, "retry_after", None)))
        return True

    async def _namespaces(self) -> list[str]:
        names: list[str] = []
        async for page in self.client.list_pages("/api/v1/namespaces", limit=500, on_error=self._list_retry):
            names += [item["metadata"]["name"] for item in page.get("items") or []]
        if self.namespace_filter is not None:
            names = [n for n in names if n in self.namespace_filter]
        return sorted(set(names), key=namespace_order)

    async def _count_secrets(self, namespaces: list[str]) -> int:
        """Secrets of the chosen namespaces at the start, for ``progress`` only (a run over every
        namespace takes its total from its first list page instead: one request fewer, and under API
        Priority and Fairness a lone count could be refused with 429 while the pages, which retry,
        were not)."""
        try:
            return sum([await count_secrets(self.client, ns) for ns in namespaces])
        except (KubeError, aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not count Secrets (progress will show no total): %s", err)
            return 0

    async def _list_cluster(self, queue: asyncio.Queue[Any], tracker: _NamespaceTracker) -> None:
        """Queue every Secret of the cluster from one paginated cluster-wide list.

        The API server returns Secrets in storage key order, i.e. by ``namespace_order`` then name, so
        a namespace is listed to the end when the next one starts (or the list ends). One request per
        ``page_size`` Secrets instead of one per namespace: with thousands of namespaces of a few
        Secrets each, per-namespace lists cost as much as the writes. The next page is fetched while
        the current one is written (one page ahead, so memory stays two pages). Secrets of namespaces
        the checkpoint proves finished are skipped; a namespace created since the start is written
        too (the checkpoint does not prove it finished)."""
        pages: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue(maxsize=1)
        fetcher = asyncio.create_task(self._fetch_pages(pages), name="rewrite-pager")
        current: str | None = None
        counters: RewriteCounters | None = None
        try:
            while True:
                page = await pages.get()
                if page is None or page is _PAUSED:
                    break
                if isinstance(page, BaseException):
                    raise page
                for item in page.get("items") or []:
                    meta = item.get("metadata") or {}
                    ns = meta.get("namespace") or ""
                    if ns != current:
                        if current is not None:
                            tracker.listed(current)
                        current = ns
                        counters = None
                        if not finished_before(ns, self.state.last_namespace):
                            while len(tracker) >= max(1, self.options.max_open_namespaces):
                                tracker.room.clear()
                                await tracker.room.wait()
                            counters = tracker.open(ns, self.options.max_failures_recorded)
                            self.state.current_namespace = ns
                        else:
                            current = None  # finished in an earlier run: nothing to list as done
                    if counters is None:
                        continue
                    ref = SecretRef(ns, meta["name"], meta.get("uid", ""), meta.get("resourceVersion", ""))
                    tracker.add(ns)
                    counters.seen += 1
                    self.live.seen += 1
                    await queue.put((ref, counters))
            if page is _PAUSED:
                self._interrupted = True  # the namespace in progress stays open: not listed to the end
            elif current is not None:
                tracker.listed(current)
        except (KubeError, aiohttp.ClientError, TimeoutError) as err:
            # The list cannot go on: one failure (the run ends with it, and a new run starts over), and
            # the namespace in progress stays open, so the checkpoint never passes it.
            log.error("listing Secrets failed: %s", err)
            self.live.record(Outcome.FAILED, f"{current or '*'}/*", f"list: {err}")
            tracker.committed.record(Outcome.FAILED, f"{current or '*'}/*", f"list: {err}")
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher

    async def _fetch_pages(self, pages: asyncio.Queue[Any]) -> None:
        """Feed ``pages`` with cluster-wide list pages, then None at the end; ``_PAUSED`` at a pause
        (checked before every page), the error if the list fails."""
        if await self._is_paused():
            await pages.put(_PAUSED)
            return
        gen = self.client.list_pages("/api/v1/secrets", limit=self.options.page_size, on_error=self._list_retry)
        try:
            async for page in gen:
                if not self.state.secrets_total:
                    self.state.secrets_total = page_total(page)
                await pages.put(page)
                if (page.get("metadata") or {}).get("continue") and await self._is_paused():
                    await pages.put(_PAUSED)
                    return
            await pages.put(None)
        except (KubeError, aiohttp.ClientError, TimeoutError) as err:
            await pages.put(err)
        finally:
            await gen.aclose()

    async def _lister(self, names: Iterator[str], queue: asyncio.Queue[Any], tracker: _NamespaceTracker) -> None:
        """Take the next namespace (sorted order, shared with the other listers) and queue its Secrets,
        until there is none left or a pause is seen. Taking and opening a namespace happen with no
        await in between, so namespaces are opened in sorted order whichever lister takes them."""
        while True:
            while len(tracker) >= max(1, self.options.max_open_namespaces):
                tracker.room.clear()
                await tracker.room.wait()
            if await self._is_paused():
                self._interrupted = True
                return
            ns = next(names, None)
            if ns is None:
                return
            if await self._produce_namespace(ns, queue, tracker):
                self._interrupted = True
                return

    async def _produce_namespace(self, ns: str, queue: asyncio.Queue[Any], tracker: _NamespaceTracker) -> bool:
        """Queue every Secret of ``ns``; return True if paused (before a page) on the way."""
        counters = tracker.open(ns, self.options.max_failures_recorded)
        self.state.current_namespace = ns
        paused = False
        pages = self.client.list_pages(f"/api/v1/namespaces/{ns}/secrets", limit=self.options.page_size,
                                       on_error=self._list_retry)
        try:
            first = True
            async for page in pages:
                if not first and await self._is_paused():
                    paused = True
                    break
                first = False
                for item in page.get("items") or []:
                    meta = item.get("metadata") or {}
                    ref = SecretRef(ns, meta["name"], meta.get("uid", ""), meta.get("resourceVersion", ""))
                    tracker.add(ns)
                    counters.seen += 1
                    self.live.seen += 1
                    await queue.put((ref, counters))
        except (KubeError, aiohttp.ClientError, TimeoutError) as err:
            # the namespace cannot be listed: one failure for it, and the run goes on
            log.error("listing Secrets in %s failed: %s", ns, err)
            counters.record(Outcome.FAILED, f"{ns}/*", f"list: {err}")
            self.live.record(Outcome.FAILED, f"{ns}/*", f"list: {err}")
        finally:
            await pages.aclose()
        if not paused:
            tracker.listed(ns)
        return paused

    # ------------------------------------------------------------------ writing

    async def _worker(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            entry = await queue.get()
            if entry is None:
                return
            ref, counters = entry
            try:
                outcome, error = await self.write(ref, counters)
            except asyncio.CancelledError:
                raise  # not finished: the namespace must not count as done
            except Exception as err:  # a bug or a test seam's error: one failure, not a dead worker
                log.exception("rewrite of %s failed unexpectedly", ref)
                outcome, error = Outcome.FAILED, f"{type(err).__name__}: {err}"[:240]
            counters.record(outcome, str(ref), error)
            self.live.record(outcome, str(ref), error)
            self._run_done += 1
            self.tracker.finish_one(ref.namespace)

    async def write(self, ref: SecretRef, counters: RewriteCounters | None = None) -> tuple[Outcome, str]:
        """One no-op write, with the retry policy; returns the outcome and, if failed, why.

        Each retried 5xx or dropped connection is counted in ``counters.retried`` (and the live counters).
        """
        if self.before_write is not None:
            await _call(self.before_write, ref)
        policy = self.options.retry
        attempts = throttled = 0
        first_error: float | None = None
        while True:
            await self.gate.wait()
            await self.bucket.acquire()
            try:
                # A retry after a 5xx or a dropped connection goes over a new connection: behind a load
                # balancer, the replica that could not answer (one that cannot read the key the Secret is
                # under, or one going down) is then not asked again and again.
                answer = await self.client.request(
                    "PATCH", ref.path, body=noop_patch(ref.uid, ref.resource_version),
                    content_type=MERGE_PATCH, accept=METADATA_ONLY, **({"fresh_connection": True} if attempts else {}))
            except KubeError as err:
                final = classify_status(err.status)
                if final is not None:
                    return final, f"{err.status} {err.reason}: {err.message}"[:240]
                if err.status == 429:
                    throttled += 1
                    self.gate.throttled(err.retry_after)
                    if throttled >= policy.max_throttled_attempts:
                        return Outcome.FAILED, f"429 TooManyRequests {throttled} times; gave up"
                    continue
                attempts += 1
                self._retried(counters)
                first_error = self._clock() if first_error is None else first_error
                if policy.give_up(attempts, self._clock() - first_error):
                    return Outcome.FAILED, f"{err.status} {err.reason}: {err.message} (after {attempts} attempts)"[
                        :240]
                await self._sleep(policy.delay(attempts, err.retry_after))
                continue
            except (aiohttp.ClientError, TimeoutError) as err:
                attempts += 1
                self._retried(counters)
                first_error = self._clock() if first_error is None else first_error
                if policy.give_up(attempts, self._clock() - first_error):
                    return Outcome.FAILED, f"{type(err).__name__}: {err} (after {attempts} attempts)"[:240]
                await self._sleep(policy.delay(attempts))
                continue
            self.gate.succeeded()
            answered = (answer.get("metadata") or {}).get("resourceVersion")
            return classify_write(ref.resource_version, answered), ""

    def _retried(self, counters: RewriteCounters | None) -> None:
        if counters is not None:
            counters.retried += 1
        live = getattr(self, "live", None)
        if live is not None:
            live.retried += 1

    # ------------------------------------------------------------------ checkpoint

    def _namespaces_done(self, watermark: str) -> int:
        """Namespaces of the run the watermark proves finished (for progress; empty ones included)."""
        return sum(1 for ns in self._all_namespaces if finished_before(ns, watermark))

    def _snapshot(self) -> RewriteCheckpoint:
        """The periodic checkpoint: watermark of finished namespaces, live counters for progress."""
        snap = self.state.copy()
        snap.last_namespace = self.tracker.watermark
        snap.namespaces_done = self._namespaces_done(self.tracker.watermark)
        snap.counters = self.live.copy()
        elapsed = max(self._clock() - self._t0, 1e-9)
        snap.writes_per_second = self._run_done / elapsed
        return snap

    async def _checkpoint_loop(self) -> None:
        if self.store is None:
            return
        interval = max(0.05, self.options.checkpoint_interval)
        last_key: tuple[Any, ...] = ()
        while True:
            # Wake at a namespace end or after ``interval``; never save more often than ``interval``.
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as the event
            # fires (the last namespace ends just as run() cancels this task), and run() then waited for
            # this loop forever.
            waiter = asyncio.ensure_future(self.tracker.finished.wait())
            try:
                await asyncio.wait({waiter}, timeout=interval)
            finally:
                waiter.cancel()
            self.tracker.finished.clear()
            snap = self._snapshot()
            key = (snap.last_namespace, snap.current_namespace, snap.counters.done, snap.counters.seen)
            if key != last_key:
                await self._save(snap)
                last_key = key
            await asyncio.sleep(interval)

    async def _save(self, checkpoint: RewriteCheckpoint, *, force: bool = False) -> None:
        if self.store is None:
            return
        async with self._save_lock:
            try:
                await self.store.save(checkpoint)
            except (KubeError, aiohttp.ClientError, TimeoutError) as err:
                # progress is lost at worst; the rewrite itself is not at risk
                log.warning("saving the rewrite checkpoint failed: %s", err)
                if force:
                    raise


def page_total(page: dict[str, Any]) -> int:
    """How many objects a list holds, from its first page: the page's items plus the
    ``remainingItemCount`` the API server gives with a paginated answer (none when the page is the
    whole list)."""
    return len(page.get("items") or []) + int((page.get("metadata") or {}).get("remainingItemCount") or 0)


async def count_secrets(client: KubeClient, namespace: str | None = None) -> int:
    """How many Secrets exist (cluster-wide or in one namespace), from one metadata-only ``limit=1``
    list: its ``remainingItemCount`` plus the one item. No page of Secrets is fetched."""
    path = f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"
    return page_total(await client.request("GET", path, params={"limit": "1"}, accept=METADATA_LIST))


async def rewrite_secrets(client: KubeClient, target_key_id: str, **kwargs: Any) -> RewriteResult:
    """Shorthand for ``RewriteEngine(client, target_key_id, **kwargs).run()``."""
    return await RewriteEngine(client, target_key_id, **kwargs).run()
