"""Every Prometheus metric the operator exposes, defined here and nowhere else.

One module owns the names so that the chart's alert rules and dashboard (and docs/monitoring.md) have a
single place to agree with; tests/integration/test_reconcile.py reads the real ``/metrics`` of a running
operator and fails when a rule or a panel names a metric this module does not expose.

Cardinality is bounded on purpose: labels are the policy name (one per cluster in practice), a key
*slot* (current or previous), a pass kind, an outcome, a fixed Azure operation vocabulary and an HTTP
status code. No label ever carries a Secret's name, namespace or data, nor a key URL other than the
one ``encryptedWith`` info series per policy.

The callers (reconciler, Azure transport, checkpoint wrapper) only call the small functions below;
they never touch a metric object directly, so a renamed metric is one edit here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server

from .model import IDENTITY, KeyRef, KeyState
from .rewrite.checkpoint import CheckpointStore, RewriteCheckpoint

log = logging.getLogger(__name__)

PHASES = ("Pending", "Checking", "UpdatingCluster", "WaitingForKeySwitch", "Rewriting", "Verifying", "Paused",
          "Ready", "Blocked", "Failed", "Deleting")
SLOTS = ("current", "previous")
PASSES = ("rewrite", "verification")
OUTCOMES = ("reencrypted", "already_current", "skipped", "failed")
SWITCH_OUTCOMES = {"KeySwitched": "switched", "KeySwitchTimeout": "timeout", "CanaryGone": "canary_gone",
                   "CanaryReplaced": "canary_replaced"}
SERVICES = ("arm", "keyvault")

# ------------------------------------------------------------------------------------------ policy

POLICY_PHASE = Gauge("aks_kms_policy_phase", "1 for the policy's status.phase, 0 for every other phase.",
                     ["policy", "phase"])
POLICY_READY = Gauge("aks_kms_policy_ready", "1 when the policy's Ready condition is True, else 0.", ["policy"])
KEY_EXPIRY = Gauge("aks_kms_key_expiry_timestamp_seconds",
                   "Key Vault expiry (Unix time) of the key in AKS's current or previous slot; no series when the "
                   "key has no expiry.", ["policy", "slot"])
KEY_ENABLED = Gauge("aks_kms_key_enabled",
                    "1 when the key in the slot exists and is enabled in Key Vault, 0 when disabled or missing.",
                    ["policy", "slot"])
KEY_PROTECTS = Gauge("aks_kms_key_protects_secrets",
                     "1 while Secrets may still be stored under the key in the slot (the current key always; the "
                     "previous one until a verification pass proved every Secret is under the current key).",
                     ["policy", "slot"])
KEY_NEWER = Gauge("aks_kms_key_newer_version_available",
                  "1 when spec.rotation.followLatestVersion is on and Key Vault has a newer enabled, valid version "
                  "than the one AKS uses (0 otherwise, no series when not following).", ["policy"])
ENCRYPTED_WITH = Info("aks_kms_encrypted_with",
                      "status.encryptedWith: the key every Secret was last verified to be written under.", ["policy"])

# ----------------------------------------------------------------------------------------- rewrite

REWRITE_SEEN = Counter("aks_kms_rewrite_secrets_seen", "Secrets listed by rewrite and verification passes.",
                       ["policy", "pass"])
REWRITE_SECRETS = Counter("aks_kms_rewrite_secrets",
                          "Secrets by outcome of their no-op write: reencrypted, already_current, skipped, failed.",
                          ["policy", "pass", "outcome"])
REWRITE_NAMESPACES = Gauge("aks_kms_rewrite_namespaces", "Namespaces the running (or last) pass walks.",
                           ["policy", "pass"])
REWRITE_NAMESPACES_DONE = Gauge("aks_kms_rewrite_namespaces_done", "Namespaces the running (or last) pass finished.",
                                ["policy", "pass"])
REWRITE_RATE = Gauge("aks_kms_rewrite_writes_per_second", "Write rate of the running (or last) pass.",
                     ["policy", "pass"])
REWRITE_THROTTLED = Counter("aks_kms_rewrite_throttled_responses",
                            "429 Too Many Requests answers the API server gave rewrite and verification passes.",
                            ["policy", "pass"])
REWRITE_IN_PROGRESS = Gauge("aks_kms_rewrite_in_progress", "1 while a pass of this kind runs.", ["policy", "pass"])
REWRITE_LAST_PROGRESS = Gauge("aks_kms_rewrite_last_progress_timestamp_seconds",
                              "When the running pass last finished a Secret (Unix time).", ["policy", "pass"])
REWRITE_LAST_COMPLETED = Gauge("aks_kms_rewrite_last_completed_timestamp_seconds",
                               "When a pass of this kind last walked every namespace (Unix time).", ["policy", "pass"])

# -------------------------------------------------------------------------------------- key switch

KEY_SWITCH_WAIT = Histogram("aks_kms_key_switch_wait_seconds",
                            "Seconds one key-switch wait took (canary probes over fresh connections).", ["policy"],
                            buckets=(1, 5, 15, 30, 60, 90, 120, 180, 300, 600, 900, 1800))
KEY_SWITCH_PROBES = Counter("aks_kms_key_switch_probes", "Canary probes sent to prove a key switch.", ["policy"])
KEY_SWITCH = Counter("aks_kms_key_switch",
                     "Key-switch waits by outcome: switched, timeout, canary_gone, canary_replaced.",
                     ["policy", "outcome"])

# ------------------------------------------------------------------------------------------- Azure

AZURE_REQUESTS = Counter("aks_kms_azure_requests",
                         "HTTP requests to Azure (every try, retries included) by service, operation and status "
                         "code ('error' when no response came back).", ["service", "operation", "code"])
AZURE_THROTTLES = Counter("aks_kms_azure_throttles", "429 answers from Azure.", ["service", "operation"])
AZURE_LATENCY = Histogram("aks_kms_azure_request_duration_seconds", "Latency of one HTTP try to Azure.",
                          ["service", "operation"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

# --------------------------------------------------------------------------------------- reconcile

RECONCILE_DURATION = Histogram("aks_kms_reconcile_duration_seconds",
                               "Duration of one reconcile by the step it performed (a rewrite step lasts as long "
                               "as its run).", ["step"],
                               buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400))
RECONCILE_ERRORS = Counter("aks_kms_reconcile_errors",
                           "Reconciles that ended in an error, by reason (an exception class or a planner reason).",
                           ["reason"])
BUILD = Info("aks_kms_operator_build", "The operator's version.")


def _version() -> str:
    try:
        return metadata.version("aks-kms-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD.info({"version": _version()})
for _service in SERVICES:
    AZURE_THROTTLES.labels(_service, "other")


# ------------------------------------------------------------------------------------------ server


def parse_address(text: str) -> tuple[str, int] | None:
    """``host:port`` (``:8081`` means every interface) as a listen address; empty disables metrics.

    Raises ValueError naming the flag and the fix, so a typo fails the start instead of silently
    serving nothing."""
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics-address / AKS_KMS_METRICS_ADDRESS {text!r} is not host:port; use for example "
                         "0.0.0.0:8081 (the chart's metrics.port), :8081, or an empty value to disable /metrics")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def serve(address: str) -> tuple[str, int] | None:
    """Start the /metrics HTTP server in a daemon thread; returns where it listens (None: disabled)."""
    where = parse_address(address)
    if where is None:
        return None
    server, _thread = start_http_server(where[1], addr=where[0], registry=REGISTRY)
    host, port = server.server_address[:2]
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)
    return str(host), int(port)


# ------------------------------------------------------------------------------------------ policy


@dataclass(frozen=True)
class SlotFacts:
    """What the reconciler knows about the key in one of AKS's slots."""

    key_id: str
    state: KeyState | None
    protects_secrets: bool


def _epoch(when: dt.datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def record_policy(policy: str, *, phase: str, ready: bool, slots: dict[str, SlotFacts] | None, encrypted_with: str,
                  newer_version: bool | None) -> None:
    """Publish one reconcile's report of a policy (called where status is written).

    ``slots`` None: AKS could not be read this time; the key series keep their last values rather
    than vanish (an alert on them must not resolve because of one failed read)."""
    for p in {*PHASES, phase}:
        POLICY_PHASE.labels(policy, p).set(1 if p == phase else 0)
    POLICY_READY.labels(policy).set(1 if ready else 0)
    ENCRYPTED_WITH.labels(policy).info({"key_id": encrypted_with or "", "key_version": _version_of(encrypted_with)})
    if slots is None:
        return
    for slot in SLOTS:
        facts = slots.get(slot)
        if facts is None or not facts.key_id or facts.key_id == IDENTITY:
            for metric in (KEY_EXPIRY, KEY_ENABLED, KEY_PROTECTS):
                _remove(metric, policy, slot)
            continue
        state = facts.state
        if state is not None:  # None: Key Vault could not be read this time; keep the last known values
            KEY_ENABLED.labels(policy, slot).set(1 if state.exists and state.enabled else 0)
            expiry = _epoch(state.expires_on) if state.exists else None
            if expiry is None:
                _remove(KEY_EXPIRY, policy, slot)
            else:
                KEY_EXPIRY.labels(policy, slot).set(expiry)
        KEY_PROTECTS.labels(policy, slot).set(1 if facts.protects_secrets else 0)
    if newer_version is None:
        _remove(KEY_NEWER, policy)
    else:
        KEY_NEWER.labels(policy).set(1 if newer_version else 0)


def _version_of(key_id: str) -> str:
    if not key_id or key_id == IDENTITY:
        return key_id or ""
    try:
        return KeyRef.parse(key_id).version
    except ValueError:
        return ""


def _remove(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def forget_policy(policy: str) -> None:
    """Drop every per-policy series of a deleted policy."""
    for metric in (POLICY_PHASE, POLICY_READY, KEY_EXPIRY, KEY_ENABLED, KEY_PROTECTS, KEY_NEWER, ENCRYPTED_WITH,
                   REWRITE_SEEN, REWRITE_SECRETS, REWRITE_NAMESPACES, REWRITE_NAMESPACES_DONE, REWRITE_RATE,
                   REWRITE_THROTTLED, REWRITE_IN_PROGRESS, REWRITE_LAST_PROGRESS, REWRITE_LAST_COMPLETED,
                   KEY_SWITCH_WAIT, KEY_SWITCH_PROBES, KEY_SWITCH):
        # prometheus-client has no public list of a metric's children; _metrics is keyed by label values
        at = list(metric._labelnames).index("policy")
        for values in [v for v in list(metric._metrics) if v[at] == policy]:
            _remove(metric, *values)


# ----------------------------------------------------------------------------------------- rewrite


def init_rewrite(policy: str, kind: str) -> None:
    """Create a pass kind's counters at 0, so rate() and increase() see the first increment."""
    REWRITE_SEEN.labels(policy, kind)
    REWRITE_THROTTLED.labels(policy, kind)
    for outcome in OUTCOMES:
        REWRITE_SECRETS.labels(policy, kind, outcome)


def rewrite_started(policy: str, kind: str) -> None:
    init_rewrite(policy, kind)
    REWRITE_IN_PROGRESS.labels(policy, kind).set(1)
    REWRITE_LAST_PROGRESS.labels(policy, kind).set(time.time())


def rewrite_ended(policy: str, kind: str, *, throttled: int, completed: bool) -> None:
    REWRITE_IN_PROGRESS.labels(policy, kind).set(0)
    if throttled:
        REWRITE_THROTTLED.labels(policy, kind).inc(throttled)
    if completed:
        REWRITE_LAST_COMPLETED.labels(policy, kind).set(time.time())


class MeteredCheckpoints:
    """A ``CheckpointStore`` that publishes every checkpoint the engine saves, then stores it.

    The engine checkpoints its counters every few seconds and at the end of a run; the difference
    between two saves is what the Prometheus counters gain. The first baseline is the checkpoint the
    run resumes from, so a restarted operator never counts the same Secret twice; a smaller value
    (a new run) starts from zero again.
    """

    def __init__(self, inner: CheckpointStore, policy: str, kind: str) -> None:
        self.inner = inner
        self.policy = policy
        self.kind = kind
        self._last: dict[str, int] = {}
        init_rewrite(policy, kind)

    async def load(self) -> RewriteCheckpoint | None:
        checkpoint = await self.inner.load()
        self._last = _counts(checkpoint) if checkpoint is not None else {}
        return checkpoint

    async def save(self, checkpoint: RewriteCheckpoint) -> None:
        self.publish(checkpoint)
        await self.inner.save(checkpoint)

    def publish(self, checkpoint: RewriteCheckpoint) -> None:
        counts = _counts(checkpoint)
        if any(counts[k] < self._last.get(k, 0) for k in counts):
            self._last = {}  # a new run: its counters start from zero
        gained = {k: counts[k] - self._last.get(k, 0) for k in counts}
        self._last = counts
        p, kind = self.policy, self.kind
        if gained["seen"]:
            REWRITE_SEEN.labels(p, kind).inc(gained["seen"])
        for outcome in OUTCOMES:
            if gained[outcome]:
                REWRITE_SECRETS.labels(p, kind, outcome).inc(gained[outcome])
        if any(gained[o] for o in OUTCOMES):
            REWRITE_LAST_PROGRESS.labels(p, kind).set(time.time())
        REWRITE_NAMESPACES.labels(p, kind).set(checkpoint.namespaces_total)
        REWRITE_NAMESPACES_DONE.labels(p, kind).set(checkpoint.namespaces_done)
        REWRITE_RATE.labels(p, kind).set(checkpoint.writes_per_second)


def _counts(checkpoint: RewriteCheckpoint) -> dict[str, int]:
    c = checkpoint.counters
    return {"seen": c.seen, "reencrypted": c.reencrypted, "already_current": c.already_current,
            "skipped": c.skipped, "failed": c.failed}


# -------------------------------------------------------------------------------------- key switch


def record_key_switch(policy: str, *, reason: str, probes: int, seconds: float) -> None:
    KEY_SWITCH_WAIT.labels(policy).observe(seconds)
    KEY_SWITCH_PROBES.labels(policy).inc(probes)
    KEY_SWITCH.labels(policy, SWITCH_OUTCOMES.get(reason, "other")).inc()


def init_key_switch(policy: str) -> None:
    for outcome in SWITCH_OUTCOMES.values():
        KEY_SWITCH.labels(policy, outcome)
    KEY_SWITCH_PROBES.labels(policy)


# ------------------------------------------------------------------------------------------- Azure

_KV_OPERATIONS = (
    (re.compile(r"/keys/?"), "GET", "ListKeys"),
    (re.compile(r"/keys/[^/]+/versions/?"), "GET", "ListKeyVersions"),
    (re.compile(r"/keys/[^/]+/create/?"), "POST", "CreateKey"),
    (re.compile(r"/keys/[^/]+/rotate/?"), "POST", "RotateKey"),
    (re.compile(r"/keys/[^/]+/rotationpolicy/?"), "GET", "GetKeyRotationPolicy"),
    (re.compile(r"/keys/[^/]+/rotationpolicy/?"), "PUT", "UpdateKeyRotationPolicy"),
    (re.compile(r"/keys/[^/]+(/[0-9A-Fa-f]{32})?/?"), "GET", "GetKey"),
    (re.compile(r"/keys/[^/]+/[0-9A-Fa-f]{32}/?"), "PATCH", "UpdateKey"),
)
# ARM resource types the operator reads or writes; anything else is "other" (bounded label values).
_ARM_TYPES = {t.lower(): t for t in ("managedClusters", "vaults", "userAssignedIdentities", "roleAssignments",
                                     "roleDefinitions", "operations", "operationresults", "operationStatuses")}
_METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE", "HEAD")


def azure_operation(service: str, method: str, url: str) -> str:
    """A bounded operation name for one Azure request: Key Vault's REST operation names, or
    ``<METHOD> <ARM resource type>`` (``GET managedClusters``, ``GET operations`` for LRO polls)."""
    method = method.upper() if method.upper() in _METHODS else "OTHER"
    path = urlsplit(url).path
    if service == "keyvault":
        return next((name for pattern, verb, name in _KV_OPERATIONS if verb == method and pattern.fullmatch(path)),
                    "other")
    parts = [p for p in path.split("/") if p]
    kind = "other"
    for i, part in enumerate(parts):
        if part.lower() == "providers" and i + 2 < len(parts):
            # after providers/<Namespace>/: type, name, type, name, ...
            for j in range(i + 2, len(parts), 2):
                kind = _ARM_TYPES.get(parts[j].lower(), "other")
    return f"{method} {kind}"


def observe_azure(service: str, operation: str, code: str, seconds: float) -> None:
    AZURE_REQUESTS.labels(service, operation, code).inc()
    AZURE_LATENCY.labels(service, operation).observe(seconds)
    if code == "429":
        AZURE_THROTTLES.labels(service, operation).inc()


# --------------------------------------------------------------------------------------- reconcile


def record_reconcile(step: str, seconds: float, error: str | None = None) -> None:
    RECONCILE_DURATION.labels(step).observe(seconds)
    if error:
        RECONCILE_ERRORS.labels(error).inc()


def names() -> Iterable[str]:
    """Every metric family name this module defines (the docs test lists them)."""
    for collector in (POLICY_PHASE, POLICY_READY, KEY_EXPIRY, KEY_ENABLED, KEY_PROTECTS, KEY_NEWER, ENCRYPTED_WITH,
                      REWRITE_SEEN, REWRITE_SECRETS, REWRITE_NAMESPACES, REWRITE_NAMESPACES_DONE, REWRITE_RATE,
                      REWRITE_THROTTLED, REWRITE_IN_PROGRESS, REWRITE_LAST_PROGRESS, REWRITE_LAST_COMPLETED,
                      KEY_SWITCH_WAIT, KEY_SWITCH_PROBES, KEY_SWITCH, AZURE_REQUESTS, AZURE_THROTTLES, AZURE_LATENCY,
                      RECONCILE_DURATION, RECONCILE_ERRORS, BUILD):
        yield collector._name


__all__ = ["MeteredCheckpoints", "SlotFacts", "azure_operation", "forget_policy", "init_key_switch", "names",
           "observe_azure", "parse_address", "record_key_switch", "record_policy", "record_reconcile",
           "rewrite_ended", "rewrite_started", "serve"]
