"""One reconcile of one ClusterEncryptionPolicy: observe, plan, act, report.

Level-based (design.md 2.2): every call reads the policy, AKS and Key Vault afresh, asks the pure
planner (``planning.plan_next_step``) for the next step, performs exactly that step and writes the
result to status. The kopf daemon in ``handlers`` calls ``reconcile`` in a loop and sleeps for the
returned delay (or until the policy changes).

All decisions live in ``planning`` and ``preflight``; this module only gathers facts and carries
out what they decide. The one judgement made here is ownership: when several policies name the
same cluster, the oldest owns it and the others stall with ``Conflict`` without touching anything;
deleting a non-owner touches nothing either, whatever its deletionPolicy.

Status ownership: ``status.operation`` (the record of an ARM write, design.md invariant 11),
``status.rewrite`` and ``status.verification`` are written only when the step just performed changed
them. Every error path reports the status as it was read, and a merge patch of that would put back
what was read before the step, erasing, for example, the record of a write that was sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import metrics, planning
from . import status as st
from .api import v1alpha1 as api
from .api.schema import dump, parse
from .azure import AzureGateways
from .azure.errors import (
    AzureConflict,
    AzureGatewayError,
    AzureNotFound,
    AzureRejected,
    AzureThrottled,
)
from .azure.interfaces import ClusterId, ClusterSnapshot
from .kube import MERGE_PATCH, KubeClient, KubeError
from .model import IDENTITY, KeyRef, KeyState, PreflightFacts, same_key
from .planning import Decision, PlannedStep, Step
from .preflight import Finding, run_preflight
from .rewrite import (
    CANARY_GONE,
    CANARY_REPLACED,
    KEY_SWITCH_WINDOW,
    Canary,
    PolicyStatusStore,
    RewriteEngine,
    RewriteOptions,
    VerificationStore,
    count_secrets,
    ensure_canary,
    fresh_client,
    wait_for_key_switch,
)

log = logging.getLogger(__name__)
POLICIES = f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
EventSink = Callable[[dict[str, Any], str, str, str], None]  # body, type, reason, message


@dataclass(frozen=True)
class ReconcilerSettings:
    """Timings; defaults suit AKS, the lab shortens them through the environment."""

    namespace: str = "aks-kms-system"  # where the canary Secret lives (the operator's namespace)
    busy_poll: float = 30.0  # seconds between looks at a cluster that is Updating
    key_switch_probes: int = 3  # agreeing canary probes needed within the window, at least
    # Seconds between canary probes. Each probe is a new connection, which Azure's load balancer sends to a
    # replica by a hash: in a 90 s window, 30 probes all miss one of three replicas with chance (2/3)^30,
    # about 5e-6 (at 10 s it would be (2/3)^9, 2.6 %). Probes are one tiny no-op write each.
    key_switch_interval: float = 3.0
    # Every probe must agree for this long; more than the API server's 60 s KMS status poll per replica.
    key_switch_window: float = KEY_SWITCH_WINDOW
    key_switch_timeout: float = 900.0
    verify_retry: float = KEY_SWITCH_WINDOW  # pause before another verification pass after a dirty one
    error_retry: float = 30.0

    @classmethod
    def from_env(cls) -> ReconcilerSettings:
        env = os.environ

        def num(name: str, default: float) -> float:
            return float(env.get(name) or default)

        return cls(
            namespace=env.get("AKS_KMS_NAMESPACE") or env.get("POD_NAMESPACE") or cls.namespace,
            busy_poll=num("AKS_KMS_BUSY_POLL_SECONDS", cls.busy_poll),
            key_switch_probes=int(num("AKS_KMS_KEY_SWITCH_PROBES", cls.key_switch_probes)),
            key_switch_interval=num("AKS_KMS_KEY_SWITCH_INTERVAL_SECONDS", cls.key_switch_interval),
            key_switch_window=num("AKS_KMS_KEY_SWITCH_WINDOW_SECONDS", cls.key_switch_window),
            key_switch_timeout=num("AKS_KMS_KEY_SWITCH_TIMEOUT_SECONDS", cls.key_switch_timeout),
            verify_retry=num("AKS_KMS_VERIFY_RETRY_SECONDS", cls.verify_retry),
            error_retry=num("AKS_KMS_ERROR_RETRY_SECONDS", cls.error_retry),
        )


@dataclass
class Observation:
    """Everything read in one reconcile."""

    body: dict[str, Any]
    spec: api.PolicySpec
    status: api.PolicyStatus
    generation: int
    snapshot: ClusterSnapshot | None = None
    key_versions: tuple[KeyState, ...] = ()

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cluster_id(spec: api.PolicySpec) -> ClusterId:
    c = spec.cluster
    return ClusterId(c.subscription_id, c.resource_group, c.name)


def owner_of_cluster(policies: list[dict[str, Any]], cluster: ClusterId) -> list[str]:
    """Names of the policies that name ``cluster``, oldest first: the first owns it."""
    key = str(cluster).lower()
    named = [p for p in policies if str(cluster_id(parse(api.PolicySpec, p.get("spec")))).lower() == key]
    named.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
    return [p["metadata"]["name"] for p in named]


class Reconciler:
    """Carries out planner decisions for policies; one instance per operator process."""

    def __init__(self, kube: KubeClient, azure: AzureGateways, settings: ReconcilerSettings,
                 events: EventSink | None = None) -> None:
        self.kube = kube
        self.azure = azure
        self.settings = settings
        self.events = events or (lambda body, type_, reason, message: None)

    # ------------------------------------------------------------------ entry point

    async def reconcile(self, name: str, *, deleting: bool = False) -> Decision | None:
        """One reconcile; returns the decision acted on (None when the policy is gone).

        Timed for ``aks_kms_reconcile_duration_seconds``; an exception, handled here or not, counts in
        ``aks_kms_reconcile_errors_total`` by its class name (a bounded set)."""
        t0 = time.monotonic()
        try:
            decision, error = await self._reconcile(name, deleting)
        except Exception as err:
            metrics.record_reconcile("Error", time.monotonic() - t0, type(err).__name__)
            raise
        if decision is None:
            metrics.forget_policy(name)
        else:
            metrics.record_reconcile(decision.next_step.value, time.monotonic() - t0, error)
        return decision

    async def _reconcile(self, name: str, deleting: bool) -> tuple[Decision | None, str | None]:
        try:
            body = await self.kube.request("GET", f"{POLICIES}/{name}")
        except KubeError as err:
            if err.status == 404:
                return None, None
            raise
        obs = Observation(body, parse(api.PolicySpec, body.get("spec")), parse(api.PolicyStatus, body.get("status")),
                          int(body["metadata"].get("generation") or 0))
        conflict = await self._conflict(obs)
        if deleting and (conflict is not None or _was_conflict(obs.status)):
            # Not the owner (now, or when it was last reconciled): its deletion must touch nothing, and it
            # must never become the owner later (once the owner is gone) and act on its deletionPolicy.
            return Decision(Step.READY, (), "NotOwner",
                            "this policy does not manage the cluster; deleting it changes nothing in Azure",
                            phase="Deleting"), None
        if conflict is not None:
            await self._report(obs, conflict, obs.status)
            return conflict, None
        error: str | None = None
        reported: Decision | None = None  # what the status says, when it differs from the step acted on
        try:
            decision = await self._plan(obs, deleting)
            if decision.next_step is Step.CHECK:
                findings = await self._preflight(obs, decision)
                decision = await self._plan(obs, deleting, findings)
            status = await self._act(obs, decision)
            reported = await self._replan_after(obs, decision, status, deleting)
        except (AzureThrottled, AzureConflict) as err:
            error = type(err).__name__
            decision = self._transient(obs, err, getattr(err, "retry_after", None))
            status = obs.status
        except AzureNotFound as err:
            error = type(err).__name__
            decision = Decision(Step.BLOCKED, (), "ClusterNotFound", str(err),
                                "check spec.cluster (subscriptionId, resourceGroup, name) against az aks list",
                                self.settings.error_retry, "Blocked")
            status = obs.status
        except AzureRejected as err:
            error = type(err).__name__
            decision = Decision(Step.BLOCKED, (), err.code or "AzureRejected", str(err),
                                "read the error, fix its cause in Azure, then the operator retries",
                                self.settings.error_retry, "Blocked")
            status = obs.status
        except AzureGatewayError as err:
            error = type(err).__name__
            decision = self._transient(obs, err, None)
            status = obs.status
        except KeySwitchNotProven as err:
            error = type(err).__name__
            decision = planning.key_switch_unproven(err.reason, str(err), obs.spec,
                                                    obs.snapshot.state if obs.snapshot else None,
                                                    self.settings.error_retry)
            status = obs.status
        except RewriteIncomplete as err:
            error = type(err).__name__
            failures = ", ".join(err.failures[:3])
            decision = Decision(Step.BLOCKED, (), "RewriteFailed",
                                f"{err.failed} Secret(s) could not be re-encrypted ({failures})",
                                "fix what refuses the writes (admission webhook, permissions), then the operator "
                                "walks every namespace again", self.settings.error_retry, "Failed")
            status = err.status
        await self._report(obs, reported or decision, status)
        return decision, error

    def _transient(self, obs: Observation, err: Exception, retry_after: float | None) -> Decision:
        delay = retry_after if retry_after is not None else self.settings.error_retry
        return Decision(Step.WAIT, (), type(err).__name__, f"Azure: {err}; retrying in {delay:.0f}s",
                        delay=delay, phase=obs.status.phase or "Pending")

    # ------------------------------------------------------------------ observe and plan

    async def _conflict(self, obs: Observation) -> Decision | None:
        listing = await self.kube.request("GET", POLICIES)
        owners = owner_of_cluster(list(listing.get("items") or []), cluster_id(obs.spec))
        if not owners or owners[0] == obs.name:
            return None
        return Decision(Step.BLOCKED, (), "Conflict",
                        f"ClusterEncryptionPolicy {owners[0]} already manages cluster {obs.spec.cluster.name}; "
                        "this policy does nothing",
                        f"kubectl delete clusterencryptionpolicy {obs.name} (keep exactly one per cluster)",
                        planning.check_interval_seconds(obs.spec), "Blocked")

    async def _plan(self, obs: Observation, deleting: bool, findings: list[Finding] | None = None) -> Decision:
        if obs.snapshot is None:
            obs.snapshot = await asyncio.to_thread(self.azure.clusters.get, cluster_id(obs.spec))
            if obs.spec.rotation.follow_latest_version and obs.spec.kms.enabled:
                obs.key_versions = await asyncio.to_thread(self.azure.keys.list_versions, obs.spec.kms.key_id)
        decision = planning.plan_next_step(obs.spec, obs.snapshot.state, obs.status, key_versions=obs.key_versions,
                                           findings=findings, now=_now(), deleting=deleting)
        if decision.next_step is Step.WAIT and decision.reason in ("ClusterUpdating", "ClusterBusy"):
            decision = dataclasses.replace(decision, delay=min(decision.delay or 0, self.settings.busy_poll))
        return decision

    async def _replan_after(self, obs: Observation, decision: Decision, status: api.PolicyStatus,
                            deleting: bool) -> Decision:
        """What to report after a step: for a rewrite or a verification pass, the plan made from the
        status the step produced. Both change nothing in Azure, so the cluster read before them still
        holds, and the plan made before them would report a finished pass as still running ("Ready
        False, Verifying") until the next reconcile. Any other step reports the plan it acted on: an
        Azure write changes what the cluster read said. The decision acted on still drives metrics and
        the next reconcile's timing."""
        if decision.next_step not in (Step.REWRITE, Step.VERIFY):
            return decision
        return await self._plan(dataclasses.replace(obs, status=status), deleting)

    async def _preflight(self, obs: Observation, decision: Decision) -> list[Finding]:
        write = decision.steps[1]
        facts = await asyncio.to_thread(self._gather_facts, obs, write)
        if facts.cluster.kubernetes_minor < (1, 27):
            facts = dataclasses.replace(facts, secret_count=await count_secrets(self.kube))
        return run_preflight(facts)

    def _gather_facts(self, obs: Observation, write: PlannedStep) -> PreflightFacts:
        """Blocking Azure reads for the checks guarding ``write`` (run in a worker thread)."""
        assert obs.snapshot is not None
        cluster = obs.snapshot.state
        spec = obs.spec
        azure = self.azure
        target = previous = None
        vault = identity = None
        grants: tuple = ()
        keyless = (IDENTITY, planning.PLATFORM_KEY)  # no Key Vault key behind these
        if write.key_id and write.key_id not in keyless:
            target = azure.keys.key_state(write.key_id)
        if write.replaces and write.replaces not in keyless:
            previous = azure.keys.key_state(write.replaces)
        key_for_vault = write.key_id if write.key_id not in keyless else write.replaces
        vault_id = write.vault_resource_id
        if not vault_id and key_for_vault and key_for_vault not in keyless:
            vault_id = azure.arm.find_vault(spec.cluster.subscription_id, KeyRef.parse(key_for_vault).vault_name) or ""
        if vault_id:
            vault = azure.arm.vault(vault_id)
        if cluster.user_assigned_identity_ids:
            identity = azure.arm.identity(cluster.user_assigned_identity_ids[0])
            if vault_id:
                grants = azure.arm.role_grants(identity.principal_id, vault_id)
        return PreflightFacts(
            cluster=cluster, target_key=target, previous_key=previous, vault=vault, identity=identity,
            grants=grants, subscription_tenant_id=identity.tenant_id if identity else "",
            network_access=write.network_access or "Public", now=_now(),
            expiry_warning=planning.parse_duration(spec.rotation.expiry_warning),
            cluster_resource_group=spec.cluster.resource_group, cluster_name=spec.cluster.name,
            managed=write.managed,
            api_version=azure.clusters.api_version(spec.cluster.subscription_id) if write.managed else "",
        )

    # ------------------------------------------------------------------ act

    async def _act(self, obs: Observation, decision: Decision) -> api.PolicyStatus:
        status = obs.status
        if decision.discard_operation:
            status = dataclasses.replace(status, operation=api.OperationStatus())
        step = decision.step
        if decision.writes and step is not None:
            return await self._write(obs, decision, step, status)
        if decision.next_step is Step.WAIT_FOR_KEY_SWITCH and step is not None:
            return await self._wait_for_switch(obs, step, status)
        if decision.next_step is Step.REWRITE and step is not None:
            return await self._rewrite(obs, step, status)
        if decision.next_step is Step.VERIFY and step is not None:
            return await self._verify(obs, step, status)
        return status

    async def _write(self, obs: Observation, decision: Decision, step: PlannedStep,
                     status: api.PolicyStatus) -> api.PolicyStatus:
        assert obs.snapshot is not None
        # The canary's resourceVersion (and uid) before the write is the baseline of the switch.
        canary = await ensure_canary(self.kube, self.settings.namespace)
        after = planning.status_after_write(status, step, at=_now(), canary_resource_version=canary.resource_version,
                                            canary_uid=canary.uid)
        # Record the write *before* sending it. AKS rolls the API server as part of the operation, so
        # a status write just after the PUT can fail; an accepted write must never go unrecorded, or
        # a restarted reconcile could not tell its own change from someone else's. A record whose
        # write never landed is harmless: the planner discards it once AKS is idle without it. So no
        # error after this point erases it, not even a refusal: a PUT whose response was lost and
        # whose retry was refused (412, 409, 400) may have been applied (invariant 11).
        await self._patch_status({"operation": dump(after.operation)}, obs.name)
        enabled = step.step is not Step.DISABLE and step.key_id != planning.PLATFORM_KEY
        extra: dict[str, Any] = {"managed": True} if step.managed else {}
        await asyncio.to_thread(
            self.azure.clusters.put_kms, obs.snapshot, enabled=enabled,
            key_id=step.key_id if enabled else "", network_access=step.network_access or "Public",
            vault_resource_id=step.vault_resource_id if enabled else "", **extra,
        )
        self.events(obs.body, "Normal", step.step.value,
                    f"AKS accepted {step} to {planning.short(step.key_id)}; waiting for it to finish")
        return after

    async def _wait_for_switch(self, obs: Observation, step: PlannedStep,
                               status: api.PolicyStatus) -> api.PolicyStatus:
        """Gather the evidence of the switch over fresh connections (design.md 2.4); raise if there is none.

        With a write of ours, the canary must change from the recorded baseline and then agree for a
        whole window. Without one (a new policy adopting the cluster, or a change made outside the
        operator) there is no before/after: the canary is written once and the window alone counts.
        A deleted or re-created canary is re-created, its new baseline recorded, and the proof starts
        over with a full window; the verification pass after the rewrite remains the proof.
        """
        s = self.settings
        op = status.operation
        metrics.init_key_switch(obs.name)
        async with fresh_client(self.kube) as probe:
            if op.step and op.canary_resource_version:
                baseline, require_change = Canary(op.canary_resource_version, op.canary_uid), not op.canary_recreated
            else:
                baseline, require_change = await ensure_canary(probe, s.namespace), False
            for _ in range(3):
                result = await wait_for_key_switch(
                    probe, s.namespace, baseline, require_change=require_change, window=s.key_switch_window,
                    interval=s.key_switch_interval, min_probes=s.key_switch_probes, timeout=s.key_switch_timeout)
                metrics.record_key_switch(obs.name, reason=result.reason, probes=result.probes,
                                          seconds=result.elapsed_seconds)
                if result.reason not in (CANARY_GONE, CANARY_REPLACED):
                    break
                baseline, require_change = await ensure_canary(probe, s.namespace), False
                if op.step:
                    op = planning.operation_with_new_canary(op, resource_version=baseline.resource_version,
                                                            uid=baseline.uid)
                    status = dataclasses.replace(status, operation=op)
                    await self._patch_status({"operation": dump(op)}, obs.name)
                self.events(obs.body, "Warning", CANARY_REPLACED,
                            f"{result.message}; re-created it: the key-switch proof starts over with a full "
                            f"{s.key_switch_window:g}s window, and the verification pass remains the proof")
        if not result.switched:
            raise KeySwitchNotProven(result.reason, result.message)
        self.events(obs.body, "Normal", "KeySwitched", f"{planning.short(step.key_id)}: {result.message}")
        return planning.status_after_key_switch(status, step, at=_now())

    async def _paused_check(self, obs: Observation) -> Any:
        generation = obs.generation

        async def paused() -> bool:
            current = await self.kube.request("GET", f"{POLICIES}/{obs.name}")
            spec = parse(api.PolicySpec, current.get("spec"))
            return spec.rewrite.paused or int(current["metadata"].get("generation") or 0) != generation

        return paused

    async def _rewrite(self, obs: Observation, step: PlannedStep, status: api.PolicyStatus) -> api.PolicyStatus:
        # Show the phase before a long run; the engine then checkpoints status.rewrite itself.
        await self._patch_status({"phase": "Rewriting",
                                  "message": f"re-encrypting Secrets for {planning.short(step.key_id)}"}, obs.name)
        engine = RewriteEngine(self.kube, step.key_id, options=RewriteOptions.from_spec(obs.spec.rewrite),
                               checkpoint=metrics.MeteredCheckpoints(PolicyStatusStore(self.kube, obs.name), obs.name,
                                                                     "rewrite"),
                               paused=await self._paused_check(obs))
        result = await _metered_run(engine, obs.name, "rewrite")
        fresh = await self.kube.request("GET", f"{POLICIES}/{obs.name}")
        status = dataclasses.replace(status, rewrite=parse(api.RewriteStatus,
                                                          (fresh.get("status") or {}).get("rewrite")))
        c = result.counters
        if not result.completed:
            return status
        if c.failed:
            # Some Secret may still be under the old key: never claim it is encrypted. The next attempt
            # is a new run (checkpoint and counters reset) that walks every namespace again; current
            # Secrets cost no etcd write.
            self.events(obs.body, "Warning", "RewriteFailed",
                        f"{c.failed} Secret(s) could not be rewritten: {', '.join(c.failures[:5])}")
            raise RewriteIncomplete(c.failed, tuple(c.failures), planning.rewrite_retry(status, at=_now()))
        text = (f"{c.seen} Secrets written for {planning.short(step.key_id)}: {c.reencrypted} re-encrypted, "
                f"{c.already_current} unchanged, {c.skipped} skipped, in {result.elapsed_seconds:.1f}s; "
                "a verification pass follows")
        share = c.already_current / c.seen if c.seen else 0.0
        if (status.rewrite.follows_write and c.seen >= planning.ALREADY_CURRENT_WARN_MIN
                and share > planning.ALREADY_CURRENT_WARN_SHARE):
            self.events(obs.body, "Warning", "AlreadyCurrentAfterSwitch",
                        f"{text}. {share:.0%} unchanged right after the switch: an API server replica that had "
                        "not reloaded most likely answered for them")
        else:
            self.events(obs.body, "Normal", "RewriteCompleted", text)
        return planning.status_after_rewrite(status, at=_now())

    async def _verify(self, obs: Observation, step: PlannedStep, status: api.PolicyStatus) -> api.PolicyStatus:
        """One verification pass (design.md invariant 10): a no-op write to every Secret over fresh
        connections, so the load balancer spreads them over every API server replica. Resumable like
        the rewrite (checkpoint in ``status.verification``)."""
        key = step.key_id
        if not same_key(status.verification.target_key_id, key):
            status = dataclasses.replace(status, verification=api.VerificationStatus(
                target_key_id=key, requested_at=status.verification.requested_at))
            await self._patch_status({"verification": dump(status.verification)}, obs.name)
        number = status.verification.passes + 1
        await self._patch_status({"phase": "Verifying",
                                  "message": f"verification pass {number} for {planning.short(key)}"}, obs.name)
        async with fresh_client(self.kube) as fresh:
            engine = RewriteEngine(fresh, key, options=RewriteOptions.from_spec(obs.spec.rewrite),
                                   checkpoint=metrics.MeteredCheckpoints(VerificationStore(self.kube, obs.name, number),
                                                                         obs.name, "verification"),
                                   paused=await self._paused_check(obs), label=f"verification pass {number}")
            result = await _metered_run(engine, obs.name, "verification")
        stored = await self.kube.request("GET", f"{POLICIES}/{obs.name}")
        status = dataclasses.replace(status, verification=parse(
            api.VerificationStatus, (stored.get("status") or {}).get("verification")))
        if not result.completed:
            return status
        c = result.counters
        wait = dt.timedelta(seconds=self.settings.verify_retry)
        status = planning.status_after_verify_pass(status, key, reencrypted=c.reencrypted, failed=c.failed,
                                                   retried=c.retried, at=_now(), retry_after=wait,
                                                   requested_at=obs.spec.verify.requested_at)
        v = status.verification
        took = f"{c.seen} Secrets in {result.elapsed_seconds:.1f}s"
        if same_key(status.encrypted_with, key):
            self.events(obs.body, "Normal", "SecretsEncrypted",
                        f"verification pass {number}: {took}, none re-encrypted: every Secret is written under "
                        f"{planning.short(key)}")
        elif c.reencrypted or (c.retried and not c.failed):
            self.events(obs.body, "Warning", "ReplicaBehind",
                        f"verification pass {number}: {took}, {c.reencrypted} re-encrypted, {c.retried} write(s) "
                        "retried after a 5xx or a dropped connection: an API server replica was still on an older "
                        f"key; passing again at {v.next_pass_at}")
        else:
            self.events(obs.body, "Warning", "VerifyFailed",
                        f"verification pass {number}: {took}, {c.failed} could not be written "
                        f"({', '.join(c.failures[:3])}); passing again at {v.next_pass_at}")
        return status

    # ------------------------------------------------------------------ report

    async def _report(self, obs: Observation, decision: Decision, status: api.PolicyStatus) -> None:
        gen = obs.generation
        state = obs.snapshot.state if obs.snapshot else None
        keys = status.keys
        key_states: list[KeyState] = []
        if state is not None:
            key_states = await self._key_states(keys, state)
            keys = planning.refresh_ledger(keys, key_states)
            if state.managed:  # before the conditions: KeyHealthy reads the versions AKS uses
                status = dataclasses.replace(status, managed=await self._managed_key_status(obs, status, state))
                key_states += await self._versions_states(status.managed)
            if state.kms_enabled and not state.managed and not keys.current.key_id:
                keys = dataclasses.replace(keys, current=planning.key_record(state.key_id))
        conds = [dict(c) for c in dump(status).get("conditions") or []]
        stalled = decision.next_step is Step.BLOCKED
        conds = st.set_condition(conds, st.STALLED, stalled, decision.reason if stalled else "NotStalled",
                                 decision.message if stalled else "", generation=gen)
        busy = decision.next_step not in (Step.READY, Step.BLOCKED)
        conds = st.set_condition(conds, st.RECONCILING, busy, decision.reason if busy else "Idle",
                                 decision.message if busy else "", generation=gen)
        if state is not None:
            conds = self._domain_conditions(conds, decision, status, state, key_states, gen,
                                            planning.parse_duration(obs.spec.rotation.expiry_warning))
        conds = st.summarize(conds, generation=gen)
        status = dataclasses.replace(
            status,
            observed_generation=gen,
            phase=decision.phase,
            message=planning.describe(decision)[:4000],
            keys=keys,
            plan=planning.plan_status(status.plan, decision, gen),
            warnings=tuple(f.summary()[:500] for f in decision.warnings)[:16],
            last_handled_reconcile_at=(obs.body["metadata"].get("annotations") or {}).get(REQUESTED_AT, "")
            or status.last_handled_reconcile_at,
        )
        if state is not None:
            status = dataclasses.replace(status, cluster=api.ObservedCluster(
                kms_enabled=state.kms_enabled, key_id=state.key_id, key_vault_network_access=state.network_access,
                key_vault_resource_id=state.vault_resource_id, provisioning_state=state.provisioning_state,
                kubernetes_version=state.kubernetes_version, identity_type=state.identity_type,
                experience=state.experience, key_management=state.key_management,
                observed_at=st.now_iso()))
        out = dump(status)
        out["conditions"] = conds
        # Written only when the step just performed changed them: the engine's checkpoint owns rewrite
        # and verification while it runs, and operation is erased by nothing but the planner (an error
        # path reports the status read before the step, which may predate the record of a sent write).
        for name, before, after in (("rewrite", obs.status.rewrite, status.rewrite),
                                    ("verification", obs.status.verification, status.verification),
                                    ("operation", obs.status.operation, status.operation)):
            out.pop(name, None)
            if after != before:
                out[name] = dump(after)
        await self._patch_status(out, obs.name)
        before_conds = dump(obs.status).get("conditions") or []
        before = st.condition(before_conds, st.STALLED) or {}
        if stalled and (before.get("status") != "True" or before.get("reason") != decision.reason):
            self.events(obs.body, "Warning", decision.reason, planning.describe(decision))
        health = st.condition(conds, st.KEY_HEALTHY) or {}
        if (health.get("reason") == PREVIOUS_KEY_EXPIRES_SOON
                and (st.condition(before_conds, st.KEY_HEALTHY) or {}).get("reason") != PREVIOUS_KEY_EXPIRES_SOON):
            self.events(obs.body, "Warning", PREVIOUS_KEY_EXPIRES_SOON, str(health.get("message") or ""))
        self._publish(obs, status, conds, state, key_states)

    async def _versions_states(self, managed: api.ManagedKeyStatus) -> list[KeyState]:
        out: list[KeyState] = []
        for key_id in (managed.key_version, managed.previous_key_version):
            if key_id and key_id != planning.PLATFORM_KEY:
                try:
                    out.append(await asyncio.to_thread(self.azure.keys.key_state, key_id))
                except AzureGatewayError as err:
                    log.warning("could not read key %s: %s", planning.short(key_id), err)
        return out

    async def _managed_key_status(self, obs: Observation, status: api.PolicyStatus, state: Any) -> api.ManagedKeyStatus:
        """Day 2 on the Managed experience: AKS reports nothing about its own rotation, so observe Key Vault:
        the newest usable version of the customer-managed key is the one AKS picks up; record since when,
        keep the one before (it must stay enabled until AKS re-encrypted), and post an Event on a change."""
        managed = status.managed
        if not state.kms_enabled:
            return dataclasses.replace(managed, key_version=planning.PLATFORM_KEY, previous_key_version="",
                                       expires_on="", key_version_since=managed.key_version_since or st.now_iso())
        try:
            newest = await asyncio.to_thread(self.azure.keys.newest_usable_version, state.key_id, _now())
        except AzureGatewayError as err:
            log.warning("could not list the versions of %s: %s", planning.short(state.key_id), err)
            return managed
        if newest is None or same_key(newest.key_id, managed.key_version):
            return managed
        expires = planning.key_record(newest.key_id, newest).expires_on
        if managed.key_version and managed.key_version != planning.PLATFORM_KEY:
            self.events(obs.body, "Normal", "KeyVersionChanged",
                        f"Key Vault has a new version {planning.short(newest.key_id)}: AKS picks it up (about every "
                        "6 hours) and re-encrypts the Secrets itself; keep "
                        f"{planning.short(managed.key_version)} enabled until then (spec.verify proves it)")
            return dataclasses.replace(managed, previous_key_version=managed.key_version, key_version=newest.key_id,
                                       key_version_since=st.now_iso(), expires_on=expires)
        return dataclasses.replace(managed, key_version=newest.key_id, key_version_since=st.now_iso(),
                                   expires_on=expires)

    def _publish(self, obs: Observation, status: api.PolicyStatus, conds: list[dict[str, Any]], state: Any,
                 key_states: list[KeyState]) -> None:
        """The reported status as metrics (``aks_kms_operator.metrics``): phase, Ready, both key slots,
        encryptedWith, and whether a newer key version waits to be followed."""
        ready = (st.condition(conds, st.READY) or {}).get("status") == "True"
        slots: dict[str, metrics.SlotFacts] | None = None
        newer: bool | None = None
        if state is not None:
            by_id = {k.key_id.lower(): k for k in key_states}
            keys = status.keys
            slots = {
                "current": metrics.SlotFacts(keys.current.key_id, by_id.get(keys.current.key_id.lower()),
                                             bool(keys.current.key_id)),
                "previous": metrics.SlotFacts(keys.previous.key_id, by_id.get(keys.previous.key_id.lower()),
                                              previous_key_protects_secrets(keys, status.encrypted_with, state)),
            }
            if obs.spec.rotation.follow_latest_version and obs.spec.kms.enabled and obs.key_versions:
                newest = planning.newest_version(obs.spec.kms.key_id, obs.key_versions, _now())
                newer = bool(newest and state.kms_enabled and not same_key(newest, state.key_id))
        metrics.record_policy(obs.name, phase=status.phase, ready=ready, slots=slots,
                              encrypted_with=status.encrypted_with, newer_version=newer)

    async def _key_states(self, keys: api.KeyLedger, state: Any) -> list[KeyState]:
        wanted = {k for k in (keys.current.key_id, keys.previous.key_id, state.key_id if state.kms_enabled else "")
                  if k and k != IDENTITY}
        out: list[KeyState] = []
        for key_id in sorted(wanted):
            try:
                out.append(await asyncio.to_thread(self.azure.keys.key_state, key_id))
            except AzureGatewayError as err:
                log.warning("could not read key %s: %s", planning.short(key_id), err)
        return out

    def _domain_conditions(self, conds: list[dict[str, Any]], decision: Decision, status: api.PolicyStatus,
                           state: Any, key_states: list[KeyState], gen: int,
                           expiry_warning: dt.timedelta) -> list[dict[str, Any]]:
        observed = planning.KmsConfig.of_cluster(state)
        desired = decision.desired
        in_sync = desired is not None and not state.busy and desired.enabled == observed.enabled and (
            not desired.enabled or (same_key(desired.key_id, observed.key_id) and desired.same_mode(observed)))
        conds = st.set_condition(conds, st.CLUSTER_IN_SYNC, in_sync, "InSync" if in_sync else "OutOfSync",
                                 f"AKS: KMS {'on' if state.kms_enabled else 'off'}"
                                 f"{', key ' + planning.short(state.key_id) if state.kms_enabled else ''}, "
                                 f"provisioningState {state.provisioning_state}", generation=gen)
        if state.managed:
            return self._managed_conditions(conds, status, state, key_states, gen, expiry_warning)
        healthy, reason, message = key_health(status.keys, key_states, state, _now(), expiry_warning,
                                              encrypted_with=status.encrypted_with)
        conds = st.set_condition(conds, st.KEY_HEALTHY, healthy, reason, message, generation=gen)
        encrypted = same_key(status.encrypted_with, observed.write_key)
        conds = st.set_condition(
            conds, st.SECRETS_ENCRYPTED, encrypted, "AllSecretsCurrent" if encrypted else "RewritePending",
            f"every Secret is written under {planning.short(status.encrypted_with)}" if encrypted
            else f"Secrets still need a rewrite toward {planning.short(observed.write_key)}", generation=gen)
        return conds

    @staticmethod
    def _managed_conditions(conds: list[dict[str, Any]], status: api.PolicyStatus, state: Any,
                            key_states: list[KeyState], gen: int, expiry_warning: dt.timedelta) -> list[dict[str, Any]]:
        """KeyHealthy and SecretsEncrypted on the Managed experience: the versions AKS uses (observed in
        Key Vault) must be usable; re-encryption is AKS's own, proven on demand by spec.verify."""
        m = status.managed
        if m.key_version == planning.PLATFORM_KEY or not m.key_version:
            healthy, reason, message = True, "PlatformManaged", "AKS owns and rotates the platform-managed key"
        else:
            # The version AKS writes with as "current", the one before as "previous" (still loaded by AKS).
            as_used = dataclasses.replace(state, key_id=m.key_version)
            ledger = api.KeyLedger(previous=api.KeyRecord(key_id=m.previous_key_version))
            healthy, reason, message = key_health(ledger, key_states, as_used, _now(), expiry_warning)
        conds = st.set_condition(conds, st.KEY_HEALTHY, healthy, reason, message, generation=gen)
        verified = planning.managed_key(status.encrypted_with)
        text = ("AKS re-encrypts Secrets itself on the Managed experience" +
                (f"; verification pass at {status.verification.verified_at} found none stale" if verified else
                 "; set spec.verify.requestedAt to prove it"))
        return st.set_condition(conds, st.SECRETS_ENCRYPTED, True, "ReEncryptedByAks", text, generation=gen)

    async def _patch_status(self, status: dict[str, Any], name: str) -> None:
        await self.kube.request("PATCH", f"{POLICIES}/{name}/status", body={"status": status},
                                content_type=MERGE_PATCH)


PREVIOUS_KEY_EXPIRES_SOON = "PreviousKeyExpiresSoon"


def previous_key_protects_secrets(keys: api.KeyLedger, encrypted_with: str, cluster: Any) -> bool:
    """Secrets may still be stored under AKS's previous key: no verification pass has yet proved every
    Secret is written under the key AKS writes with now (``status.encryptedWith``)."""
    if not keys.previous.key_id or keys.previous.key_id == IDENTITY:
        return False
    return not same_key(encrypted_with, planning.KmsConfig.of_cluster(cluster).write_key)


def key_health(keys: api.KeyLedger, states: list[KeyState], cluster: Any, now: dt.datetime,
               warning: dt.timedelta, *, encrypted_with: str | None = None) -> tuple[bool, str, str]:
    """KeyHealthy: every key AKS loads (current and previous) exists, is enabled and unexpired.

    A previous key that expires within ``warning`` while Secrets may still be stored under it
    (``encrypted_with`` is not yet the key AKS writes with) makes KeyHealthy False with
    ``PreviousKeyExpiresSoon``: once it expires, the API server can no longer read those Secrets, and
    nothing but a finished re-encryption (or a later expiry) prevents that. ``encrypted_with`` None:
    unknown, every expiring key is only a warning (``KeyExpiresSoon``)."""
    loaded = [k for k in (cluster.key_id if cluster.kms_enabled else "", keys.previous.key_id) if k]
    if not loaded:
        return True, "NoKeyInUse", "KMS is off and no key is loaded"
    by_id = {s.key_id.lower(): s for s in states}
    soon: list[str] = []
    protecting = encrypted_with is not None and previous_key_protects_secrets(keys, encrypted_with, cluster)
    previous_soon = ""
    for key_id in loaded:
        s = by_id.get(key_id.lower())
        label = planning.short(key_id)
        if s is None:
            return False, "KeyUnreadable", f"could not read {label} from Key Vault"
        if not s.exists:
            return False, "KeyNotFound", f"{label} no longer exists: AKS cannot decrypt Secrets under it. " \
                                        f"Fix: az keyvault key recover --id {key_id}"
        if not s.enabled:
            return False, "KeyDisabled", f"{label} is disabled: Secret reads and writes fail. " \
                                        f"Fix: az keyvault key set-attributes --enabled true --id {key_id}"
        if s.expired(now):
            return False, "KeyExpired", f"{label} expired at {s.expires_on:%Y-%m-%dT%H:%MZ}: Operation encrypt is " \
                                       "not allowed on an expired key. Fix: az keyvault key set-attributes " \
                                       f"--expires <later date> --id {key_id}, then rotate"
        if s.expires_within(now, warning):
            soon.append(f"{label} expires at {s.expires_on:%Y-%m-%dT%H:%MZ}")
            if protecting and same_key(key_id, keys.previous.key_id) and not (
                    cluster.kms_enabled and same_key(key_id, cluster.key_id)):
                previous_soon = (f"the previous key {label} expires at {s.expires_on:%Y-%m-%dT%H:%MZ} and Secrets "
                                 "may still be stored under it until the re-encryption toward "
                                 f"{planning.short(planning.KmsConfig.of_cluster(cluster).write_key)} is verified. "
                                 f"Fix: az keyvault key set-attributes --expires <later date> --id {key_id}, and "
                                 "let the re-encryption finish (kubectl get cep -o wide shows its progress)")
    if previous_soon:
        return False, PREVIOUS_KEY_EXPIRES_SOON, previous_soon
    if soon:
        return True, "KeyExpiresSoon", "; ".join(soon) + ": extend the expiry or rotate"
    return True, "KeysValid", "every key AKS loads is enabled and unexpired"


class KeySwitchNotProven(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RewriteIncomplete(Exception):
    """A rewrite run ended with failed Secrets; ``status`` is ready for a new run (see ``planning.rewrite_retry``)."""

    def __init__(self, failed: int, failures: tuple[str, ...], status: api.PolicyStatus) -> None:
        super().__init__(f"{failed} Secret(s) failed")
        self.failed = failed
        self.failures = failures
        self.status = status


async def _metered_run(engine: RewriteEngine, policy: str, kind: str) -> Any:
    """``engine.run()`` between the in-progress gauge's 1 and 0; the run's 429s and completion time
    go to the metrics when it returns (its per-Secret counts arrive through ``MeteredCheckpoints``)."""
    metrics.rewrite_started(policy, kind)
    completed, throttled = False, 0
    try:
        result = await engine.run()
        completed, throttled = result.completed, result.throttled
        return result
    finally:
        metrics.rewrite_ended(policy, kind, throttled=throttled, completed=completed)


def _was_conflict(status: api.PolicyStatus) -> bool:
    """The policy's last reconcile found another policy owning its cluster."""
    return any(c.type == st.STALLED and c.status == "True" and c.reason == "Conflict" for c in status.conditions)

