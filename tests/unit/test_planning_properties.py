"""Property tests: the planner drives a small simulated AKS, and design.md 2.3 holds at every step.

The simulator plays AKS (its two key slots, from the lab's ``KeySlots``, long-running operations,
``provisioningState`` including foreign operations), the API server (which switches to AKS's new
configuration on its own schedule), Secrets (which key each one is under), Key Vault (versions
that get disabled or expire) and thin handlers that perform exactly the step the planner returns.
Hypothesis generates the interleaving of spec edits, cluster states, key changes, Secret creation
and reconciles; every decision and every resulting state is checked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from aks_kms_lab.encryption import KeySlots
from aks_kms_operator.api.v1alpha1 import KeyLedger, PolicySpec, PolicyStatus
from aks_kms_operator.model import IDENTITY, ClusterState, KeyState
from aks_kms_operator.planning import (
    Decision,
    KmsConfig,
    Step,
    desired_config,
    key_record,
    plan_next_step,
    status_after_key_switch,
    status_after_rewrite,
    status_after_verify_pass,
    status_after_write,
)
from aks_kms_operator.preflight import Finding, Severity

from .test_planning import KEY, NOW, VAULT_ID, spec

VERSIONS = [f"{KEY}/{c * 32}" for c in "abcde"]
BUSY_STATES = ["Updating", "Upgrading", "Scaling", "Starting", "Canceling"]
CONVERGE_WITHIN = 150  # reconciles; the longest plan is 8 steps plus waits and rewrite chunks


def key_in(slots: KeySlots, key: str) -> bool:
    return key == IDENTITY or key in slots.loaded()


@dataclass
class World:
    """AKS + API server + Secrets + Key Vault, as far as the invariants need them."""

    rng: random.Random
    spec: PolicySpec
    config: KmsConfig  # what ARM reports (AKS's goal state)
    goal: KeySlots  # the slots AKS's goal configuration implies
    actual: KeySlots  # the slots the API server has loaded now
    secrets: list[str]
    keys: dict[str, KeyState]
    status: PolicyStatus = field(default_factory=PolicyStatus)
    lro: int = 0  # reconciles until our ARM operation finishes
    lro_fails: bool = False
    switch_in: int = 0  # reconciles until the API server loads the goal configuration
    foreign: int = 0  # reconciles of someone else's operation (upgrade, scale)
    foreign_state: str = "Upgrading"
    terminal: str = "Succeeded"
    proven_key: str | None = None  # the key WaitForKeySwitch last proved, reset by every write
    rewritten_from: dict[int, str] = field(default_factory=dict)  # Secret index -> key before this rewrite
    lagged: int = 0  # Secrets a lagging replica answered "unchanged" for in rewrites so far
    writes: int = 0
    decisions: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------ observing

    @property
    def busy(self) -> bool:
        return self.lro > 0 or self.foreign > 0

    def cluster(self) -> ClusterState:
        state = "Updating" if self.lro else self.foreign_state if self.foreign else self.terminal
        return ClusterState(
            kms_enabled=self.config.enabled, key_id=self.config.key_id if self.config.enabled else "",
            network_access=self.config.network_access, vault_resource_id=self.config.vault_resource_id,
            provisioning_state=state, kubernetes_version="1.30.4", identity_type="UserAssigned")

    def writes_with(self) -> str:
        return (self.actual.current or IDENTITY) if self.actual.enabled else IDENTITY

    def versions(self) -> list[KeyState]:
        return list(self.keys.values())

    def usable(self, key: str) -> bool:
        k = self.keys.get(key)
        return k is not None and k.enabled and not k.expired(NOW)

    def plan(self, findings: list[Finding] | None = None) -> Decision:
        return plan_next_step(self.spec, self.cluster(), self.status, key_versions=self.versions(),
                              findings=findings, now=NOW)

    # ---------------------------------------------------------------------------- time passes

    def tick(self) -> None:
        if self.lro:
            self.lro -= 1
            if not self.lro:
                self.terminal = "Failed" if self.lro_fails else "Succeeded"
        if self.switch_in:
            self.switch_in -= 1
        elif self.actual != self.goal:
            self.actual = dataclasses.replace(self.goal)
        if self.foreign:
            self.foreign -= 1

    # ------------------------------------------------------------------------- the handlers

    def preflight(self, write: Decision) -> list[Finding]:
        step = write.steps[1]
        found = []
        if step.key_id != IDENTITY and not self.usable(step.key_id):
            found.append(Finding("KeyExpired", Severity.BLOCK, "target key unusable"))
        if step.replaces != IDENTITY and not self.usable(step.replaces):
            found.append(Finding("PreviousKeyInvalid", Severity.BLOCK, "previous key unusable"))
        if self.busy:
            found.append(Finding("ClusterBusy", Severity.WAIT, "busy"))
        return found

    def reconcile(self) -> Decision:
        d = self.plan()
        check_decision(self, d)
        if d.next_step is Step.CHECK:
            d = self.plan(self.preflight(d))
            check_decision(self, d)
            assert d.next_step is not Step.CHECK
        self.decisions.append(str(d.next_step))
        if d.discard_operation:
            self.status = dataclasses.replace(self.status, operation=type(self.status.operation)())
        writes_before = self.writes
        encrypted_before = self.status.encrypted_with
        self.act(d)
        if self.status.encrypted_with != encrypted_before:
            # Invariant 10: only a verification pass that re-encrypted nothing moves encryptedWith.
            assert d.next_step is Step.VERIFY and d.step is not None
            assert all(s == d.step.key_id for s in self.secrets)
        assert self.writes - writes_before <= 1, "at most one ARM write per plan step"
        check_world(self)
        return d

    def act(self, d: Decision) -> None:
        step = d.step
        if d.writes:
            assert step is not None
            self.write(d)
        elif d.next_step is Step.WAIT_FOR_KEY_SWITCH:
            assert step is not None
            assert not self.busy
            if self.actual == self.goal:
                assert self.writes_with() == step.key_id
                self.status = status_after_key_switch(self.status, step, at=NOW)
                self.proven_key = step.key_id
            else:
                self.tick()
        elif d.next_step is Step.REWRITE:
            assert step is not None
            # Invariant 3: never rewrite before the switch to this very key was proven.
            assert self.proven_key == step.key_id, f"rewrite toward {step.key_id} without proven switch"
            assert self.writes_with() == step.key_id
            budget = self.rng.randint(1, 6)
            for i, under in enumerate(self.secrets):
                if budget and under != step.key_id:
                    self.rewritten_from.setdefault(i, under)
                    self.secrets[i] = step.key_id
                    budget -= 1
            if all(s == step.key_id for s in self.secrets):
                # Sometimes a replica that has not reloaded answered some writes: "unchanged", yet
                # those Secrets are still under the key they were under (AKS still loads it).
                if self.rewritten_from and self.rng.random() < 0.3:
                    done = sorted(self.rewritten_from)
                    for i in self.rng.sample(done, self.rng.randint(1, len(done))):
                        self.secrets[i] = self.rewritten_from[i]
                        self.lagged += 1
                self.rewritten_from.clear()
                self.status = status_after_rewrite(self.status, at=NOW)
            self.tick()
        elif d.next_step is Step.VERIFY:
            assert step is not None
            assert self.proven_key == step.key_id and self.writes_with() == step.key_id
            assert self.status.rewrite.completed_at and self.status.rewrite.target_key_id == step.key_id
            stale = [i for i, s in enumerate(self.secrets) if s != step.key_id]
            for i in stale:
                self.secrets[i] = step.key_id
            self.status = status_after_verify_pass(self.status, step.key_id, reencrypted=len(stale), failed=0,
                                                   at=NOW, retry_after=dt.timedelta(0))
            self.tick()
        else:
            self.tick()

    def write(self, d: Decision) -> None:
        step = d.step
        assert step is not None
        # Invariant 2: never PUT a busy cluster, never write again while our write is in flight.
        assert not self.busy, "ARM write while provisioningState is not terminal"
        assert not self.status.operation.step, "second write while one is in flight"
        # Invariant 4: never change network access while enabled.
        if step.step is Step.UPDATE:
            assert self.config.enabled and step.network_access == self.config.network_access
            assert step.vault_resource_id == self.config.vault_resource_id
        elif step.step is Step.ENABLE:
            assert not self.config.enabled
        else:
            assert self.config.enabled
        # Invariant 1, directly: every Secret is under the key the write replaces.
        assert all(s == step.replaces for s in self.secrets) or not self.secrets
        enabled = step.step is not Step.DISABLE
        self.config = (KmsConfig(True, step.key_id, step.network_access, step.vault_resource_id) if enabled
                       else dataclasses.replace(self.config, enabled=False))
        self.goal = self.goal.apply(enabled, step.key_id if enabled else "")
        self.status = status_after_write(self.status, step, at=NOW)
        self.lro = self.rng.randint(0, 3)
        self.lro_fails = self.rng.random() < 0.2
        self.switch_in = self.rng.randint(0, 3)
        self.proven_key = None
        self.writes += 1


def check_decision(w: World, d: Decision) -> None:
    """Properties of one decision, before it is acted on."""
    # Invariant 8: the same inputs give the same decision, whatever order Key Vault lists versions in.
    again = plan_next_step(w.spec, w.cluster(), w.status, key_versions=list(reversed(w.versions())), now=NOW)
    first = plan_next_step(w.spec, w.cluster(), w.status, key_versions=w.versions(), now=NOW)
    assert again == first
    if d.writes:
        assert not w.cluster().busy
    # The plan as a whole: each write replaces the key every Secret is under by then, a proven
    # switch precedes every rewrite after a write, and network access changes only via Disable.
    under = w.status.encrypted_with
    enabled, mode = w.config.enabled, w.config.network_access
    for i, s in enumerate(d.steps):
        if s.step is Step.VERIFY:
            assert (i > 0 and d.steps[i - 1].step is Step.REWRITE) or i == 0
            under = s.key_id
        elif s.writes:
            if not (i == 0 and d.next_step is Step.WAIT):  # the held write was already checked
                assert under == s.replaces
                assert i == 0 or d.steps[i - 1].step is Step.CHECK
            assert d.steps[i + 1].step is Step.WAIT_FOR_KEY_SWITCH and d.steps[i + 2].step is Step.REWRITE
            assert d.steps[i + 3].step is Step.VERIFY
            if s.step is Step.UPDATE:
                assert enabled and s.network_access == mode
            elif s.step is Step.ENABLE:
                assert not enabled or (i == 0 and d.next_step is Step.WAIT)
                enabled, mode = True, s.network_access
            else:
                enabled = False


def check_world(w: World) -> None:
    """Properties of the state after every reconcile."""
    # Invariant 1: no Secret under a key outside the API server's slots, now or once it switches.
    for key in w.secrets:
        assert key_in(w.actual, key), f"Secret stranded under {key} (API server {w.actual})"
        assert key_in(w.goal, key), f"Secret will be stranded under {key} (AKS {w.goal})"
    # Invariant 7: retirable keys hold no Secret and are in no slot.
    for r in w.status.keys.retirable:
        assert r.key_id not in w.secrets, f"retirable {r.key_id} still encrypts a Secret"
        assert r.key_id not in w.goal.loaded() and r.key_id not in w.actual.loaded(), \
            f"retirable {r.key_id} still loaded"
    # The ledger's current key is what AKS writes with once the switch is proven.
    if w.proven_key is not None and not w.status.operation.step and w.config.enabled:
        assert w.status.keys.current.key_id in ("", w.config.key_id)


# ---------------------------------------------------------------------------------- strategies


@st.composite
def worlds(draw: st.DrawFn) -> World:
    rng = draw(st.randoms(use_true_random=False))
    enabled = draw(st.booleans())
    current = draw(st.sampled_from(VERSIONS))
    previous = draw(st.sampled_from([None, *[v for v in VERSIONS if v != current]]))
    mode = draw(st.sampled_from(["Public", "Private"]))
    slots = KeySlots(enabled, current if enabled else None, previous if enabled else previous or current)
    readable = [IDENTITY, *slots.loaded()]
    managed = draw(st.booleans())
    if managed:  # a status the operator wrote: everything under the write key, ledger known
        write_key = current if enabled else IDENTITY
        secrets = [write_key] * draw(st.integers(0, 12))
        status = PolicyStatus(
            encrypted_with=write_key,
            rewrite=dataclasses.replace(PolicyStatus().rewrite, target_key_id=write_key),
            keys=KeyLedger(current=key_record(slots.current or ""), previous=key_record(slots.previous or "")),
        )
    else:  # adoption: unknown history, Secrets under anything AKS can still read
        secrets = draw(st.lists(st.sampled_from(readable), max_size=12))
        status = PolicyStatus()
    keys = {v: KeyState(v, created_on=dt.datetime(2026, 1, i + 1, tzinfo=dt.UTC)) for i, v in enumerate(VERSIONS)}
    config = KmsConfig(enabled, current if enabled else "", mode if enabled else "Public",
                       VAULT_ID if enabled and mode == "Private" else "")
    return World(rng=rng, spec=spec(True, current, mode if enabled else "Public") if enabled else spec(False),
                 config=config, goal=slots, actual=dataclasses.replace(slots), secrets=secrets, keys=keys,
                 status=status, proven_key=(current if enabled else IDENTITY) if managed else None)


EVENTS = st.one_of(
    st.just(("reconcile",)),
    st.just(("reconcile",)),
    st.just(("reconcile",)),
    st.tuples(st.just("enable"), st.sampled_from(VERSIONS), st.sampled_from(["Public", "Private"])),
    st.tuples(st.just("rotate"), st.sampled_from(VERSIONS)),
    st.tuples(st.just("rotate"), st.sampled_from(VERSIONS)),
    st.just(("disable",)),
    st.tuples(st.just("follow"), st.sampled_from(["Public", "Private"])),
    st.tuples(st.just("pause"), st.booleans()),
    st.tuples(st.just("foreign"), st.integers(1, 3), st.sampled_from(BUSY_STATES)),
    st.tuples(st.just("key"), st.sampled_from(VERSIONS), st.sampled_from(["enabled", "disabled", "expired"])),
    st.just(("secret",)),
)


def apply_event(w: World, event: tuple) -> None:
    kind = event[0]
    if kind == "reconcile":
        w.reconcile()
    elif kind == "enable":
        w.spec = dataclasses.replace(spec(True, event[1], event[2]), rewrite=w.spec.rewrite)
    elif kind == "rotate":  # a new key version, same network access
        kms = w.spec.kms
        mode = kms.key_vault_network_access if kms.enabled else w.config.network_access
        w.spec = dataclasses.replace(spec(True, event[1], mode), rewrite=w.spec.rewrite)
    elif kind == "disable":
        w.spec = dataclasses.replace(spec(False), rewrite=w.spec.rewrite)
    elif kind == "follow":
        w.spec = dataclasses.replace(spec(True, KEY, event[1], follow=True), rewrite=w.spec.rewrite)
    elif kind == "pause":
        w.spec = dataclasses.replace(w.spec, rewrite=dataclasses.replace(w.spec.rewrite, paused=event[1]))
    elif kind == "foreign":
        w.foreign, w.foreign_state = event[1], event[2]
    elif kind == "key":
        k = w.keys[event[1]]
        w.keys[event[1]] = dataclasses.replace(
            k, enabled=event[2] != "disabled",
            expires_on=NOW - dt.timedelta(days=1) if event[2] == "expired" else None)
    elif kind == "secret":
        w.secrets.append(w.writes_with())
        check_world(w)


def converge(w: World) -> None:
    """Nothing changes any more and every key is usable: Ready within a bounded number of reconciles."""
    w.spec = dataclasses.replace(w.spec, rewrite=dataclasses.replace(w.spec.rewrite, paused=False))
    w.keys = {k: dataclasses.replace(v, enabled=True, expires_on=None) for k, v in w.keys.items()}
    for _ in range(CONVERGE_WITHIN):
        if w.reconcile().next_step is Step.READY:
            break
    else:
        raise AssertionError(f"no Ready within {CONVERGE_WITHIN} reconciles: {w.decisions[-12:]}")
    want = desired_config(w.spec, w.versions(), NOW)
    assert isinstance(want, KmsConfig)
    assert w.config.enabled == want.enabled
    if want.enabled:
        assert (w.config.key_id, w.config.network_access) == (want.key_id, want.network_access)
        assert w.status.keys.current.key_id == want.key_id
    assert all(s == want.write_key for s in w.secrets)
    assert w.status.encrypted_with == want.write_key
    assert not w.status.operation.step
    # Ready is stable: reconciling again changes nothing and writes nothing.
    writes = w.writes
    for _ in range(3):
        assert w.reconcile().next_step is Step.READY
    assert w.writes == writes


@settings(max_examples=300, deadline=None)
@given(worlds(), st.lists(EVENTS, max_size=60))
def test_invariants_hold_on_every_step_and_the_plan_converges(w: World, events: list[tuple]) -> None:
    check_world(w)
    for event in events:
        apply_event(w, event)
    converge(w)


@settings(max_examples=150, deadline=None)
@given(worlds(), st.lists(st.sampled_from(VERSIONS), min_size=2, max_size=6), st.integers(0, 3))
def test_rotations_requested_faster_than_rewrites_never_strand_secrets(
    w: World, keys: list[str], reconciles_between: int
) -> None:
    """The failure users hit by hand: rotate again before the rewrite finished (reference 8)."""
    for key in keys:
        w.spec = spec(True, key)
        w.secrets.append(w.writes_with())
        for _ in range(reconciles_between):
            w.reconcile()
    converge(w)


@settings(max_examples=100, deadline=None)
@given(worlds(), st.lists(EVENTS, max_size=40), st.integers(0, 40))
def test_restart_anywhere_gives_the_same_next_step(w: World, events: list[tuple], at: int) -> None:
    """The planner keeps nothing between calls: a fresh operator reading the same status agrees."""
    for event in events[:at]:
        apply_event(w, event)
    cluster, status = w.cluster(), w.status
    restarted = plan_next_step(dataclasses.replace(w.spec), dataclasses.replace(cluster),
                               PolicyStatus(**{f.name: getattr(status, f.name)
                                               for f in dataclasses.fields(status)}),
                               key_versions=w.versions(), now=NOW)
    assert restarted == w.plan()
