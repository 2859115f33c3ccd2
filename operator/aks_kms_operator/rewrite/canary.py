"""Key-switch evidence with a canary Secret (design.md 2.4, invariant 3).

AKS runs several API server replicas behind a load balancer and rolls them one at a time; each
reloads its KMS configuration on its own schedule (the KMS status poll is 60 s per replica), and
AKS may report the ARM operation Succeeded before the last one has reloaded. So neither "ARM says
Succeeded" nor "one replica writes with the new key" means "the API server writes with the new key".

Before the ARM write, ``ensure_canary`` makes sure a canary Secret exists and is stored under the
key in use *now*, and returns its resourceVersion and uid (the baseline). After AKS's operation has
finished, ``wait_for_key_switch`` no-op patches the canary, each probe on a fresh TCP connection
(``fresh_client``) so that the load balancer spreads the probes over the replicas, until

1. the canary's resourceVersion changed from the baseline (a replica found it stale: it writes
   with a new key), and then
2. every probe for a whole ``window`` (default longer than the replicas' reload period) agreed: no
   further resourceVersion change (a replica that rewrites it again is still on another key) and
   no error (a 5xx or a dropped connection is what a replica that cannot decrypt the canary under
   the new key answers). Either restarts the window.

That is evidence, not proof: a replica the probes never reached is still possible. The proof is
the verification pass after the rewrite (invariant 10). A canary with another uid than the baseline
(deleted and re-created) proves nothing about the switch; the caller re-creates it and asks for a
full window without a change (``require_change=False``).

The canary carries no data, only the label ``aks-kms.dev/canary=true``; all requests ask for
metadata-only answers, like the engine's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..kube import MERGE_PATCH, METADATA_ONLY, KubeClient, KubeError
from .engine import noop_patch

CANARY_NAME = "aks-kms-canary"
CANARY_LABEL = "aks-kms.dev/canary"

KEY_SWITCHED = "KeySwitched"
KEY_SWITCH_TIMEOUT = "KeySwitchTimeout"
CANARY_GONE = "CanaryGone"
CANARY_REPLACED = "CanaryReplaced"

KEY_SWITCH_WINDOW = 90.0  # seconds; more than the API server's 60 s KMS status poll per replica


@dataclass(frozen=True)
class Canary:
    """The canary as one answer showed it: which object (uid) and which stored revision (RV)."""

    resource_version: str
    uid: str


@dataclass(frozen=True)
class KeySwitchResult:
    switched: bool
    reason: str  # KeySwitched, KeySwitchTimeout, CanaryGone or CanaryReplaced
    message: str
    resource_version: str  # the canary's RV at the end
    probes: int
    elapsed_seconds: float
    resets: int = 0  # windows restarted by a second RV change or an error
    errors: int = 0  # probes answered with a transient error

    def __bool__(self) -> bool:
        return self.switched


class FreshConnections(KubeClient):
    """The wrapped client, every request of it on a new TCP connection (closed after the answer).

    A kept-alive connection stays with the replica the load balancer picked when it opened; a new
    connection per request is balanced again, so probes and verification writes spread over every
    API server replica. Credentials (and their refresh) are the wrapped client's.
    """

    def __init__(self, client: KubeClient) -> None:
        self.inner = client
        self.credentials = client.credentials

    async def __aenter__(self) -> FreshConnections:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return await self.inner.request(method, path, **{**kwargs, "fresh_connection": True})


def fresh_client(client: KubeClient) -> FreshConnections:
    """``client`` with a new TCP connection for every request (see ``FreshConnections``)."""
    return FreshConnections(client)


def _path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


async def _noop(client: KubeClient, namespace: str, name: str, uid: str) -> dict:
    """No-op write to the canary, guarded by its uid only (we want the answer whatever its RV)."""
    return await client.request("PATCH", _path(namespace, name), body=noop_patch(uid, None),
                                content_type=MERGE_PATCH, accept=METADATA_ONLY)


def _canary(answer: dict) -> Canary:
    meta = answer["metadata"]
    return Canary(str(meta["resourceVersion"]), str(meta.get("uid") or ""))


async def ensure_canary(client: KubeClient, namespace: str, *, name: str = CANARY_NAME) -> Canary:
    """Create the canary if missing, else rewrite it if stale; return its RV and uid.

    Call it *before* the ARM write. An existing canary may still be stored under an even older key;
    the no-op write here moves it to the current key so the post-switch probes cannot mistake that
    for the switch.
    """
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "labels": {CANARY_LABEL: "true"},
                         "annotations": {"aks-kms.dev/purpose": "detects when the API server writes with a new key"}}}
    try:
        created = await client.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=body,
                                       accept=METADATA_ONLY)
        return _canary(created)
    except KubeError as err:
        if err.status != 409:
            raise
    current = await client.request("GET", _path(namespace, name), accept=METADATA_ONLY)
    return _canary(await _noop(client, namespace, name, current["metadata"]["uid"]))


async def wait_for_key_switch(
    client: KubeClient,
    namespace: str,
    baseline: Canary,
    *,
    name: str = CANARY_NAME,
    require_change: bool = True,
    window: float = KEY_SWITCH_WINDOW,
    interval: float = 10.0,
    min_probes: int = 3,
    timeout: float = 900.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> KeySwitchResult:
    """Probe the canary until it changed from ``baseline`` and then every probe agreed for ``window``.

    ``client`` should be a ``fresh_client`` so that probes reach every replica. ``require_change``
    False (a re-created canary, or adoption without a write of ours): no before/after exists, so
    only the window counts, from the first good probe. The window needs at least ``min_probes``
    agreeing probes. A 404 ends the wait with ``CanaryGone``, a canary with another uid with
    ``CanaryReplaced``: the caller re-creates it and starts over.
    """
    t0 = clock()
    deadline = t0 + timeout
    probes = errors = resets = 0
    rv = baseline.resource_version
    changed = not require_change
    changed_at_probe = 0
    agreeing_since: float | None = None  # start of the current window of agreeing probes
    agreeing = 0
    uid = baseline.uid
    last_error = ""
    while True:
        now = clock()
        try:
            if not uid:  # a baseline recorded before uids were: take the canary as it is now
                uid = (await client.request("GET", _path(namespace, name), accept=METADATA_ONLY))["metadata"]["uid"]
            answer = await _noop(client, namespace, name, uid)
            probes += 1
            now = clock()
            new_rv = str(answer["metadata"]["resourceVersion"])
            if new_rv != rv:
                # rewritten: the replica that answered writes with another key than the last writer
                if changed:
                    resets += 1
                changed, rv = True, new_rv
                changed_at_probe = changed_at_probe or probes
                agreeing_since, agreeing = now, 1
            elif changed:
                if agreeing_since is None:
                    agreeing_since, agreeing = now, 0
                agreeing += 1
            if agreeing_since is not None and now - agreeing_since >= window and agreeing >= min_probes:
                how = (f"rewritten at probe {changed_at_probe}" if require_change
                       else "re-created or adopted (no before/after to compare)")
                return KeySwitchResult(
                    True, "KeySwitched",
                    f"canary {namespace}/{name} was {how}, then {agreeing} probes over fresh connections agreed "
                    f"for {now - agreeing_since:.0f}s (window {window:g}s, {resets} restart(s), {errors} error(s))",
                    rv, probes, now - t0, resets, errors)
        except KubeError as err:
            if err.status == 404:
                return KeySwitchResult(False, CANARY_GONE,
                                       f"canary Secret {namespace}/{name} was deleted while waiting for the key switch",
                                       rv, probes, clock() - t0, resets, errors)
            if err.status == 409 or (err.status == 422 and "uid" in err.message):
                # Deleted and re-created under the same name: the uid in the patch no longer matches
                # (the API server answers 422 "metadata.uid: field is immutable").
                return KeySwitchResult(False, CANARY_REPLACED,
                                       f"canary Secret {namespace}/{name} was re-created (another uid) while "
                                       "waiting for the key switch: its resourceVersion proves nothing",
                                       rv, probes, clock() - t0, resets, errors)
            if err.status != 429 and err.status < 500:
                raise
            if err.status != 429:  # throttling says nothing about keys; a 5xx may be a replica that cannot decrypt
                errors, last_error = errors + 1, f"{err.status} {err.reason}"
                if agreeing_since is not None:
                    resets += 1
                agreeing_since, agreeing = None, 0
        except (aiohttp.ClientError, TimeoutError) as err:
            errors, last_error = errors + 1, type(err).__name__
            if agreeing_since is not None:
                resets += 1
            agreeing_since, agreeing = None, 0
        now = clock()
        if now >= deadline:
            if not changed:
                seen = "its resourceVersion never changed, so no API server replica writes with a new key yet"
            else:
                seen = (f"it changed at probe {changed_at_probe}, but no {window:g}s window passed without a "
                        f"further change or error ({resets} restart(s), {errors} error(s)"
                        f"{', last ' + last_error if last_error else ''})")
            return KeySwitchResult(
                False, KEY_SWITCH_TIMEOUT,
                f"no agreed key switch within {timeout:g}s: canary {namespace}/{name} probed {probes} times; {seen}",
                rv, probes, now - t0, resets, errors)
        await sleep(min(interval, max(0.0, deadline - now)))
