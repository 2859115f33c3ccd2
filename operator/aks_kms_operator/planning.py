"""The planner: from what the user wants and what AKS reports to the one next step (design.md 2.2).

Pure and level-based. Every reconcile observes the cluster, the keys and our own status ledger,
then calls ``plan_next_step``; the handler performs exactly the step it returns, records the
result in status and requeues. Nothing here remembers anything between calls, so a restarted
operator gets the same next step from the same inputs (invariant 8).

How a handler acts on a ``Decision`` (``next_step``):

* ``Check``: gather ``PreflightFacts`` for ``decision.steps[1]`` (the write it guards), run
  ``preflight.run_preflight`` and call ``plan_next_step`` again with ``findings=``. The answer is
  the write, a ``Wait`` or a ``Blocked``. Check is repeated before every write, so it is never
  stored as done.
* ``Enable`` / ``Update`` / ``Disable``: create the canary, GET the cluster, PUT it with If-Match,
  and once ARM accepts, store ``status_after_write`` (the operation in flight). One write per step.
* ``WaitForKeySwitch``: probe the canary. When the switch is proven, store
  ``status_after_key_switch``; until then raise a temporary error.
* ``Rewrite``: run (or resume) the rewrite toward ``step.key_id``; when it completes, store
  ``status_after_rewrite`` (the rewrite is done; nothing is proven yet).
* ``Verify``: run (or resume) verification pass ``status.verification.passes + 1``: no-op writes to
  every Secret over fresh connections. Store ``status_after_verify_pass``: only a pass that
  re-encrypted zero Secrets moves ``encryptedWith``; otherwise the next pass waits until
  ``verification.nextPassAt`` (``Wait`` ReplicaBehind, or ``Blocked`` VerifyFailed).
* ``Wait``: requeue after ``delay``. ``Blocked``: Stalled with ``reason`` and ``fix``.
  ``Ready``: requeue after ``delay`` to keep watching key versions and expiry.

The safety invariants of design.md 2.3 that concern sequencing are all enforced here:

1. A write (Enable, Update or Disable) is planned only when ``status.encryptedWith`` equals the
   key AKS writes with now. Every AKS write shifts its two slots (new, old-current) and drops
   old-previous, so this is exactly "no Secret may remain under the key that drops out". A second
   rotation requested before the first rewrite finished is therefore sequenced: Rewrite first.
2. No write while ``provisioningState`` is not terminal (``Wait`` ClusterBusy), and while a write
   of ours is in flight the answer is to wait on it, never to write again.
3. A Rewrite toward a key runs only after the switch to that key was proven:
   ``status.rewrite.targetKeyId`` is set only by ``status_after_key_switch``, and a Rewrite
   toward any other key is preceded by ``WaitForKeySwitch``.
10. ``encryptedWith`` moves only through ``status_after_verify_pass`` with zero re-encrypted and
   zero failed Secrets: every Rewrite is followed by Verify.
4. ``keyVaultNetworkAccess`` (and the Private vault) is never changed while enabled: such a change
   is planned as Disable, WaitForKeySwitch, Rewrite, Check, Enable(new mode), WaitForKeySwitch,
   Rewrite.
7. The ledger helpers below move a key to ``retirable`` only when AKS holds it in no slot and no
   Secret can be under it: that is, when a write moves it out of AKS's slots.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .api.v1alpha1 import (
    KeyLedger,
    KeyRecord,
    OperationStatus,
    PlanStatus,
    PolicySpec,
    PolicyStatus,
    RewriteStatus,
    VerificationStatus,
)
from .model import IDENTITY, ClusterState, KeyRef, KeyState, same_key
from .preflight import (
    KMS_V2_MINIMUM,
    Finding,
    Reason,
    Severity,
    blocking,
    managed_cluster_findings,
    ordered,
    waiting,
)
from .preflight import warnings as warning_findings

BUSY_RETRY = 30.0  # seconds: AKS operations take minutes; polling faster only costs ARM reads
# A rewrite right after our own write should find (almost) every Secret under the replaced key. Above
# this share of unchanged answers (and this many Secrets), the run most likely reached a replica that
# had not switched: said loudly (status warning, Event), never taken as success.
ALREADY_CURRENT_WARN_SHARE = 0.25
ALREADY_CURRENT_WARN_MIN = 20
MAX_RETIRABLE = 16  # status.keys.retirable maxItems
# The write key of the Managed experience with a platform-managed key: AKS owns the key, so there is no
# URL; status.encryptedWith shows this after a clean verification pass.
PLATFORM_KEY = "platform-managed"


class Step(StrEnum):
    """Plan steps (the first seven) and the three outcomes that need no action of their own."""

    CHECK = "Check"
    ENABLE = "Enable"
    UPDATE = "Update"
    DISABLE = "Disable"
    WAIT_FOR_KEY_SWITCH = "WaitForKeySwitch"
    REWRITE = "Rewrite"
    VERIFY = "Verify"
    MIGRATE = "Migrate"  # legacy → Managed experience: one irreversible ARM write, AKS rewrites the Secrets
    READY = "Ready"
    WAIT = "Wait"
    BLOCKED = "Blocked"


WRITE_STEPS = frozenset({Step.ENABLE, Step.UPDATE, Step.DISABLE, Step.MIGRATE})
OUTCOMES = frozenset({Step.READY, Step.WAIT, Step.BLOCKED})

_PHASES = {
    Step.CHECK: "Checking",
    Step.ENABLE: "UpdatingCluster",
    Step.UPDATE: "UpdatingCluster",
    Step.DISABLE: "UpdatingCluster",
    Step.MIGRATE: "UpdatingCluster",
    Step.WAIT_FOR_KEY_SWITCH: "WaitingForKeySwitch",
    Step.REWRITE: "Rewriting",
    Step.VERIFY: "Verifying",
    Step.READY: "Ready",
    Step.BLOCKED: "Blocked",
}


def _same(a: str, b: str) -> bool:
    """Key IDs (or ``IDENTITY``) compare equal regardless of URL spelling."""
    return same_key(a, b)


def managed_key(key_id: str) -> bool:
    """A write key of the Managed experience: the platform key or a versionless key URL."""
    if key_id == PLATFORM_KEY:
        return True
    try:
        return not KeyRef.parse(key_id).versioned
    except ValueError:
        return False


def short(key_id: str) -> str:
    """``vault/key/version-prefix`` for messages; ``identity`` and unparsable IDs as they are."""
    if not key_id or key_id in (IDENTITY, PLATFORM_KEY):
        return key_id or "(none)"
    try:
        return KeyRef.parse(key_id).display
    except ValueError:
        return key_id


@dataclass(frozen=True)
class KmsConfig:
    """The securityProfile.azureKeyVaultKms that matters for planning, desired or observed."""

    enabled: bool
    key_id: str = ""
    network_access: str = "Public"
    vault_resource_id: str = ""
    # The Managed experience (infrastructureEncryption Enabled). ``enabled`` then means a
    # customer-managed (versionless) key; without it the platform-managed key.
    managed: bool = False

    @classmethod
    def of_cluster(cls, cluster: ClusterState) -> KmsConfig:
        return cls(cluster.kms_enabled, cluster.key_id, cluster.network_access or "Public",
                   cluster.vault_resource_id, cluster.managed)

    @property
    def write_key(self) -> str:
        """The key the API server writes new Secrets with under this configuration.

        On the Managed experience: the versionless key (AKS picks its version) or ``PLATFORM_KEY``.
        """
        if self.managed:
            return self.key_id if self.enabled else PLATFORM_KEY
        return self.key_id if self.enabled else IDENTITY

    @property
    def key_management(self) -> str:
        return ("CustomerManaged" if self.enabled else "PlatformManaged") if self.managed else ""

    def same_mode(self, other: KmsConfig) -> bool:
        """Network access and (for Private) the vault; changing either needs Disable→Enable."""
        return (self.network_access.lower() == other.network_access.lower()
                and self.vault_resource_id.rstrip("/").lower() == other.vault_resource_id.rstrip("/").lower())


@dataclass(frozen=True)
class PlannedStep:
    """One step with its arguments.

    ``key_id`` is the key the API server writes with once the step is done (``IDENTITY`` for
    Disable and for the rewrite that follows it). For writes, ``replaces`` is the key AKS writes
    with before the step: it moves to AKS's previous slot, and preflight checks it stays valid.
    """

    step: Step
    key_id: str = ""
    network_access: str = ""
    vault_resource_id: str = ""
    replaces: str = ""
    managed: bool = False  # the write sets infrastructureEncryption Enabled (the Managed experience)

    @property
    def writes(self) -> bool:
        return self.step in WRITE_STEPS

    def __str__(self) -> str:
        if self.managed and self.step is not Step.CHECK:
            kind = "PlatformManaged" if self.key_id == PLATFORM_KEY else "CustomerManaged"
            return f"{self.step.value}(Managed, {kind})"
        return f"Enable({self.network_access})" if self.step is Step.ENABLE else self.step.value


@dataclass(frozen=True)
class Decision:
    """What to do now, and the rest of the plan.

    ``next_step`` is an action (Check … Rewrite) or an outcome (Ready, Wait, Blocked). ``steps``
    is the remaining plan, the step to perform (or the one being waited on or blocked) first.
    """

    next_step: Step
    steps: tuple[PlannedStep, ...]
    reason: str
    message: str
    fix: str = ""
    delay: float | None = None  # seconds until the handler should look again
    phase: str = "Pending"
    warnings: tuple[Finding, ...] = ()
    discard_operation: bool = False  # status.operation is finished or superseded: clear it
    desired: KmsConfig | None = None

    @property
    def step(self) -> PlannedStep | None:
        """The step to perform now, with its arguments (None for Ready)."""
        return self.steps[0] if self.steps else None

    @property
    def writes(self) -> bool:
        return self.next_step in WRITE_STEPS

    @property
    def acts(self) -> bool:
        return self.next_step not in OUTCOMES


# ------------------------------------------------------------------------------ desired state


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``1h30m``, ``720h``, ``250ms`` (the CRD's duration pattern) as a timedelta."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return dt.timedelta(seconds=sum(int(n) * units[u] for n, u in parts))


def _seconds(text: str, default: float) -> float:
    try:
        return parse_duration(text).total_seconds()
    except ValueError:
        return default


def check_interval_seconds(spec: PolicySpec) -> float:
    """How long to wait between looks at a policy that needs nothing (Ready, Blocked)."""
    return _seconds(spec.rotation.check_interval, 3600.0)


def newest_version(key_id: str, versions: Iterable[KeyState], now: dt.datetime | None = None) -> str | None:
    """The newest usable version of the key named by ``key_id`` (versioned or not) among ``versions``.

    Usable: exists, enabled and, when ``now`` is given, neither expired nor not yet valid; AKS
    would reject anything else. Newest by Key Vault's ``created_on``; ties (and missing dates)
    are broken by the key ID so the answer never depends on input order.
    """
    try:
        base = KeyRef.parse(key_id)
    except ValueError:
        return None
    usable: list[tuple[dt.datetime, str]] = []
    floor = dt.datetime.min.replace(tzinfo=dt.UTC)
    for v in versions:
        try:
            ref = KeyRef.parse(v.key_id)
        except ValueError:
            continue
        if (ref.vault_url, ref.name) != (base.vault_url, base.name) or not ref.versioned:
            continue
        if not (v.exists and v.enabled):
            continue
        if now is not None and (v.expired(now) or v.not_yet_valid(now)):
            continue
        usable.append((v.created_on or floor, ref.key_id))
    return max(usable)[1] if usable else None


def desired_config(spec: PolicySpec, key_versions: Sequence[KeyState] = (), now: dt.datetime | None = None,
                   *, deleting: bool = False) -> KmsConfig | Finding:
    """The configuration AKS should end up with, or the blocking finding that prevents knowing it."""
    kms = spec.kms
    if kms.experience == "Managed":
        # Deleting with deletionPolicy Disable cannot turn it off: plan_next_step answers that first.
        if kms.key_management == "PlatformManaged":
            return KmsConfig(False, managed=True)
        try:
            versioned = KeyRef.parse(kms.key_id).versioned
        except ValueError:
            versioned = True
        if versioned:  # admission refuses this; kept so a versioned key is never sent with Managed
            return Finding("KeyIdVersioned", Severity.BLOCK,
                           f"spec.kms.keyId {kms.key_id!r} is not a versionless Key Vault key URL, which the Managed "
                           "experience needs", "set spec.kms.keyId to https://<vault>.vault.azure.net/keys/<name>")
        private = kms.key_vault_network_access == "Private"
        return KmsConfig(True, kms.key_id, kms.key_vault_network_access,
                         kms.key_vault_resource_id if private else "", managed=True)
    if not kms.enabled or (deleting and spec.deletion_policy == "Disable"):
        return KmsConfig(False)
    key = kms.key_id
    if spec.rotation.follow_latest_version:
        latest = newest_version(key, key_versions, now)
        if latest is None:
            return Finding(Reason.KEY_NOT_FOUND, Severity.BLOCK,
                           f"no enabled, valid version of {short(key)} was found to follow",
                           f"az keyvault key rotate --id {key}  # or enable an existing version")
        key = latest
    else:
        try:
            versioned = KeyRef.parse(key).versioned
        except ValueError:
            versioned = False
        if not versioned:  # admission refuses this; kept so a bad object can never reach AKS
            return Finding("KeyIdNotVersioned", Severity.BLOCK,
                           f"spec.kms.keyId {key!r} is not a versioned Key Vault key URL",
                           "set spec.kms.keyId to …/keys/<name>/<version>, or spec.rotation.followLatestVersion")
    private = kms.key_vault_network_access == "Private"
    return KmsConfig(True, key, kms.key_vault_network_access, kms.key_vault_resource_id if private else "")


# ------------------------------------------------------------------------------------ the plan


def _rewrite_steps(key: str, proven: bool, rewritten: bool = False) -> list[PlannedStep]:
    """What follows a write toward ``key``: prove the switch, rewrite, verify (invariants 3 and 10)."""
    if rewritten:
        return [PlannedStep(Step.VERIFY, key)]
    out = [] if proven else [PlannedStep(Step.WAIT_FOR_KEY_SWITCH, key)]
    return [*out, PlannedStep(Step.REWRITE, key), PlannedStep(Step.VERIFY, key)]


def rewrite_done(rewrite: RewriteStatus, key: str) -> bool:
    """The rewrite toward ``key`` walked every namespace without a failed Secret."""
    return _same(rewrite.target_key_id, key) and bool(rewrite.completed_at) and rewrite.failed == 0


def _managed_change_steps(desired: KmsConfig, observed: KmsConfig) -> list[PlannedStep]:
    """One write toward the Managed experience, behind a Check, and nothing after it: AKS re-encrypts the
    Secrets itself (on migration and on every key version it picks up), so there is no key switch to prove
    and no rewrite of ours. What AKS forbids (leaving Managed, Public↔Private) never gets here."""
    if observed.managed and desired.enabled == observed.enabled and (
            not desired.enabled or (_same(desired.key_id, observed.key_id) and desired.same_mode(observed))):
        return []
    kind = Step.UPDATE if observed.managed else (Step.MIGRATE if observed.enabled else Step.ENABLE)
    args = (desired.write_key, desired.network_access, desired.vault_resource_id, observed.write_key)
    return [PlannedStep(Step.CHECK, *args, managed=True), PlannedStep(kind, *args, managed=True)]


def _change_steps(desired: KmsConfig, observed: KmsConfig) -> list[PlannedStep]:
    """The writes (each behind a Check and followed by its key switch and rewrite) from observed to desired."""
    if desired.managed:
        return _managed_change_steps(desired, observed)
    enable = [
        PlannedStep(Step.CHECK, desired.key_id, desired.network_access, desired.vault_resource_id, IDENTITY),
        PlannedStep(Step.ENABLE, desired.key_id, desired.network_access, desired.vault_resource_id, IDENTITY),
        *_rewrite_steps(desired.key_id, proven=False),
    ]
    disable = [
        PlannedStep(Step.CHECK, IDENTITY, replaces=observed.key_id),
        PlannedStep(Step.DISABLE, IDENTITY, replaces=observed.key_id),
        *_rewrite_steps(IDENTITY, proven=False),
    ]
    if desired.enabled and not observed.enabled:
        return enable
    if not desired.enabled:
        return disable if observed.enabled else []
    if not desired.same_mode(observed):
        # Invariant 4: AKS does not support changing network access while enabled; go through
        # plaintext. The second Check is real: the Enable is a write of its own, hours later.
        return disable + enable
    if not _same(desired.key_id, observed.key_id):
        return [
            PlannedStep(Step.CHECK, desired.key_id, desired.network_access, desired.vault_resource_id,
                        observed.key_id),
            PlannedStep(Step.UPDATE, desired.key_id, desired.network_access, desired.vault_resource_id,
                        observed.key_id),
            *_rewrite_steps(desired.key_id, proven=False),
        ]
    return []


def remaining_steps(desired: KmsConfig, observed: KmsConfig, status: PolicyStatus) -> list[PlannedStep]:
    """Everything still to do, from the observed configuration and the ledger alone.

    The ledger is behind when ``encryptedWith`` is not the key AKS writes with: the last rewrite
    has not been verified (or never ran: adoption, or a change made outside the operator). That
    rewrite comes first, whatever else changed (invariant 1). It needs a proven key switch:
    ``rewrite.targetKeyId`` equal to the key means the switch was proven and the rewrite can go on
    from its checkpoint; otherwise WaitForKeySwitch goes first (invariant 3). A completed rewrite
    still needs a clean verification pass (invariant 10).
    """
    aks_key = observed.write_key
    steps: list[PlannedStep] = []
    # On the Managed experience AKS re-encrypts by itself: no catch-up rewrite of ours (spec.verify proves it).
    if not observed.managed and not _same(status.encrypted_with, aks_key):
        steps += _rewrite_steps(aks_key, proven=_same(status.rewrite.target_key_id, aks_key),
                                rewritten=rewrite_done(status.rewrite, aks_key))
    return steps + _change_steps(desired, observed)


def _kms_v1_warning(cluster: ClusterState, desired: KmsConfig, observed: KmsConfig) -> list[Finding]:
    minor = cluster.kubernetes_minor
    if minor == (0, 0) or minor >= KMS_V2_MINIMUM or not (desired.enabled or observed.enabled):
        return []
    return [Finding(Reason.KMS_V1, Severity.WARN,
                    f"Kubernetes {cluster.kubernetes_version} runs KMS v1 (at most 2,000 Secrets); the move to "
                    "KMS v2 (disable, rewrite, upgrade to 1.27+, enable, rewrite) is opt-in and not automated",
                    "set spec.kms.enabled: false and wait for Ready, az aks upgrade to 1.27 or later, then "
                    "set spec.kms.enabled: true")]


def plan_next_step(
    spec: PolicySpec,
    cluster: ClusterState,
    status: PolicyStatus,
    *,
    key_versions: Sequence[KeyState] = (),
    findings: Sequence[Finding] | None = None,
    now: dt.datetime | None = None,
    deleting: bool = False,
) -> Decision:
    """The next step toward ``spec``, given what AKS reports and what our status records.

    ``key_versions``: versions of the spec's key (needed for followLatestVersion). ``findings``:
    the preflight result for the write behind a ``Check`` (None: not checked in this reconcile).
    ``now`` filters expired and not-yet-valid versions when following the latest one.
    ``deleting``: the policy is being deleted; deletionPolicy decides what that means.
    """
    ready_delay = check_interval_seconds(spec)
    observed = KmsConfig.of_cluster(cluster)

    if deleting and spec.deletion_policy != "Disable":
        return Decision(Step.READY, (), "Retained", "deletionPolicy Retain: AKS is left as it is",
                        phase="Deleting", discard_operation=bool(status.operation.step))
    if deleting and observed.managed:
        return Decision(Step.READY, (), MANAGED_IRREVERSIBLE,
                        "deletionPolicy Disable: AKS forbids disabling the Managed KMS experience, so AKS is left "
                        "as it is", phase="Deleting", discard_operation=bool(status.operation.step))
    refusal = _managed_refusal(spec, cluster, observed)
    if refusal is not None:
        return _outcome(Step.BLOCKED, (), refusal, ready_delay, deleting, None)

    wanted = desired_config(spec, key_versions, now, deleting=deleting)
    if isinstance(wanted, Finding):
        return _outcome(Step.BLOCKED, (), wanted, ready_delay, deleting, None)
    desired = wanted
    notes = _kms_v1_warning(cluster, desired, observed)

    def decide(next_step: Step, steps: Sequence[PlannedStep], reason: str, message: str, *, fix: str = "",
               delay: float | None = None, phase: str | None = None, discard: bool = False,
               extra: Sequence[Finding] = ()) -> Decision:
        chosen = phase or _PHASES.get(next_step, "Pending")
        if deleting and next_step is not Step.BLOCKED:
            chosen = "Deleting"
        return Decision(next_step, tuple(steps), reason, message, fix, delay, chosen,
                        tuple(ordered([*notes, *extra])), discard, desired)

    # An ARM write of ours was accepted: wait for it, never write again (invariant 2).
    op = status.operation
    discard = False
    if op.step:
        op_key = op.target_key_id or IDENTITY
        reflected = _same(observed.write_key, op_key)
        if cluster.busy:
            managed_op = desired.managed or observed.managed
            tail = [] if managed_op else (
                remaining_steps(desired, observed, status) if reflected else _rewrite_steps(op_key, False))
            kind = Step(op.step) if op.step in {s.value for s in WRITE_STEPS} else Step.UPDATE
            held = PlannedStep(kind, op_key, observed.network_access, observed.vault_resource_id, managed=managed_op)
            what = ("; AKS switches the API servers to the new key and re-encrypts every Secret itself"
                    if managed_op else "")
            return decide(Step.WAIT, [held, *tail], "ClusterUpdating",
                          f"AKS is applying {op.step} to {short(op_key)} "
                          f"(provisioningState {cluster.provisioning_state}){what}",
                          delay=BUSY_RETRY, phase="UpdatingCluster")
        if not reflected:
            if cluster.provisioning_state == "Failed":
                return decide(Step.BLOCKED, [], "ClusterUpdateFailed",
                              f"AKS ended {op.step} to {short(op_key)} in Failed without applying it",
                              fix="read the error in the cluster's activity log, fix its cause, then "
                                  f"az aks update -g {spec.cluster.resource_group} -n {spec.cluster.name} "
                                  "to return it to Succeeded",
                              delay=ready_delay)
            # Canceled, or replaced by someone else's write: the operation is over without effect.
            discard = True

    steps = remaining_steps(desired, observed, status)
    if op.step and (not steps or steps[0].step is not Step.WAIT_FOR_KEY_SWITCH):
        discard = True

    if not steps and spec.verify.requested_at and spec.verify.requested_at != status.verification.requested_at:
        steps = [PlannedStep(Step.VERIFY, observed.write_key)]  # on demand (spec.verify.requestedAt)
    if not steps:
        if observed.managed:
            what = (f"AKS encrypts Secrets on the Managed experience with {short(observed.key_id)} (customer-managed; "
                    "AKS picks up new key versions and re-encrypts by itself)" if observed.enabled else
                    "AKS encrypts Secrets on the Managed experience with a platform-managed key it rotates itself")
            if not _same(status.encrypted_with, observed.write_key):
                what += "; set spec.verify.requestedAt to prove every Secret is under it"
        else:
            what = (f"AKS encrypts Secrets with {short(observed.key_id)} and every Secret is written under it"
                    if observed.enabled else "KMS is disabled and every Secret is stored without KMS")
        return decide(Step.READY, [], "InSync", what, delay=ready_delay, discard=discard)

    first = steps[0]
    if first.step is Step.WAIT_FOR_KEY_SWITCH:
        if cluster.busy:  # the API server may still be rolling: a probe now proves nothing
            return decide(Step.WAIT, steps, "ClusterBusy",
                          f"waiting for AKS ({cluster.provisioning_state}) before proving the switch to "
                          f"{short(first.key_id)}", delay=BUSY_RETRY, phase="WaitingForKeySwitch", discard=discard)
        return decide(Step.WAIT_FOR_KEY_SWITCH, steps, "WaitingForKeySwitch",
                      f"proving every API server writes with {short(first.key_id)}", discard=discard)
    if first.step in (Step.REWRITE, Step.VERIFY) and spec.rewrite.paused:
        what = "rewrite" if first.step is Step.REWRITE else "verification"
        return decide(Step.WAIT, steps, "RewritePaused",
                      f"{what} toward {short(first.key_id)} paused by spec.rewrite.paused",
                      delay=ready_delay, phase="Paused", discard=discard)
    if first.step is Step.REWRITE:
        return decide(Step.REWRITE, steps, "Rewriting", f"re-encrypting Secrets for {short(first.key_id)}",
                      discard=discard)
    if first.step is Step.VERIFY:
        return _verify_decision(decide, steps, status, now, discard)

    # first is a Check guarding the write steps[1].
    write = steps[1]
    if cluster.busy:
        return decide(Step.WAIT, steps, "ClusterBusy",
                      f"AKS is {cluster.provisioning_state}; {write} waits until it is Succeeded, Failed or "
                      "Canceled", delay=BUSY_RETRY, phase="Pending", discard=discard)
    if findings is None:
        return decide(Step.CHECK, steps, "Checking",
                      f"checking prerequisites for {write} to {short(write.key_id)}", discard=discard)
    if write.step is Step.MIGRATE and not blocking(findings) and not waiting(findings):
        return decide(write.step, steps[1:], "Migrating", _migration_text(observed, desired),
                      discard=discard, extra=warning_findings(ordered(findings)))
    found = ordered(findings)
    blockers, waits = blocking(found), waiting(found)
    if blockers:
        b = blockers[0]
        more = f" (+{len(blockers) - 1} more)" if len(blockers) > 1 else ""
        return decide(Step.BLOCKED, steps, b.reason, b.message + more, fix=b.fix, delay=ready_delay,
                      discard=discard, extra=[f for f in found if f is not b])
    if waits:
        w = waits[0]
        return decide(Step.WAIT, steps, w.reason, w.message, fix=w.fix, delay=BUSY_RETRY, phase="Pending",
                      discard=discard, extra=warning_findings(found))
    return decide(write.step, steps[1:], write.step.value, f"{write} to {short(write.key_id)}",
                  discard=discard, extra=warning_findings(found))


MANAGED_IRREVERSIBLE = "ManagedIrreversible"
MIGRATION_NOT_ALLOWED = "MigrationNotAllowed"


def _migration_text(observed: KmsConfig, desired: KmsConfig) -> str:
    """What AKS will do when a legacy cluster moves to the Managed experience (status.message)."""
    target = (f"your key {short(desired.key_id)} (versionless: AKS follows its new versions)" if desired.enabled
              else "a platform-managed key")
    return (f"migrating from the legacy experience ({short(observed.key_id)}) to the Managed experience with "
            f"{target}: one ARM write; AKS switches the API servers and re-encrypts every Secret itself; "
            "this cannot be undone")


def _managed_refusal(spec: PolicySpec, cluster: ClusterState, observed: KmsConfig) -> Finding | None:
    """What AKS forbids on the Managed experience, and a migration the policy did not explicitly allow.

    Refused here, before any Check, with the reason and the way forward: never attempted at AKS.
    """
    kms = spec.kms
    wants_managed = kms.experience == "Managed"
    rg, name = spec.cluster.resource_group, spec.cluster.name
    if observed.managed and not wants_managed:
        what = "disable KMS" if not kms.enabled else "return to the legacy experience"
        return Finding(MANAGED_IRREVERSIBLE, Severity.BLOCK,
                       f"AKS reports the Managed KMS experience ({observed.key_management}); the policy asks to "
                       f"{what}, which AKS forbids: KMS data encryption cannot be turned off or downgraded",
                       f"set spec.kms.experience: Managed with keyManagement: {observed.key_management} to match "
                       "the cluster (nothing is written meanwhile)")
    if observed.managed and observed.enabled and kms.key_management == "CustomerManaged" and (
            kms.key_vault_network_access.lower() != observed.network_access.lower()):
        return Finding(MANAGED_IRREVERSIBLE, Severity.BLOCK,
                       f"the policy asks to change keyVaultNetworkAccess from {observed.network_access} to "
                       f"{kms.key_vault_network_access}, which AKS forbids on the Managed experience",
                       f"set spec.kms.keyVaultNetworkAccess: {observed.network_access} (a private vault is reached "
                       "through its firewall's trusted-services bypass, so Public works with a closed vault too)")
    if wants_managed and not observed.managed:
        ruled_out = managed_cluster_findings(cluster, rg, name)
        if ruled_out:
            return ruled_out[0]
    if wants_managed and not observed.managed and observed.enabled and kms.migration != "Allow":
        target = "a platform-managed key" if kms.key_management == "PlatformManaged" else short(kms.key_id)
        return Finding(MIGRATION_NOT_ALLOWED, Severity.BLOCK,
                       f"AKS reports the legacy experience ({short(observed.key_id)}); the policy asks for the Managed "
                       f"experience with {target}. That migration is one ARM write after which AKS re-encrypts every "
                       "Secret itself, and it cannot be undone, so it needs an explicit opt-in",
                       f"set spec.kms.migration: Allow to migrate {rg}/{name} (turn off admission policies that "
                       "block Secret updates first), or spec.kms.experience: Legacy to stay")
    return None


def _already_current_warning(status: PolicyStatus, key: str) -> list[Finding]:
    """A rewrite right after our write that found many Secrets "already current" reached a lagging replica."""
    rw = status.rewrite
    if not (rw.follows_write and rewrite_done(rw, key)) or rw.seen < ALREADY_CURRENT_WARN_MIN:
        return []
    share = rw.already_current / rw.seen
    if share <= ALREADY_CURRENT_WARN_SHARE:
        return []
    return [Finding(
        "AlreadyCurrentAfterSwitch", Severity.WARN,
        f"{rw.already_current} of {rw.seen} Secrets ({share:.0%}) came back unchanged right after the switch to "
        f"{short(key)}: an API server replica that had not reloaded answered for them; the verification "
        "pass re-writes them before encryptedWith moves",
        "none needed; if it repeats, check that every API server replica reloads the KMS configuration")]


def _iso_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _verify_decision(decide: Callable[..., Decision], steps: Sequence[PlannedStep], status: PolicyStatus,
                     now: dt.datetime | None, discard: bool) -> Decision:
    """Verify now, or wait out the pause a dirty pass asked for (invariant 10)."""
    first = steps[0]
    v = status.verification
    extra = _already_current_warning(status, first.key_id)
    mine = _same(v.target_key_id, first.key_id)
    due = _iso_time(v.next_pass_at) if mine and v.next_pass_at else None
    if due is not None and now is not None and due > now:
        delay = max(1.0, (due - now).total_seconds())
        if v.last_pass_failed:
            return decide(Step.BLOCKED, steps, "VerifyFailed",
                          f"verification pass {v.passes} for {short(first.key_id)} could not write "
                          f"{v.last_pass_failed} Secret(s) ({', '.join(v.failures[:3])}); "
                          f"next pass at {v.next_pass_at}",
                          fix="fix what refuses the writes (admission webhook, permissions); the operator passes "
                              "again", delay=delay, discard=discard, extra=extra)
        return decide(Step.WAIT, steps, "ReplicaBehind",
                      f"verification pass {v.passes} for {short(first.key_id)} re-encrypted {v.last_pass_reencrypted} "
                      f"Secret(s) and retried {v.retried} write(s) after a 5xx or a dropped connection: an API "
                      f"server replica was still on an older key; next pass at {v.next_pass_at}",
                      delay=delay, phase="Verifying", discard=discard, extra=extra)
    number = (v.passes if mine else 0) + 1
    return decide(Step.VERIFY, steps, "Verifying",
                  f"verification pass {number}: every Secret must come back unchanged under {short(first.key_id)}",
                  discard=discard, extra=extra)


def _outcome(step: Step, steps: tuple[PlannedStep, ...], finding: Finding, delay: float, deleting: bool,
             desired: KmsConfig | None) -> Decision:
    return Decision(step, steps, finding.reason, finding.message, finding.fix, delay,
                    "Blocked" if step is Step.BLOCKED else ("Deleting" if deleting else "Pending"), (), False, desired)


def key_switch_unproven(reason: str, message: str, spec: PolicySpec, cluster: ClusterState | None,
                        retry: float) -> Decision:
    """Blocked after the key-switch probes gave no proof (design.md 2.4), with the fix that fits.

    When AKS ended its operation ``Failed`` after recording the new key in the model, some API server
    replicas may never have been rolled onto it: the probes cannot agree, and probing again changes nothing.
    The remedy is AKS's own reconcile (``az aks update`` without arguments re-runs the operation with the
    same key, so no third key enters the slots); the operator does not send it itself, because invariant 2
    allows one ARM write per plan step and the failure's cause (quota, policy, a broken vault) needs a human.
    """
    if cluster is not None and cluster.provisioning_state == "Failed":
        return Decision(Step.BLOCKED, (), reason,
                        f"{message}; AKS ended its operation in Failed after recording the key, so API servers it "
                        "did not roll may still write with the old key",
                        f"read the error in the cluster's activity log and fix its cause, then run az aks update -g "
                        f"{spec.cluster.resource_group} -n {spec.cluster.name} (no arguments: AKS re-runs the roll "
                        "with the same key); the operator probes again", retry, "WaitingForKeySwitch")
    return Decision(Step.BLOCKED, (), reason, message,
                    "check the API server's KMS plugin health (kubectl get --raw /readyz?verbose); "
                    "the operator probes again", retry, "WaitingForKeySwitch")


def describe(decision: Decision) -> str:
    """One line for status.message: what happens now, the rest of the plan, and the fix if stalled."""
    text = decision.message
    rest = [str(s) for s in decision.steps]
    if decision.next_step not in (Step.READY,) and rest:
        text += f"; plan: {' → '.join(rest)}"
    if decision.fix:
        text += f". Fix: {decision.fix}"
    return text


def plan_status(previous: PlanStatus, decision: Decision, generation: int) -> PlanStatus:
    """status.plan: the whole plan for this generation and the index of the step in progress.

    The planner only knows what remains; when that is a tail of the plan stored for the same
    generation, the stored plan is kept and ``current`` advances, otherwise the plan starts anew.
    """
    remaining = tuple(str(s) for s in decision.steps)
    target = ""
    if decision.desired is not None and decision.desired.enabled:
        target = decision.desired.key_id
    same_generation = previous.generation == generation and previous.steps
    if same_generation and len(remaining) <= len(previous.steps) and (
        not remaining or previous.steps[len(previous.steps) - len(remaining):] == remaining
    ):
        return PlanStatus(previous.steps, len(previous.steps) - len(remaining), target, generation)
    return PlanStatus(remaining, 0, target, generation)


# ---------------------------------------------------------------------------------- the ledger


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_record(key_id: str, state: KeyState | None = None) -> KeyRecord:
    """A ledger entry for a key version, with Key Vault's attributes when known."""
    if not key_id or key_id == IDENTITY:
        return KeyRecord()
    expires = _iso(state.expires_on) if state and state.expires_on else ""
    return KeyRecord(key_id=key_id, name=short(key_id), enabled=state.enabled if state else True,
                     expires_on=expires)


def _record(key_id: str, known: Iterable[KeyRecord]) -> KeyRecord:
    for r in known:
        if r.key_id and _same(r.key_id, key_id):
            return dataclasses.replace(r, retired_at="")
    return key_record(key_id)


def _retire(retirable: Sequence[KeyRecord], dropped: Iterable[KeyRecord], keep: Sequence[str],
            at: dt.datetime) -> tuple[KeyRecord, ...]:
    """Add dropped keys to the retirable list; keys AKS holds again (``keep``) leave it."""
    out = [r for r in retirable if not any(_same(r.key_id, k) for k in keep)]
    for r in dropped:
        if not r.key_id or any(_same(r.key_id, k) for k in keep) or any(_same(r.key_id, o.key_id) for o in out):
            continue
        out.append(dataclasses.replace(r, retired_at=_iso(at)))
    return tuple(out[-MAX_RETIRABLE:])


def ledger_after_write(ledger: KeyLedger, *, written: str, before: str, at: dt.datetime) -> KeyLedger:
    """The ledger once an AKS write took effect (the key switch to ``written`` is proven).

    AKS's slots after a write (reference 8; ``aks_kms_lab.encryption.KeySlots`` plays the same):

    * current: the key written, or empty when the write disabled KMS (identity needs no key);
    * previous: the key AKS wrote with before (``before``). When KMS was disabled, AKS still
      reads with the key it was disabled from, and it stays loaded as previous: the ledger keeps
      its previous entry. The previous key must stay enabled and unexpired.
    * Every other key in the ledger (normally the old previous) leaves AKS's slots and becomes
      retirable at once: the planner allows a write only when every Secret is under ``before``,
      so nothing is encrypted under it (invariant 7).

    Rotate A→B: current B, previous A. Rotate B→C (only after the B rewrite): current C,
    previous B, A retirable. Disable from B (previous A): current empty, previous B, A retirable.
    Enable C after that: current C, previous B (AKS still loads it).

    Applied when the switch is proven rather than when ARM accepts the PUT: until then old API
    server replicas still hold the old previous key, and a write that never takes effect (canceled)
    leaves the ledger untouched.
    """
    known = (ledger.current, ledger.previous, *ledger.retirable)
    current = _record(written, known) if written != IDENTITY else KeyRecord()
    # From disabled, AKS keeps reading with the key it was disabled from (ledger.previous).
    previous = _record(before, known) if before and before != IDENTITY else ledger.previous
    if previous.key_id and _same(previous.key_id, written):
        previous = KeyRecord()
    keep = [k for k in (current.key_id, previous.key_id) if k]
    return KeyLedger(current, previous, _retire(ledger.retirable, (ledger.current, ledger.previous), keep, at))


def ledger_after_rewrite(ledger: KeyLedger, *, completed: str, at: dt.datetime) -> KeyLedger:
    """The ledger once every Secret is confirmed written under ``completed``.

    Nothing retires here. The previous key now holds no Secret, but AKS keeps it loaded in its
    previous slot until the next write moves it out (the two-key rule; after a disable the old
    key stays loaded for reads), and invariant 7 needs both conditions. Retiring it here would
    invite deleting a key an API server still loads.

    If the ledger's current key is not ``completed`` (the operator adopted the cluster, or
    someone changed AKS outside the operator), the slots are first brought in line with
    ``ledger_after_write``, the ledger's current as ``before``. After a completed rewrite no
    Secret is under any other key, so whatever that retires is safe.
    """
    current = ledger.current.key_id or IDENTITY
    if _same(current, completed):
        return ledger
    return ledger_after_write(ledger, written=completed, before=current, at=at)


def refresh_ledger(ledger: KeyLedger, states: Iterable[KeyState]) -> KeyLedger:
    """Copy Key Vault's enabled flag and expiry into the ledger entries (for status and warnings)."""
    by_key = list(states)

    def fresh(r: KeyRecord) -> KeyRecord:
        for s in by_key:
            if r.key_id and _same(r.key_id, s.key_id):
                rec = key_record(r.key_id, s)
                return dataclasses.replace(r, enabled=rec.enabled, expires_on=rec.expires_on)
        return r

    return KeyLedger(fresh(ledger.current), fresh(ledger.previous), tuple(fresh(r) for r in ledger.retirable))


# ------------------------------------------------------------------ status after each step


def operation_for(step: PlannedStep, *, started_at: dt.datetime, canary_resource_version: str = "",
                  canary_uid: str = "") -> OperationStatus:
    """status.operation to store before the write of ``step`` is sent (kept until the planner drops it)."""
    if not step.writes:
        raise ValueError(f"{step} is not an ARM write")
    return OperationStatus(step=step.step.value, target_key_id="" if step.key_id == IDENTITY else step.key_id,
                           started_at=_iso(started_at), canary_resource_version=canary_resource_version,
                           canary_uid=canary_uid)


def operation_with_new_canary(op: OperationStatus, *, resource_version: str, uid: str) -> OperationStatus:
    """The operation once its canary was deleted or replaced and re-created after the write.

    The new canary has no "before": its baseline is only where the proof's window starts, and
    ``canaryRecreated`` tells the next WaitForKeySwitch (also after a restart) not to wait for a change.
    """
    return dataclasses.replace(op, canary_resource_version=resource_version, canary_uid=uid, canary_recreated=True)


def status_after_write(status: PolicyStatus, step: PlannedStep, *, at: dt.datetime,
                       canary_resource_version: str = "", canary_uid: str = "") -> PolicyStatus:
    """Status once ARM accepted the write of ``step``: the operation in flight.

    The slots shift only when the switch is proven (``status_after_key_switch``), but a key that
    AKS is about to load again leaves the retirable list now: from this moment it may be loaded.
    """
    keep = [step.key_id] if step.key_id != IDENTITY else []
    keys = dataclasses.replace(status.keys, retirable=_retire(status.keys.retirable, (), keep, at))
    managed = status.managed
    if step.step is Step.MIGRATE:  # AKS still reads the legacy key while it re-encrypts: keep it recorded
        managed = dataclasses.replace(managed, migrated_from=step.replaces, migrated_at=_iso(at))
    return dataclasses.replace(status, keys=keys, managed=managed, operation=operation_for(
        step, started_at=at, canary_resource_version=canary_resource_version, canary_uid=canary_uid))


def status_after_key_switch(status: PolicyStatus, step: PlannedStep, *, at: dt.datetime) -> PolicyStatus:
    """Status once WaitForKeySwitch proved every API server writes with ``step.key_id``.

    Clears the operation, shifts the ledger when the switch follows our write, and opens the
    rewrite toward the key: its ``targetKeyId`` is the proof the planner reads (invariant 3).
    ``before`` is ``encryptedWith`` because the planner allowed the write only when it equalled
    the key AKS wrote with.
    """
    keys = status.keys
    ours = bool(status.operation.step)
    if ours:
        keys = ledger_after_write(keys, written=step.key_id, before=status.encrypted_with, at=at)
    return dataclasses.replace(status, operation=OperationStatus(), keys=keys,
                               rewrite=RewriteStatus(target_key_id=step.key_id, started_at=_iso(at),
                                                     follows_write=ours),
                               verification=VerificationStatus(requested_at=status.verification.requested_at))


def status_after_rewrite(status: PolicyStatus, *, at: dt.datetime) -> PolicyStatus:
    """Status once the rewrite toward ``status.rewrite.targetKeyId`` finished every namespace.

    Nothing is proven yet (invariant 10): ``encryptedWith`` stays; verification starts from pass 1.
    """
    target = status.rewrite.target_key_id
    if not target:
        raise ValueError("no rewrite target recorded")
    return dataclasses.replace(
        status,
        rewrite=dataclasses.replace(status.rewrite, completed_at=status.rewrite.completed_at or _iso(at)),
        verification=VerificationStatus(target_key_id=target),
    )


def rewrite_retry(status: PolicyStatus, *, at: dt.datetime) -> PolicyStatus:
    """Status after a rewrite that failed some Secrets: the next attempt is a new run toward the same key.

    Everything that belongs to the run (checkpoint, counters, failures) starts over, so a retry
    can succeed; the target key (the proof of the switch) and ``followsWrite`` are kept.
    """
    rw = status.rewrite
    return dataclasses.replace(status, rewrite=RewriteStatus(target_key_id=rw.target_key_id, started_at=_iso(at),
                                                             follows_write=rw.follows_write))


def status_after_verify_pass(status: PolicyStatus, key: str, *, reencrypted: int, failed: int, at: dt.datetime,
                             retry_after: dt.timedelta, retried: int = 0, requested_at: str = "") -> PolicyStatus:
    """Status once verification pass ``passes + 1`` toward ``key`` walked every namespace.

    Zero re-encrypted, zero failed and zero retried (5xx, dropped connections: what a replica that
    cannot read the new key answers): every Secret is proven under ``key``; ``encryptedWith`` moves
    and the ledger follows. Anything else: a replica was behind (or a write was refused); record
    it, and the next pass waits ``retry_after``.
    """
    v = status.verification
    if not _same(v.target_key_id, key):
        v = VerificationStatus(target_key_id=key, requested_at=v.requested_at)
    passes = v.passes + 1
    if reencrypted == 0 and failed == 0 and retried == 0:
        done = dataclasses.replace(v, passes=passes, pass_number=passes, last_pass_reencrypted=0,
                                   last_pass_failed=0, next_pass_at="", verified_at=_iso(at),
                                   requested_at=requested_at or v.requested_at)
        if managed_key(key):
            # Managed experience: AKS owns the key slots; the legacy ledger stays as it was.
            return dataclasses.replace(status, encrypted_with=key, verification=done)
        return dataclasses.replace(status, encrypted_with=key, verification=done,
                                   keys=ledger_after_rewrite(status.keys, completed=key, at=at))
    dirty = dataclasses.replace(v, passes=passes, pass_number=passes, last_pass_reencrypted=reencrypted,
                                last_pass_failed=failed, next_pass_at=_iso(at + retry_after), verified_at="")
    return dataclasses.replace(status, verification=dirty)
