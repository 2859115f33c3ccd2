"""One reconcile of one ClusterEncryptionPolicy: observe, plan, act, report.

Level-based (design.md 2.2): every call reads the policy, AKS and Key Vault afresh, asks the pure
planner (``planning.plan_next_step``) for the next step, performs exactly that step and writes the
result to status. The kopf daemon in ``handlers`` calls ``reconcile`` in a loop and sleeps for the
returned delay (or until the policy changes).

All decisions live in ``planning`` and ``preflight``; this module only gathers facts and carries
out what they decide. The one judgement made here is ownership: when several policies name the
same cluster, the oldest owns it and the others stall with ``Conflict`` without touching anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import planning
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
    PolicyStatusStore,
    RewriteEngine,
    RewriteOptions,
    count_secrets,
    ensure_canary,
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
    key_switch_probes: int = 3
    key_switch_interval: float = 10.0
    key_switch_timeout: float = 900.0
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
            key_switch_timeout=num("AKS_KMS_KEY_SWITCH_TIMEOUT_SECONDS", cls.key_switch_timeout),
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
        """One reconcile; returns the decision acted on (None when the policy is gone)."""
        try:
            body = await self.kube.request("GET", f"{POLICIES}/{name}")
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        obs = Observation(body, parse(api.PolicySpec, body.get("spec")), parse(api.PolicyStatus, body.get("status")),
                          int(body["metadata"].get("generation") or 0))
        conflict = await self._conflict(obs)
        if conflict is not None:
            await self._report(obs, conflict, obs.status)
            return conflict
        try:
            decision = await self._plan(obs, deleting)
            if decision.next_step is Step.CHECK:
                findings = await self._preflight(obs, decision)
                decision = await self._plan(obs, deleting, findings)
            status = await self._act(obs, decision)
        except (AzureThrottled, AzureConflict) as err:
            decision = self._transient(obs, err, getattr(err, "retry_after", None))
            status = obs.status
        except AzureNotFound as err:
            decision = Decision(Step.BLOCKED, (), "ClusterNotFound", str(err),
                                "check spec.cluster (subscriptionId, resourceGroup, name) against az aks list",
                                self.settings.error_retry, "Blocked")
            status = obs.status
        except AzureRejected as err:
            decision = Decision(Step.BLOCKED, (), err.code or "AzureRejected", str(err),
                                "read the error, fix its cause in Azure, then the operator retries",
                                self.settings.error_retry, "Blocked")
            status = obs.status
        except AzureGatewayError as err:
            decision = self._transient(obs, err, None)
            status = obs.status
        except KeySwitchNotProven as err:
            decision = Decision(Step.BLOCKED, (), err.reason, str(err),
                                "check the API server's KMS plugin health (kubectl get --raw /readyz?verbose); "
                                "the operator probes again", self.settings.error_retry, "WaitingForKeySwitch")
            status = obs.status
        except RewriteIncomplete as err:
            failures = ", ".join(err.status.rewrite.failures[:3])
            decision = Decision(Step.BLOCKED, (), "RewriteFailed",
                                f"{err.failed} Secret(s) could not be re-encrypted ({failures})",
                                "fix what refuses the writes (admission webhook, permissions), then the operator "
                                "walks every namespace again", self.settings.error_retry, "Failed")
            status = err.status
        await self._report(obs, decision, status)
        return decision

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
        if write.key_id and write.key_id != IDENTITY:
            target = azure.keys.key_state(write.key_id)
        if write.replaces and write.replaces != IDENTITY:
            previous = azure.keys.key_state(write.replaces)
        key_for_vault = write.key_id if write.key_id != IDENTITY else write.replaces
        vault_id = write.vault_resource_id
        if not vault_id and key_for_vault and key_for_vault != IDENTITY:
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
        return status

    async def _write(self, obs: Observation, decision: Decision, step: PlannedStep,
                     status: api.PolicyStatus) -> api.PolicyStatus:
        assert obs.snapshot is not None
        # The canary's resourceVersion before the write is the baseline that proves the switch.
        baseline = await ensure_canary(self.kube, self.settings.namespace)
        after = planning.status_after_write(status, step, at=_now(), canary_resource_version=baseline)
        # Record the write *before* sending it. AKS rolls the API server as part of the operation, so
        # a status write just after the PUT can fail; an accepted write must never go unrecorded, or
        # a restarted reconcile could not tell its own change from someone else's. A record whose
        # write never landed is harmless: the planner discards it once AKS is idle without it.
        await self._patch_status({"operation": dump(after.operation)}, obs.name)
        enabled = step.step is not Step.DISABLE
        try:
            await asyncio.to_thread(
                self.azure.clusters.put_kms, obs.snapshot, enabled=enabled,
                key_id=step.key_id if enabled else "", network_access=step.network_access or "Public",
                vault_resource_id=step.vault_resource_id if enabled else "",
            )
        except AzureRejected:
            await self._patch_status({"operation": dump(api.OperationStatus())}, obs.name)
            raise
        self.events(obs.body, "Normal", step.step.value,
                    f"AKS accepted {step} to {planning.short(step.key_id)}; waiting for it to finish")
        return after

    async def _wait_for_switch(self, obs: Observation, step: PlannedStep,
                               status: api.PolicyStatus) -> api.PolicyStatus:
        baseline = status.operation.canary_resource_version
        s = self.settings
        if not baseline:
            # No write of ours to prove (a new policy adopting the cluster, or a change made outside
            # the operator while the cluster was already Succeeded): there is no before/after to
            # compare, so the canary is written once under whatever key the API server uses now.
            await ensure_canary(self.kube, s.namespace)
            self.events(obs.body, "Normal", "KeySwitched",
                        f"adopting the API server's current write key {planning.short(step.key_id)}")
            return planning.status_after_key_switch(status, step, at=_now())
        result = await wait_for_key_switch(self.kube, s.namespace, baseline, stable_probes=s.key_switch_probes,
                                           interval=s.key_switch_interval, timeout=s.key_switch_timeout)
        if not result.switched:
            raise KeySwitchNotProven(result.reason, result.message)
        self.events(obs.body, "Normal", "KeySwitched", result.message)
        return planning.status_after_key_switch(status, step, at=_now())

    async def _rewrite(self, obs: Observation, step: PlannedStep, status: api.PolicyStatus) -> api.PolicyStatus:
        # Show the phase before a long run; the engine then checkpoints status.rewrite itself.
        await self._patch_status({"phase": "Rewriting",
                                  "message": f"re-encrypting Secrets for {planning.short(step.key_id)}"}, obs.name)
        generation = obs.generation

        async def paused() -> bool:
            current = await self.kube.request("GET", f"{POLICIES}/{obs.name}")
            spec = parse(api.PolicySpec, current.get("spec"))
            return spec.rewrite.paused or int(current["metadata"].get("generation") or 0) != generation

        engine = RewriteEngine(self.kube, step.key_id, options=RewriteOptions.from_spec(obs.spec.rewrite),
                               checkpoint=PolicyStatusStore(self.kube, obs.name), paused=paused)
        result = await engine.run()
        fresh = await self.kube.request("GET", f"{POLICIES}/{obs.name}")
        status = dataclasses.replace(status, rewrite=parse(api.RewriteStatus,
                                                          (fresh.get("status") or {}).get("rewrite")))
        c = result.counters
        if not result.completed:
            return status
        if c.failed:
            # Some Secret may still be under the old key: never claim it is encrypted. Reset the
            # checkpoint so the next attempt walks every namespace again (current ones cost no etcd write).
            self.events(obs.body, "Warning", "RewriteFailed",
                        f"{c.failed} Secret(s) could not be rewritten: {', '.join(c.failures[:5])}")
            retry = dataclasses.replace(status.rewrite, completed_at="", last_namespace="", namespaces_done=0)
            raise RewriteIncomplete(c.failed, dataclasses.replace(status, rewrite=retry))
        self.events(obs.body, "Normal", "SecretsEncrypted",
                    f"{c.seen} Secrets checked for {planning.short(step.key_id)}: {c.reencrypted} re-encrypted, "
                    f"{c.already_current} already current, {c.skipped} skipped, in {result.elapsed_seconds:.1f}s")
        return planning.status_after_rewrite(status, at=_now())

    # ------------------------------------------------------------------ report

    async def _report(self, obs: Observation, decision: Decision, status: api.PolicyStatus) -> None:
        gen = obs.generation
        state = obs.snapshot.state if obs.snapshot else None
        keys = status.keys
        key_states: list[KeyState] = []
        if state is not None:
            key_states = await self._key_states(keys, state)
            keys = planning.refresh_ledger(keys, key_states)
            if state.kms_enabled and not keys.current.key_id:
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
                observed_at=st.now_iso()))
        out = dump(status)
        out["conditions"] = conds
        out.pop("rewrite", None)  # owned by the engine's checkpoint while it runs; written below when ours
        if status.rewrite != obs.status.rewrite:
            out["rewrite"] = dump(status.rewrite)
        await self._patch_status(out, obs.name)
        before = st.condition(dump(obs.status).get("conditions") or [], st.STALLED) or {}
        if stalled and (before.get("status") != "True" or before.get("reason") != decision.reason):
            self.events(obs.body, "Warning", decision.reason, planning.describe(decision))

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
        healthy, reason, message = key_health(status.keys, key_states, state, _now(), expiry_warning)
        conds = st.set_condition(conds, st.KEY_HEALTHY, healthy, reason, message, generation=gen)
        encrypted = same_key(status.encrypted_with, observed.write_key)
        conds = st.set_condition(
            conds, st.SECRETS_ENCRYPTED, encrypted, "AllSecretsCurrent" if encrypted else "RewritePending",
            f"every Secret is written under {planning.short(status.encrypted_with)}" if encrypted
            else f"Secrets still need a rewrite toward {planning.short(observed.write_key)}", generation=gen)
        return conds

    async def _patch_status(self, status: dict[str, Any], name: str) -> None:
        await self.kube.request("PATCH", f"{POLICIES}/{name}/status", body={"status": status},
                                content_type=MERGE_PATCH)


def key_health(keys: api.KeyLedger, states: list[KeyState], cluster: Any, now: dt.datetime,
               warning: dt.timedelta) -> tuple[bool, str, str]:
    """KeyHealthy: every key AKS loads (current and previous) exists, is enabled and unexpired."""
    loaded = [k for k in (cluster.key_id if cluster.kms_enabled else "", keys.previous.key_id) if k]
    if not loaded:
        return True, "NoKeyInUse", "KMS is off and no key is loaded"
    by_id = {s.key_id.lower(): s for s in states}
    soon: list[str] = []
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
    if soon:
        return True, "KeyExpiresSoon", "; ".join(soon) + ": extend the expiry or rotate"
    return True, "KeysValid", "every key AKS loads is enabled and unexpired"


class KeySwitchNotProven(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RewriteIncomplete(Exception):
    def __init__(self, failed: int, status: api.PolicyStatus) -> None:
        super().__init__(f"{failed} Secret(s) failed")
        self.failed = failed
        self.status = status

