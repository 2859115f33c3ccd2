"""Conditions and phase: how the operator tells kubectl, Flux (kstatus) and Argo CD where it stands.

Polarity, as Flux documents its own: ``Ready`` True is good; ``Reconciling`` and ``Stalled`` are
"abnormal-true" (True means in progress / needs a human). ``ClusterInSync``, ``KeyHealthy`` and
``SecretsEncrypted`` are True when good. ``Ready`` is derived from the others in exactly one place,
``summarize``, so no code path can report Ready while something else says otherwise.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
CLUSTER_IN_SYNC = "ClusterInSync"
KEY_HEALTHY = "KeyHealthy"
SECRETS_ENCRYPTED = "SecretsEncrypted"
GOOD_WHEN_TRUE = (CLUSTER_IN_SYNC, KEY_HEALTHY, SECRETS_ENCRYPTED)


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    *,
    generation: int = 0,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Return conditions with ``type_`` upserted; lastTransitionTime moves only when status flips."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        moved = cond.get("status") != value
        out.append({
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso(now) if moved else cond.get("lastTransitionTime") or now_iso(now),
            "observedGeneration": generation,
        })
    if not found:
        out.append({"type": type_, "status": value, "reason": reason, "message": message,
                    "lastTransitionTime": now_iso(now), "observedGeneration": generation})
    return out


def condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def summarize(
    conditions: Iterable[Mapping[str, Any]], *, generation: int, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Derive ``Ready`` from Stalled, Reconciling and the good-when-true conditions.

    Ready is True only when nothing is stalled or reconciling and every domain condition present is
    True; otherwise it is False with the reason of the first thing standing in the way.
    """
    conds = [dict(c) for c in conditions]
    stalled = condition(conds, STALLED)
    reconciling = condition(conds, RECONCILING)
    blocker: Mapping[str, Any] | None = None
    if stalled and stalled.get("status") == "True":
        blocker = stalled
    elif reconciling and reconciling.get("status") == "True":
        blocker = reconciling
    else:
        blocker = next(
            (c for t in GOOD_WHEN_TRUE if (c := condition(conds, t)) and c.get("status") != "True"), None
        )
    if blocker is None:
        return set_condition(conds, READY, True, "Reconciled", "encryption matches the policy",
                             generation=generation, now=now)
    return set_condition(conds, READY, False, str(blocker.get("reason") or "NotReady"),
                         str(blocker.get("message") or ""), generation=generation, now=now)
