"""The engine's write path on a fake API: outcomes, bounded retries, shared back-off, pause."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aks_kms_operator.kube import KubeError
from aks_kms_operator.rewrite import MemoryStore, RetryPolicy, RewriteEngine, RewriteOptions, RunState


class FakeApi:
    """Namespaces with Secrets; ``script[name]`` is a list of answers for successive writes:
    an int (HTTP error status), an exception instance, "same" (RV unchanged) or "new" (RV changed)."""

    def __init__(self, namespaces: dict[str, list[str]], script: dict[str, list[Any]] | None = None) -> None:
        self.namespaces = namespaces
        self.script = script or {}
        self.writes: list[str] = []
        self.lists: list[str] = []  # paths of Secret lists

    async def list_pages(self, path: str, *, limit: int, on_error: Any = None, **_: Any) -> AsyncIterator[dict]:
        if path == "/api/v1/namespaces":
            yield {"items": [{"metadata": {"name": ns}} for ns in self.namespaces]}
            return
        self.lists.append(path)
        if path == "/api/v1/secrets":  # cluster-wide: storage key order, pages across namespaces
            refs = [(ns, n) for ns in sorted(self.namespaces, key=lambda x: x + "/") for n in self.namespaces[ns]]
        else:
            ns = path.split("/")[4]
            refs = [(ns, n) for n in self.namespaces[ns]]
        for i in range(0, max(len(refs), 1), limit):
            more = i + limit < len(refs)
            yield {"metadata": {"continue": "more" if more else ""},
                   "items": [{"metadata": {"namespace": ns, "name": n, "uid": f"uid-{n}", "resourceVersion": "1"}}
                             for ns, n in refs[i:i + limit]]}

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method == "GET":  # the count for progress
            return {"items": [], "metadata": {}}
        name = path.rsplit("/", 1)[1]
        self.writes.append(name)
        answers = self.script.get(name) or ["new"]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, int):
            raise KubeError(answer, "Reason", "message", retry_after=1.0 if answer == 429 else None)
        if isinstance(answer, BaseException):
            raise answer
        return {"metadata": {"resourceVersion": "1" if answer == "same" else "2"}}


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def run_engine(api: FakeApi, **kwargs: Any) -> Any:
    t = FakeTime()
    options = kwargs.pop("options", RewriteOptions(concurrency=3, page_size=2, retry=RetryPolicy(
        max_attempts=3, max_throttled_attempts=4, retry_for=0)))
    engine = RewriteEngine(api, "key", options=options, clock=t.clock, sleep=t.sleep, **kwargs)  # type: ignore[arg-type]
    return asyncio.run(engine.run()), t


def test_every_outcome_is_counted_once() -> None:
    api = FakeApi({"a": ["new1", "same1", "gone", "raced", "denied"], "b": ["new2"], "c": []},
                  {"same1": ["same"], "gone": [404], "raced": [409], "denied": [403]})
    result, _ = run_engine(api)
    c = result.counters
    assert result.state is RunState.COMPLETED
    assert (c.seen, c.reencrypted, c.already_current, c.skipped, c.failed) == (6, 2, 1, 2, 1)
    assert c.failures == ["a/denied: 403 Reason: message"]
    assert sorted(api.writes) == sorted(["new1", "same1", "gone", "raced", "denied", "new2"])


def test_transient_errors_are_retried_a_bounded_number_of_times() -> None:
    api = FakeApi({"a": ["flaky", "broken", "timeout"]},
                  {"flaky": [503, 500, "new"], "broken": [500], "timeout": [TimeoutError()]})
    result, _ = run_engine(api)
    c = result.counters
    assert (c.reencrypted, c.failed) == (1, 2)
    assert api.writes.count("flaky") == 3
    assert api.writes.count("broken") == 3 and api.writes.count("timeout") == 3  # max_attempts, then give up
    assert any("after 3 attempts" in f for f in c.failures)


def test_transient_errors_are_retried_for_an_api_server_restart() -> None:
    """The budget is time: a Secret whose writes meet a 40 s outage succeeds; one that never gets an
    answer fails only after ``retry_for`` seconds, with back-off capped so the outage's end is noticed."""
    outage = [503] * 12 + ["new"]  # 12 failures: 0.2 + 0.4 + ... capped at 4 s, about 40 s of fake time
    api = FakeApi({"a": ["restart", "down"]}, {"restart": outage, "down": [aiohttp.ServerDisconnectedError()]})
    options = RewriteOptions(concurrency=2, page_size=5, retry=RetryPolicy(base=0.2, cap=4.0, retry_for=60))
    result, t = run_engine(api, options=options)
    c = result.counters
    assert (c.reencrypted, c.failed) == (1, 1), c.failures
    assert api.writes.count("restart") == 13
    assert c.retried == api.writes.count("restart") - 1 + api.writes.count("down")  # every retried try counted
    assert t.now >= 60 and api.writes.count("down") > 5  # more than the old 5-try budget
    assert "ServerDisconnectedError" in c.failures[0]


def test_429_pauses_the_run_and_is_bounded() -> None:
    api = FakeApi({"a": ["slow", "never"]}, {"slow": [429, 429, "new"], "never": [429]})
    result, t = run_engine(api)
    c = result.counters
    assert (c.reencrypted, c.failed) == (1, 1)
    assert api.writes.count("never") == 4  # max_throttled_attempts
    assert result.throttled == 6
    assert t.now >= 2.0  # Retry-After: 1 s honoured (the pauses overlap between workers)


def test_pause_saves_checkpoint_and_resume_skips_finished_namespaces() -> None:
    api = FakeApi({f"ns{i}": [f"s{i}{j}" for j in range(3)] for i in range(4)})
    store = MemoryStore()
    calls = 0

    def paused() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2  # two namespaces listed (one page each), then pause

    # per namespace (a filter), one lister, and the predicate asked every time (interval 0): the old order
    result, _ = run_engine(api, checkpoint=store, paused=paused, namespaces=list(api.namespaces),
                           options=RewriteOptions(concurrency=2, page_size=5, list_concurrency=1,
                                                  pause_check_interval=0))
    assert result.state is RunState.PAUSED and result.last_namespace == "ns1"
    assert store.checkpoint is not None and store.checkpoint.counters.seen == 6
    api.writes.clear()
    result, _ = run_engine(api, checkpoint=store, namespaces=list(api.namespaces),
                           options=RewriteOptions(concurrency=2, page_size=5))
    assert result.completed and result.resumed and result.counters.seen == 12
    assert sorted(api.writes) == [f"s{i}{j}" for i in (2, 3) for j in range(3)]


def test_run_ends_when_the_last_namespace_ends_as_the_checkpoint_loop_is_stopped() -> None:
    """Regression: with a rate cap the last namespace finished just as run() cancelled the checkpoint
    loop; asyncio.wait_for (Python 3.11) swallowed that cancellation and run() never returned."""
    api = FakeApi({f"ns{i}": [f"s{i}{j}" for j in range(5)] for i in range(4)})

    async def main() -> bool:
        engine = RewriteEngine(api, "key", checkpoint=MemoryStore(),  # type: ignore[arg-type]
                               options=RewriteOptions(concurrency=1, max_writes_per_second=10,
                                                      checkpoint_interval=1))
        task = asyncio.ensure_future(engine.run())
        await asyncio.wait({task}, timeout=30)  # does not cancel: a hung run stays hung
        ended = task.done()
        task.cancel()
        return ended and task.result().completed

    assert asyncio.run(main()), "RewriteEngine.run() did not return"


class ListGate(FakeApi):
    """Lists of Secrets wait for ``release``; ``max_lists`` is the most ever in flight at once."""

    def __init__(self, namespaces: dict[str, list[str]]) -> None:
        super().__init__(namespaces)
        self.in_flight = self.max_lists = 0
        self.release = asyncio.Event()

    async def list_pages(self, path: str, *, limit: int, on_error: Any = None, **kw: Any) -> AsyncIterator[dict]:
        if path != "/api/v1/namespaces":
            self.in_flight += 1
            self.max_lists = max(self.max_lists, self.in_flight)
            if self.in_flight >= 2:
                self.release.set()
            try:
                await asyncio.wait_for(self.release.wait(), 1.0)  # a sequential engine waits out the timeout
            except TimeoutError:
                pass
            finally:
                self.in_flight -= 1
        async for page in super().list_pages(path, limit=limit, on_error=on_error, **kw):
            yield page


def test_next_namespaces_are_listed_while_the_current_ones_are_written() -> None:
    """Listing is not one namespace at a time: with 3 lister tasks, lists of several namespaces are in
    flight together (the old engine listed, queued, and only then listed the next namespace)."""
    api = ListGate({f"ns{i:02d}": [f"s{i}-{j}" for j in range(2)] for i in range(12)})
    result, _ = run_engine(api, namespaces=list(api.namespaces),
                           options=RewriteOptions(concurrency=4, list_concurrency=3))
    assert result.completed and result.counters.reencrypted == 24
    assert api.max_lists >= 2


def test_pause_predicate_is_not_asked_once_per_namespace() -> None:
    """The predicate is a GET of the policy in the operator: asked at most once per
    ``pause_check_interval`` (fake time stands still here), not before each of 40 small namespaces."""
    api = FakeApi({f"ns{i:02d}": [f"s{i}"] for i in range(40)})
    calls = 0

    def paused() -> bool:
        nonlocal calls
        calls += 1
        return False

    result, _ = run_engine(api, paused=paused, namespaces=list(api.namespaces),
                           options=RewriteOptions(concurrency=4, pause_check_interval=5))
    assert result.completed and result.counters.reencrypted == 40
    assert calls == 1


@pytest.mark.parametrize("per_namespace", [False, True], ids=["cluster-wide", "per-namespace"])
def test_request_pause_stops_at_a_contiguous_prefix_and_resume_writes_the_rest(per_namespace: bool) -> None:
    """``request_pause()`` (a watch event) pauses with no predicate at all; namespaces finish out of
    order, the checkpoint is the finished prefix only, and a resume writes every Secret after it."""
    names = {f"ns{i:02d}": [f"s{i:02d}-{j}" for j in range(3)] for i in range(20)}
    only = list(names) if per_namespace else None
    api = FakeApi(names)
    store = MemoryStore()
    holder: dict[str, RewriteEngine] = {}

    async def before_write(ref: Any) -> None:
        if ref.namespace == "ns03":
            await asyncio.sleep(0.01)  # ns03 finishes late: later namespaces finish before it
        if ref.namespace == "ns08":
            holder["engine"].request_pause()

    async def first() -> Any:
        engine = RewriteEngine(api, "key", checkpoint=store, before_write=before_write,  # type: ignore[arg-type]
                               namespaces=only, options=RewriteOptions(concurrency=4, list_concurrency=3,
                                                                       page_size=4, checkpoint_interval=0.05))
        holder["engine"] = engine
        return await engine.run()

    paused = asyncio.run(first())
    assert paused.state is RunState.PAUSED
    saved = store.checkpoint
    assert saved is not None and not saved.completed
    finished = [ns for ns in names if ns <= saved.last_namespace]
    assert "ns03" in finished and len(finished) == saved.namespaces_done
    assert saved.counters.seen == 3 * len(finished)  # exact for the prefix
    first_writes = list(api.writes)
    api.writes.clear()
    done, _ = run_engine(api, checkpoint=store, namespaces=only)
    assert done.completed and done.resumed
    rest = [s for ns in names if ns not in finished for s in names[ns]]
    assert sorted(api.writes) == sorted(rest)  # nothing finished is written again, nothing is skipped
    assert set(first_writes) | set(api.writes) == {s for ns in names for s in names[ns]}


def test_every_namespace_is_one_cluster_wide_list_in_storage_order() -> None:
    """Without a namespace filter the engine lists Secrets cluster-wide (pages across namespaces), not
    once per namespace, and walks namespaces in storage key order: ``a-b`` before ``a``."""
    api = FakeApi({"a": ["a1", "a2"], "a-b": ["ab1"], "b": [], "c": [f"c{i}" for i in range(5)]})
    store = MemoryStore()
    result, _ = run_engine(api, checkpoint=store, options=RewriteOptions(concurrency=2, page_size=3))
    assert result.completed and result.counters.reencrypted == 8 and result.namespaces_done == 4
    assert api.lists == ["/api/v1/secrets"]  # one paginated list, no list per namespace
    assert store.checkpoint is not None and store.checkpoint.last_namespace == "c"


def test_resume_never_skips_a_namespace_the_orders_disagree_on() -> None:
    """A checkpoint saved in name order (before the storage order) at ``a``: ``a-b`` sorts after ``a`` by
    name but before it in storage order. It is written again, not skipped; ``a`` and ``0`` are not."""
    from aks_kms_operator.rewrite import RewriteCheckpoint
    from aks_kms_operator.rewrite.engine import finished_before

    assert finished_before("a", "a") and finished_before("0", "a") and not finished_before("a-b", "a")
    assert not finished_before("a", "a-b")  # written again too: a pessimistic reading, never a skip
    assert not finished_before("x", "")
    api = FakeApi({"0": ["z1"], "a": ["a1"], "a-b": ["ab1"], "b": ["b1"]})
    store = MemoryStore(RewriteCheckpoint(target_key_id="key", last_namespace="a"))
    result, _ = run_engine(api, checkpoint=store)
    assert result.completed and result.resumed
    assert sorted(api.writes) == ["ab1", "b1"]


def test_pause_in_a_cluster_wide_list_leaves_the_namespace_in_progress_open() -> None:
    """Paused between two pages of one namespace: that namespace is not in the checkpoint."""
    api = FakeApi({"a": ["a1"], "b": [f"b{i}" for i in range(6)], "c": ["c1"]})
    store = MemoryStore()
    calls = 0

    def paused() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1  # the first page (a1, b0, b1, b2) goes out, then pause

    result, _ = run_engine(api, checkpoint=store, paused=paused,
                           options=RewriteOptions(concurrency=2, page_size=4, pause_check_interval=0))
    assert result.state is RunState.PAUSED and result.last_namespace == "a"
    assert sorted(api.writes) == ["a1", "b0", "b1", "b2"]
    api.writes.clear()
    result, _ = run_engine(api, checkpoint=store)
    assert result.completed and sorted(api.writes) == [f"b{i}" for i in range(6)] + ["c1"]
