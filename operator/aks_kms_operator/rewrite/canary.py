"""Key-switch detection with a canary Secret (design.md 2.4, invariant 3).

Every API server replica learns the new KMS key on its own schedule, so "ARM says Succeeded" does not
mean "the API server writes with the new key". Before the ARM write, ``ensure_canary`` makes sure a
canary Secret exists and is stored under the key in use *now*, and returns its resourceVersion.
After the write, ``wait_for_key_switch`` no-op patches the canary until its resourceVersion changes
(a replica found it stale: it now writes with a new key), then keeps probing until the RV holds still
over ``stable_probes`` consecutive probes spaced by ``interval`` (the replicas the probes reach
agree). Only then may the rewrite start. A timeout returns ``KeySwitchTimeout`` and a message.

The canary carries no data, only the label ``aks-kms.dev/canary=true``; all requests ask for
metadata-only answers, like the engine's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from ..kube import MERGE_PATCH, METADATA_ONLY, KubeClient, KubeError
from .engine import noop_patch

CANARY_NAME = "aks-kms-canary"
CANARY_LABEL = "aks-kms.dev/canary"

KEY_SWITCHED = "KeySwitched"
KEY_SWITCH_TIMEOUT = "KeySwitchTimeout"
CANARY_GONE = "CanaryGone"


@dataclass(frozen=True)
class KeySwitchResult:
    switched: bool
    reason: str  # KeySwitched, KeySwitchTimeout or CanaryGone
    message: str
    resource_version: str  # the canary's RV at the end
    probes: int
    elapsed_seconds: float

    def __bool__(self) -> bool:
        return self.switched


def _path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


async def _noop(client: KubeClient, namespace: str, name: str, uid: str) -> dict:
    """No-op write to the canary, guarded by its uid only (we want the answer whatever its RV)."""
    return await client.request("PATCH", _path(namespace, name), body=noop_patch(uid, None),
                                content_type=MERGE_PATCH, accept=METADATA_ONLY)


async def ensure_canary(client: KubeClient, namespace: str, *, name: str = CANARY_NAME) -> str:
    """Create the canary if missing, else rewrite it if stale; return its resourceVersion.

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
        return created["metadata"]["resourceVersion"]
    except KubeError as err:
        if err.status != 409:
            raise
    current = await client.request("GET", _path(namespace, name), accept=METADATA_ONLY)
    answer = await _noop(client, namespace, name, current["metadata"]["uid"])
    return answer["metadata"]["resourceVersion"]


async def wait_for_key_switch(
    client: KubeClient,
    namespace: str,
    baseline_rv: str,
    *,
    name: str = CANARY_NAME,
    stable_probes: int = 3,
    interval: float = 2.0,
    timeout: float = 600.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> KeySwitchResult:
    """Probe the canary until it was rewritten and then held still for ``stable_probes`` probes.

    ``baseline_rv`` is what ``ensure_canary`` returned before the ARM write. Transient errors
    (429, 5xx, timeouts) count as probes that saw nothing; a missing canary ends the wait
    (``CanaryGone``): its replacement would prove nothing.
    """
    t0 = clock()
    deadline = t0 + timeout
    probes = 0
    rv = baseline_rv
    switched_at_probe = 0  # 0: no change seen yet
    stable = 0
    uid = ""
    while True:
        try:
            if not uid:
                uid = (await client.request("GET", _path(namespace, name), accept=METADATA_ONLY))["metadata"]["uid"]
            answer = await _noop(client, namespace, name, uid)
            probes += 1
            new_rv = answer["metadata"]["resourceVersion"]
            if new_rv != rv:
                # rewritten: a replica writes with another key now (or another replica just caught up)
                rv, stable = new_rv, 0
                switched_at_probe = probes
            elif switched_at_probe:
                stable += 1
            if switched_at_probe and stable >= stable_probes:
                return KeySwitchResult(
                    True, KEY_SWITCHED,
                    f"canary {namespace}/{name} was rewritten at probe {switched_at_probe} and then held still "
                    f"for {stable} probes {interval:g}s apart: the API server writes with the new key",
                    rv, probes, clock() - t0)
        except KubeError as err:
            if err.status == 404:
                return KeySwitchResult(False, CANARY_GONE,
                                       f"canary Secret {namespace}/{name} was deleted while waiting for the key "
                                       "switch; create it again before the next key change", rv, probes,
                                       clock() - t0)
            if err.status == 409 or err.status == 422:
                uid = ""  # re-created under the same name: re-read its uid
            elif err.status != 429 and err.status < 500:
                raise
        except (aiohttp.ClientError, TimeoutError):
            pass
        now = clock()
        if now >= deadline:
            seen = (f"it was rewritten at probe {switched_at_probe} but did not hold still for {stable_probes} "
                    f"probes (only {stable})" if switched_at_probe
                    else "its resourceVersion never changed, so no API server replica writes with a new key yet")
            return KeySwitchResult(
                False, KEY_SWITCH_TIMEOUT,
                f"no stable key switch within {timeout:g}s: canary {namespace}/{name} probed {probes} times; {seen}",
                rv, probes, now - t0)
        await sleep(min(interval, max(0.0, deadline - now)))
