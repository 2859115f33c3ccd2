"""Table tests of the planner: every row of design.md 2.2, every sequencing invariant of 2.3, the ledger."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import pytest

from aks_kms_operator.api.v1alpha1 import (
    ClusterRef,
    KeyLedger,
    KeyRecord,
    KmsSpec,
    OperationStatus,
    PlanStatus,
    PolicySpec,
    PolicyStatus,
    RewriteSpec,
    RewriteStatus,
    RotationSpec,
)
from aks_kms_operator.model import IDENTITY, ClusterState, KeyState
from aks_kms_operator.planning import (
    Decision,
    KmsConfig,
    PlannedStep,
    Step,
    describe,
    desired_config,
    key_record,
    key_switch_unproven,
    ledger_after_rewrite,
    ledger_after_write,
    newest_version,
    operation_for,
    parse_duration,
    plan_next_step,
    plan_status,
    refresh_ledger,
    rewrite_retry,
    status_after_key_switch,
    status_after_rewrite,
    status_after_verify_pass,
    status_after_write,
)
from aks_kms_operator.preflight import Finding, Severity

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
VAULT = "https://kv1.vault.azure.net"
KEY = f"{VAULT}/keys/etcd"
KA, KB, KC, KZ = (f"{KEY}/{c * 32}" for c in "abcd")
VAULT_ID = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
            "/providers/Microsoft.KeyVault/vaults/kv1")
OTHER_VAULT_ID = VAULT_ID[:-1] + "2"


def spec(enabled: bool = True, key: str = KA, mode: str = "Public", *, follow: bool = False,
         paused: bool = False, deletion: str = "Retain", vault_id: str | None = None) -> PolicySpec:
    """A valid spec; Private gets the vault ID the way admission demands."""
    vid = vault_id if vault_id is not None else (VAULT_ID if mode == "Private" else "")
    return PolicySpec(
        cluster=ClusterRef(subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg",
                           name="aks"),
        kms=KmsSpec(enabled=enabled, key_id=key if enabled else "", key_vault_network_access=mode,
                    key_vault_resource_id=vid),
        rotation=RotationSpec(follow_latest_version=follow),
        rewrite=RewriteSpec(paused=paused),
        deletion_policy=deletion,
    )


def cluster(enabled: bool = True, key: str = KA, mode: str = "Public", *, state: str = "Succeeded",
            version: str = "1.30.4", vault_id: str | None = None) -> ClusterState:
    vid = vault_id if vault_id is not None else (VAULT_ID if mode == "Private" and enabled else "")
    return ClusterState(kms_enabled=enabled, key_id=key if enabled else "", network_access=mode,
                        vault_resource_id=vid, provisioning_state=state, kubernetes_version=version,
                        identity_type="UserAssigned")


def status(encrypted_with: str = KA, proven: str | None = None, *, op: tuple[str, str] | None = None,
           keys: KeyLedger | None = None) -> PolicyStatus:
    """Ledger: every Secret under ``encrypted_with``; the switch to ``proven`` was shown (default: same)."""
    target = encrypted_with if proven is None else proven
    operation = OperationStatus(step=op[0], target_key_id=op[1], started_at="2026-06-01T00:00:00Z") if op else \
        OperationStatus()
    return PolicyStatus(encrypted_with=encrypted_with, rewrite=RewriteStatus(target_key_id=target),
                        operation=operation, keys=keys or KeyLedger())


def names(d: Decision) -> list[str]:
    return [str(s) for s in d.steps]


# ------------------------------------------------------------------------------- the table


def test_disabled_to_enabled() -> None:
    d = plan_next_step(spec(True, KA), cluster(False), status(IDENTITY))
    assert d.next_step is Step.CHECK
    assert names(d) == ["Check", "Enable(Public)", "WaitForKeySwitch", "Rewrite", "Verify"]
    assert d.phase == "Checking"
    w = plan_next_step(spec(True, KA), cluster(False), status(IDENTITY), findings=[])
    assert w.next_step is Step.ENABLE and w.writes
    assert w.step == PlannedStep(Step.ENABLE, KA, "Public", "", IDENTITY)
    assert names(w) == ["Enable(Public)", "WaitForKeySwitch", "Rewrite", "Verify"]
    assert [s.key_id for s in w.steps] == [KA, KA, KA, KA]
    assert w.phase == "UpdatingCluster"


def test_disabled_to_enabled_private_carries_the_vault() -> None:
    w = plan_next_step(spec(True, KA, "Private"), cluster(False), status(IDENTITY), findings=[])
    assert w.step == PlannedStep(Step.ENABLE, KA, "Private", VAULT_ID, IDENTITY)
    assert names(w)[0] == "Enable(Private)"


def test_rotate_a_to_b() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA), status(KA))
    assert names(d) == ["Check", "Update", "WaitForKeySwitch", "Rewrite", "Verify"]
    assert d.steps[1] == PlannedStep(Step.UPDATE, KB, "Public", "", KA)
    w = plan_next_step(spec(True, KB), cluster(True, KA), status(KA), findings=[])
    assert w.next_step is Step.UPDATE and w.step.replaces == KA


@pytest.mark.parametrize(("old", "new"), [("Public", "Private"), ("Private", "Public")])
def test_mode_change_goes_through_disable(old: str, new: str) -> None:
    d = plan_next_step(spec(True, KA, new), cluster(True, KA, old), status(KA))
    assert names(d) == ["Check", "Disable", "WaitForKeySwitch", "Rewrite", "Verify",
                        "Check", f"Enable({new})", "WaitForKeySwitch", "Rewrite", "Verify"]
    assert [s.key_id for s in d.steps] == [IDENTITY] * 5 + [KA] * 5
    w = plan_next_step(spec(True, KA, new), cluster(True, KA, old), status(KA), findings=[])
    assert w.next_step is Step.DISABLE


def test_mode_change_with_new_key_enables_the_new_key() -> None:
    d = plan_next_step(spec(True, KB, "Private"), cluster(True, KA, "Public"), status(KA))
    assert d.steps[6] == PlannedStep(Step.ENABLE, KB, "Private", VAULT_ID, IDENTITY)


def test_private_vault_change_is_a_mode_change() -> None:
    d = plan_next_step(spec(True, KA, "Private", vault_id=OTHER_VAULT_ID),
                       cluster(True, KA, "Private"), status(KA))
    assert names(d)[:2] == ["Check", "Disable"]


def test_enabled_to_disabled() -> None:
    d = plan_next_step(spec(False), cluster(True, KA), status(KA))
    assert names(d) == ["Check", "Disable", "WaitForKeySwitch", "Rewrite", "Verify"]
    assert d.steps[1] == PlannedStep(Step.DISABLE, IDENTITY, replaces=KA)
    assert d.steps[3].key_id == IDENTITY


def test_nothing_changed_ledger_behind_rewrites() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KB), status(KA, proven=KB))
    assert d.next_step is Step.REWRITE and names(d) == ["Rewrite", "Verify"] and d.step.key_id == KB
    assert d.phase == "Rewriting"


def test_nothing_changed_disabled_ledger_behind_rewrites_to_identity() -> None:
    d = plan_next_step(spec(False), cluster(False), status(KA, proven=IDENTITY))
    assert names(d) == ["Rewrite", "Verify"] and d.step.key_id == IDENTITY


@pytest.mark.parametrize("ledger", ["", KZ])
def test_unproven_switch_is_proven_before_rewrite(ledger: str) -> None:
    # Adoption (empty ledger) or a key changed outside the operator: never rewrite on faith.
    d = plan_next_step(spec(True, KA), cluster(True, KA), status(ledger, proven=ledger))
    assert d.next_step is Step.WAIT_FOR_KEY_SWITCH
    assert names(d) == ["WaitForKeySwitch", "Rewrite", "Verify"]


def test_ready_when_nothing_changed_and_ledger_current() -> None:
    d = plan_next_step(spec(True, KA), cluster(True, KA), status(KA))
    assert d.next_step is Step.READY and d.steps == () and d.reason == "InSync"
    assert d.delay == 3600 and d.phase == "Ready" and not d.acts
    off = plan_next_step(spec(False), cluster(False), status(IDENTITY))
    assert off.next_step is Step.READY


def test_ready_ignores_url_spelling() -> None:
    d = plan_next_step(spec(True, f"https://KV1.vault.azure.net/keys/etcd/{'A' * 32}"),
                       cluster(True, KA.replace(".net/", ".net:443/")), status(KA + "/"))
    assert d.next_step is Step.READY


def test_disabled_cluster_ignores_reported_network_access() -> None:
    d = plan_next_step(spec(False), cluster(False, mode="Private"), status(IDENTITY))
    assert d.next_step is Step.READY


# ----------------------------------------------------------------------------------- KMS v1


@pytest.mark.parametrize(("version", "warned"), [("1.26.6", True), ("v1.25.0", True), ("1.27.0", False),
                                                  ("1.31.1", False), ("", False)])
def test_kms_v1_is_reported(version: str, warned: bool) -> None:
    d = plan_next_step(spec(True, KA), cluster(True, KA, version=version), status(KA))
    assert d.next_step is Step.READY
    assert ("KmsV1" in [w.reason for w in d.warnings]) is warned


def test_kms_v1_not_reported_when_kms_is_off_and_stays_off() -> None:
    d = plan_next_step(spec(False), cluster(False, version="1.26.0"), status(IDENTITY))
    assert d.warnings == ()


def test_kms_v1_does_not_block_the_plan() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA, version="1.26.0"), status(KA), findings=[])
    assert d.next_step is Step.UPDATE and d.warnings[0].reason == "KmsV1"


# ---------------------------------------------------------------------------- followLatest


def version(key_id: str, day: int, **kw: object) -> KeyState:
    return KeyState(key_id=key_id, created_on=dt.datetime(2026, 1, day, tzinfo=dt.UTC), **kw)  # type: ignore[arg-type]


def test_follow_latest_rolls_to_the_newest_enabled_version() -> None:
    versions = [version(KA, 1), version(KC, 3), version(KB, 2)]
    d = plan_next_step(spec(True, KEY, follow=True), cluster(True, KA), status(KA), key_versions=versions)
    assert d.steps[1] == PlannedStep(Step.UPDATE, KC, "Public", "", KA)
    assert d.desired == KmsConfig(True, KC, "Public", "")


def test_follow_latest_skips_disabled_expired_missing_and_future_versions() -> None:
    versions = [
        version(KA, 1),
        version(KB, 2),
        version(KC, 3, enabled=False),
        version(KZ, 4, expires_on=NOW - dt.timedelta(days=1)),
        version(f"{KEY}/{'e' * 32}", 5, not_before=NOW + dt.timedelta(days=1)),
        version(f"{KEY}/{'f' * 32}", 6, exists=False),
        version(f"{VAULT}/keys/other/{'9' * 32}", 9),
        version(f"https://kv2.vault.azure.net/keys/etcd/{'8' * 32}", 9),
    ]
    assert newest_version(KEY, versions, NOW) == KB
    assert newest_version(KA, versions, NOW) == KB  # a versioned keyId names the key to follow
    d = plan_next_step(spec(True, KEY, follow=True), cluster(True, KB), status(KB), key_versions=versions, now=NOW)
    assert d.next_step is Step.READY


def test_follow_latest_is_independent_of_input_order() -> None:
    versions = [version(KA, 1), version(KB, 1), version(KC, 1)]  # equal dates: tie broken by ID
    assert newest_version(KEY, versions) == newest_version(KEY, list(reversed(versions))) == KC


def test_follow_latest_without_a_usable_version_blocks() -> None:
    d = plan_next_step(spec(True, KEY, follow=True), cluster(True, KA), status(KA),
                       key_versions=[version(KA, 1, enabled=False)])
    assert d.next_step is Step.BLOCKED and d.reason == "KeyNotFound" and d.fix


def test_unversioned_key_without_follow_is_refused() -> None:
    assert isinstance(desired_config(spec(True, KEY)), Finding)
    d = plan_next_step(spec(True, KEY), cluster(False), status(IDENTITY))
    assert d.next_step is Step.BLOCKED and d.reason == "KeyIdNotVersioned"


# ---------------------------------------------------------------------- invariant 1: sequencing


def test_second_rotation_before_first_rewrite_finished_rewrites_first() -> None:
    # A→B was applied and proven, the rewrite to B is half-way; now the user asks for C.
    for findings in (None, []):
        d = plan_next_step(spec(True, KC), cluster(True, KB), status(KA, proven=KB), findings=findings)
        assert d.next_step is Step.REWRITE and d.step.key_id == KB
        assert names(d) == ["Rewrite", "Verify", "Check", "Update", "WaitForKeySwitch", "Rewrite", "Verify"]
    # Only once the B rewrite is complete does C go to AKS, with B as the key it replaces.
    d = plan_next_step(spec(True, KC), cluster(True, KB), status(KB), findings=[])
    assert d.next_step is Step.UPDATE and d.step.replaces == KB


@pytest.mark.parametrize(
    ("desired", "observed", "ledger", "first_key"),
    [
        (spec(True, KB), cluster(False), status(KA, proven=IDENTITY), IDENTITY),  # enable while disable rewrite runs
        (spec(False), cluster(True, KB), status(KA, proven=KB), KB),  # disable while rotate rewrite runs
        (spec(True, KB, "Private"), cluster(True, KB), status(KA, proven=KB), KB),  # mode change likewise
        (spec(True, KC), cluster(True, KB), status("", proven=""), KB),  # adoption: ledger unknown
    ],
)
def test_no_write_while_ledger_behind(desired: PolicySpec, observed: ClusterState, ledger: PolicyStatus,
                                      first_key: str) -> None:
    d = plan_next_step(desired, observed, ledger, findings=[])
    assert not d.writes
    assert d.step.key_id == first_key
    assert d.step.step in (Step.REWRITE, Step.WAIT_FOR_KEY_SWITCH)


# --------------------------------------------------------------------------- invariant 2: busy


BUSY = ["Updating", "Upgrading", "Creating", "Scaling", "Starting", "Stopping", "Canceling", "Deleting",
        "Migrating", ""]


@pytest.mark.parametrize("state", BUSY)
def test_busy_cluster_waits_instead_of_writing(state: str) -> None:
    for findings in (None, []):
        d = plan_next_step(spec(True, KB), cluster(True, KA, state=state), status(KA), findings=findings)
        assert d.next_step is Step.WAIT and d.reason == "ClusterBusy"
        assert d.delay and d.delay > 0 and not d.writes
        assert names(d)[:2] == ["Check", "Update"]


@pytest.mark.parametrize("state", ["Succeeded", "Failed", "Canceled"])
def test_terminal_states_allow_writes(state: str) -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA, state=state), status(KA), findings=[])
    assert d.next_step is Step.UPDATE


@pytest.mark.parametrize("state", BUSY)
def test_busy_cluster_delays_key_switch_proof(state: str) -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KB, state=state), status(KA, proven=KA))
    assert d.next_step is Step.WAIT and d.phase == "WaitingForKeySwitch"


def test_rewrite_may_continue_while_cluster_busy() -> None:
    # A node-pool upgrade does not change the key; the rewrite sends no ARM write.
    d = plan_next_step(spec(True, KB), cluster(True, KB, state="Upgrading"), status(KA, proven=KB))
    assert d.next_step is Step.REWRITE


def test_write_in_flight_is_waited_on_never_repeated() -> None:
    st = status(KA, op=("Update", KB))
    for findings in (None, []):
        d = plan_next_step(spec(True, KB), cluster(True, KB, state="Updating"), st, findings=findings)
        assert d.next_step is Step.WAIT and d.reason == "ClusterUpdating" and d.phase == "UpdatingCluster"
        assert names(d) == ["Update", "WaitForKeySwitch", "Rewrite", "Verify"]
    # Even if the spec moved on meanwhile: wait, then finish B, then go to C.
    d = plan_next_step(spec(True, KC), cluster(True, KB, state="Updating"), st, findings=[])
    assert d.next_step is Step.WAIT
    assert names(d) == ["Update", "WaitForKeySwitch", "Rewrite", "Verify",
                        "Check", "Update", "WaitForKeySwitch", "Rewrite", "Verify"]


def test_unknown_operation_step_still_waits() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KB, state="Updating"), status(KA, op=("Rotate", KB)))
    assert d.next_step is Step.WAIT and d.reason == "ClusterUpdating"


@pytest.mark.parametrize("state", ["Succeeded", "Failed"])
def test_finished_write_is_followed_by_key_switch_proof(state: str) -> None:
    # AKS asks for a rewrite even after a failed KMS update when the key was taken (reference 8).
    d = plan_next_step(spec(True, KB), cluster(True, KB, state=state), status(KA, op=("Update", KB)))
    assert d.next_step is Step.WAIT_FOR_KEY_SWITCH and d.step.key_id == KB
    assert not d.discard_operation


def test_failed_write_not_applied_blocks() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA, state="Failed"), status(KA, op=("Update", KB)),
                       findings=[])
    assert d.next_step is Step.BLOCKED and d.reason == "ClusterUpdateFailed" and "az aks update -g rg -n aks" in d.fix


@pytest.mark.parametrize("state", ["Succeeded", "Canceled"])
def test_write_without_effect_is_discarded_and_replanned(state: str) -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA, state=state), status(KA, op=("Update", KB)))
    assert d.discard_operation and d.next_step is Step.CHECK


def test_disable_in_flight_is_recognised() -> None:
    d = plan_next_step(spec(False), cluster(False), status(KA, op=("Disable", "")))
    assert d.next_step is Step.WAIT_FOR_KEY_SWITCH and d.step.key_id == IDENTITY


def test_operation_left_after_switch_is_discarded() -> None:
    # Switch proven and rewrite opened, but the operation was not cleared (older status writer).
    d = plan_next_step(spec(True, KB), cluster(True, KB), status(KA, proven=KB, op=("Update", KB)))
    assert d.next_step is Step.REWRITE and d.discard_operation


# -------------------------------------------------------------- invariant 3 and 4, structurally


TABLE = [
    (spec(True, KA), cluster(False), status(IDENTITY)),
    (spec(True, KB), cluster(True, KA), status(KA)),
    (spec(True, KA, "Private"), cluster(True, KA), status(KA)),
    (spec(True, KB, "Public"), cluster(True, KA, "Private"), status(KA)),
    (spec(False), cluster(True, KA), status(KA)),
    (spec(True, KC), cluster(True, KB), status(KA, proven=KB)),
    (spec(True, KC, "Private"), cluster(False), status(KA, proven=IDENTITY)),
    (spec(True, KC), cluster(True, KB), status("")),
]


@pytest.mark.parametrize(("desired", "observed", "ledger"), TABLE)
def test_every_rewrite_after_a_write_waits_for_the_switch(desired: PolicySpec, observed: ClusterState,
                                                          ledger: PolicyStatus) -> None:
    steps = plan_next_step(desired, observed, ledger).steps
    for i, s in enumerate(steps):
        if s.writes:
            assert steps[i - 1].step is Step.CHECK  # every write is checked first
            nxt = steps[i + 1:]
            assert nxt[0].step is Step.WAIT_FOR_KEY_SWITCH and nxt[1].step is Step.REWRITE
            assert nxt[0].key_id == nxt[1].key_id == s.key_id


@pytest.mark.parametrize(("desired", "observed", "ledger"), TABLE)
def test_network_access_never_changes_while_enabled(desired: PolicySpec, observed: ClusterState,
                                                    ledger: PolicyStatus) -> None:
    enabled, mode = observed.kms_enabled, observed.network_access
    for s in plan_next_step(desired, observed, ledger).steps:
        if s.step is Step.UPDATE:
            assert enabled and s.network_access == mode
        elif s.step is Step.ENABLE:
            assert not enabled
            enabled, mode = True, s.network_access
        elif s.step is Step.DISABLE:
            assert enabled
            enabled = False


@pytest.mark.parametrize(("desired", "observed", "ledger"), TABLE)
def test_each_write_replaces_the_key_every_secret_is_under(desired: PolicySpec, observed: ClusterState,
                                                           ledger: PolicyStatus) -> None:
    # Invariant 1 on the whole plan: before each write the plan has rewritten to the key it replaces.
    under = ledger.encrypted_with
    for s in plan_next_step(desired, observed, ledger).steps:
        if s.step is Step.REWRITE:
            under = s.key_id
        elif s.writes:
            assert under == s.replaces


# ------------------------------------------------------------------------------- Check step


def test_blocking_finding_blocks_with_fix_and_keeps_other_findings() -> None:
    findings = [Finding("KeyVaultRecoveryDisabled", Severity.WARN, "purge protection off", "az keyvault update"),
                Finding("KeyExpired", Severity.BLOCK, "key expired", "az keyvault key set-attributes"),
                Finding("KeyDisabled", Severity.BLOCK, "key disabled", "enable it")]
    d = plan_next_step(spec(True, KB), cluster(True, KA), status(KA), findings=findings)
    assert d.next_step is Step.BLOCKED and d.reason == "KeyDisabled"  # first in the stable order
    assert "(+1 more)" in d.message and d.fix == "enable it" and d.phase == "Blocked"
    assert [f.reason for f in d.warnings] == ["KeyExpired", "KeyVaultRecoveryDisabled"]
    assert names(d)[0] == "Check"


def test_wait_finding_waits() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA), status(KA),
                       findings=[Finding("ClusterBusy", Severity.WAIT, "busy", "none")])
    assert d.next_step is Step.WAIT and d.reason == "ClusterBusy" and d.delay


def test_warnings_do_not_stop_the_write() -> None:
    w = Finding("KeyExpiresSoon", Severity.WARN, "soon", "extend")
    d = plan_next_step(spec(True, KB), cluster(True, KA), status(KA), findings=[w])
    assert d.next_step is Step.UPDATE and d.warnings == (w,)


def test_findings_are_ignored_when_the_next_step_is_not_a_check() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KB), status(KA, proven=KB),
                       findings=[Finding("KeyExpired", Severity.BLOCK, "x")])
    assert d.next_step is Step.REWRITE


# ------------------------------------------------------------------------- pause, deletion


def test_paused_rewrite_waits() -> None:
    d = plan_next_step(spec(True, KB, paused=True), cluster(True, KB), status(KA, proven=KB))
    assert d.next_step is Step.WAIT and d.reason == "RewritePaused" and d.phase == "Paused"


def test_deleting_with_retain_leaves_aks_alone() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA), status(KA), deleting=True)
    assert d.next_step is Step.READY and d.reason == "Retained" and d.phase == "Deleting"


def test_deleting_with_disable_disables_then_is_ready() -> None:
    d = plan_next_step(spec(True, KA, deletion="Disable"), cluster(True, KA), status(KA), deleting=True)
    assert names(d) == ["Check", "Disable", "WaitForKeySwitch", "Rewrite", "Verify"] and d.phase == "Deleting"
    d = plan_next_step(spec(True, KA, deletion="Disable"), cluster(False), status(IDENTITY), deleting=True)
    assert d.next_step is Step.READY


# ------------------------------------------------------------------------ invariant 8: restarts


@pytest.mark.parametrize(("desired", "observed", "ledger"), TABLE)
def test_same_inputs_same_decision(desired: PolicySpec, observed: ClusterState, ledger: PolicyStatus) -> None:
    for findings in (None, []):
        a = plan_next_step(desired, observed, ledger, findings=findings, now=NOW)
        b = plan_next_step(dataclasses.replace(desired), dataclasses.replace(observed),
                           dataclasses.replace(ledger), findings=findings, now=NOW)
        assert a == b


def test_resume_after_restart_mid_rewrite_does_not_redo_the_switch() -> None:
    st = status(KA, proven=KB)
    st = dataclasses.replace(st, rewrite=dataclasses.replace(st.rewrite, last_namespace="team-17",
                                                             namespaces_done=17))
    d = plan_next_step(spec(True, KB), cluster(True, KB), st)
    assert d.next_step is Step.REWRITE and names(d) == ["Rewrite", "Verify"]


# ------------------------------------------------------------------------------- the ledger


def rec(key: str) -> KeyRecord:
    return key_record(key)


def ids(records: tuple[KeyRecord, ...]) -> list[str]:
    return [r.key_id for r in records]


def test_rotate_a_to_b_shifts_slots() -> None:
    ledger = ledger_after_write(KeyLedger(current=rec(KA)), written=KB, before=KA, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ledger.retirable) == (KB, KA, ())
    assert ledger.current.name == "kv1/etcd/bbbbbbbb"


def test_second_rotation_retires_the_oldest() -> None:
    ledger = ledger_after_write(KeyLedger(current=rec(KB), previous=rec(KA)), written=KC, before=KB, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id) == (KC, KB)
    assert ids(ledger.retirable) == [KA]
    assert ledger.retirable[0].retired_at == "2026-06-01T00:00:00Z"


def test_rewrite_completion_after_rotation_retires_nothing() -> None:
    # B's rewrite is done, but AKS still loads A in its previous slot until the next rotation.
    before = KeyLedger(current=rec(KB), previous=rec(KA))
    assert ledger_after_rewrite(before, completed=KB, at=NOW) == before


def test_disable_keeps_the_key_loaded_for_reads_as_previous() -> None:
    ledger = ledger_after_write(KeyLedger(current=rec(KB), previous=rec(KA)), written=IDENTITY, before=KB, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ids(ledger.retirable)) == ("", KB, [KA])
    # The identity rewrite frees B of Secrets, but AKS still loads it: not retirable yet.
    done = ledger_after_rewrite(ledger, completed=IDENTITY, at=NOW)
    assert done == ledger


def test_enable_after_disable_keeps_the_key_aks_still_reads() -> None:
    ledger = ledger_after_write(KeyLedger(previous=rec(KA)), written=KB, before=IDENTITY, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ledger.retirable) == (KB, KA, ())
    # The next rotation moves A out of AKS's slots.
    ledger = ledger_after_write(ledger, written=KC, before=KB, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ids(ledger.retirable)) == (KC, KB, [KA])


def test_enable_the_key_it_was_disabled_from() -> None:
    ledger = ledger_after_write(KeyLedger(previous=rec(KA)), written=KA, before=IDENTITY, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ledger.retirable) == (KA, "", ())


def test_key_used_again_leaves_the_retirable_list() -> None:
    ledger = ledger_after_write(KeyLedger(current=rec(KB), previous=rec(KC), retirable=(rec(KA),)),
                                written=KA, before=KB, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ids(ledger.retirable)) == (KA, KB, [KC])
    assert ledger.current.retired_at == ""


def test_rotate_back_to_previous_keeps_both() -> None:
    ledger = ledger_after_write(KeyLedger(current=rec(KB), previous=rec(KA)), written=KA, before=KB, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ledger.retirable) == (KA, KB, ())


def test_adoption_fills_current_on_first_completed_rewrite() -> None:
    ledger = ledger_after_rewrite(KeyLedger(), completed=KA, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ledger.retirable) == (KA, "", ())


def test_change_outside_operator_is_folded_in_on_rewrite() -> None:
    ledger = ledger_after_rewrite(KeyLedger(current=rec(KB), previous=rec(KA)), completed=KC, at=NOW)
    assert (ledger.current.key_id, ledger.previous.key_id, ids(ledger.retirable)) == (KC, KB, [KA])


def test_retirable_list_is_bounded_and_deduplicated() -> None:
    keys = [f"{KEY}/{i:032x}" for i in range(20)]
    ledger = KeyLedger()
    for old, new in itertools.pairwise(keys):
        ledger = ledger_after_write(ledger, written=new, before=old, at=NOW)
    assert len(ledger.retirable) == 16 and ids(ledger.retirable)[-1] == keys[-3]
    again = ledger_after_write(ledger, written=keys[-1], before=keys[-2], at=NOW)
    assert again.retirable == ledger.retirable


def test_refresh_ledger_copies_key_vault_attributes() -> None:
    exp = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    ledger = refresh_ledger(KeyLedger(current=rec(KB), previous=rec(KA)),
                            [KeyState(KA, enabled=False, expires_on=exp)])
    assert ledger.previous.enabled is False and ledger.previous.expires_on == "2027-01-01T00:00:00Z"
    assert ledger.current == rec(KB)


# --------------------------------------------------------- handler flow, end to end by hand


def test_rotation_walkthrough_with_status_helpers() -> None:
    """A→B→C as the handlers would do it; the ledger ends with A retirable, nothing else."""
    st = status(KA, keys=KeyLedger(current=rec(KA)))
    aks = cluster(True, KA)
    for new in (KB, KC):
        want = spec(True, new)
        d = plan_next_step(want, aks, st, findings=[])
        assert d.next_step is Step.UPDATE
        st = dataclasses.replace(st, operation=operation_for(d.step, started_at=NOW, canary_resource_version="7"))
        aks = cluster(True, new, state="Updating")
        assert plan_next_step(want, aks, st).next_step is Step.WAIT
        aks = cluster(True, new)
        d = plan_next_step(want, aks, st)
        assert d.next_step is Step.WAIT_FOR_KEY_SWITCH
        st = status_after_key_switch(st, d.step, at=NOW)
        assert st.operation == OperationStatus() and st.rewrite.target_key_id == new
        d = plan_next_step(want, aks, st)
        assert d.next_step is Step.REWRITE
        st = status_after_rewrite(st, at=NOW)
        assert st.encrypted_with != new and st.rewrite.completed_at
        d = plan_next_step(want, aks, st, now=NOW)
        assert d.next_step is Step.VERIFY and names(d) == ["Verify"]
        st = status_after_verify_pass(st, new, reencrypted=0, failed=0, at=NOW, retry_after=dt.timedelta(90))
        assert st.encrypted_with == new and st.verification.verified_at and st.verification.passes == 1
        assert plan_next_step(want, aks, st).next_step is Step.READY
    assert (st.keys.current.key_id, st.keys.previous.key_id, ids(st.keys.retirable)) == (KC, KB, [KA])


def test_disable_walkthrough() -> None:
    st = status(KB, keys=KeyLedger(current=rec(KB), previous=rec(KA)))
    d = plan_next_step(spec(False), cluster(True, KB), st, findings=[])
    op = operation_for(d.step, started_at=NOW)
    assert op.step == "Disable" and op.target_key_id == ""
    st = dataclasses.replace(st, operation=op)
    d = plan_next_step(spec(False), cluster(False), st)
    st = status_after_key_switch(st, d.step, at=NOW)
    assert (st.keys.current.key_id, st.keys.previous.key_id, ids(st.keys.retirable)) == ("", KB, [KA])
    st = status_after_rewrite(st, at=NOW)
    st = status_after_verify_pass(st, IDENTITY, reencrypted=0, failed=0, at=NOW, retry_after=dt.timedelta(90))
    assert st.encrypted_with == IDENTITY
    assert (st.keys.current.key_id, st.keys.previous.key_id, ids(st.keys.retirable)) == ("", KB, [KA])
    assert plan_next_step(spec(False), cluster(False), st).next_step is Step.READY


def test_adoption_walkthrough_proves_switch_without_shifting_slots() -> None:
    st = PolicyStatus()
    d = plan_next_step(spec(True, KA), cluster(True, KA), st)
    assert d.next_step is Step.WAIT_FOR_KEY_SWITCH
    st = status_after_key_switch(st, d.step, at=NOW)
    assert st.keys == KeyLedger()
    st = status_after_rewrite(st, at=NOW)
    assert st.keys == KeyLedger() and st.encrypted_with == ""
    st = status_after_verify_pass(st, KA, reencrypted=0, failed=0, at=NOW, retry_after=dt.timedelta(90))
    assert st.keys.current.key_id == KA and st.encrypted_with == KA


def test_write_takes_a_reused_key_off_the_retirable_list_at_once() -> None:
    st = status(IDENTITY, keys=KeyLedger(previous=rec(KA), retirable=(rec(KB), rec(KC))))
    d = plan_next_step(spec(True, KB), cluster(False), st, findings=[])
    st = status_after_write(st, d.step, at=NOW, canary_resource_version="41")
    assert ids(st.keys.retirable) == [KC]
    assert st.operation == OperationStatus("Enable", KB, "2026-06-01T00:00:00Z", "41")
    assert st.keys.previous.key_id == KA  # slots shift only when the switch is proven


def test_operation_for_refuses_non_writes() -> None:
    with pytest.raises(ValueError, match="not an ARM write"):
        operation_for(PlannedStep(Step.REWRITE, KA), started_at=NOW)


def test_status_after_rewrite_needs_a_target() -> None:
    with pytest.raises(ValueError, match="no rewrite target"):
        status_after_rewrite(PolicyStatus(), at=NOW)


# ------------------------------------------------------------------- verification (invariant 10)


def _rewritten(key: str, *, seen: int = 100, already_current: int = 0, follows_write: bool = True) -> PolicyStatus:
    """Ledger behind ``key`` (encryptedWith KA), switch proven, rewrite toward ``key`` completed."""
    st = status(KA, proven=key, keys=KeyLedger(current=rec(key), previous=rec(KA)))
    rw = dataclasses.replace(st.rewrite, completed_at="2026-06-01T00:00:00Z", seen=seen,
                             reencrypted=seen - already_current, already_current=already_current,
                             follows_write=follows_write)
    return dataclasses.replace(st, rewrite=rw)


def test_completed_rewrite_is_not_encrypted_until_a_clean_verification_pass() -> None:
    st = status_after_rewrite(_rewritten(KB), at=NOW)
    assert st.encrypted_with == KA and st.verification.target_key_id == KB and st.verification.passes == 0
    d = plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW)
    assert d.next_step is Step.VERIFY and names(d) == ["Verify"] and d.phase == "Verifying"
    assert "pass 1" in d.message


def test_dirty_verification_pass_waits_then_passes_again() -> None:
    st = status_after_rewrite(_rewritten(KB), at=NOW)
    st = status_after_verify_pass(st, KB, reencrypted=7, failed=0, at=NOW, retry_after=dt.timedelta(seconds=90))
    v = st.verification
    assert st.encrypted_with == KA, "a pass that re-encrypted anything proves nothing"
    assert (v.passes, v.last_pass_reencrypted, v.next_pass_at, v.verified_at) == (1, 7, "2026-06-01T00:01:30Z", "")
    d = plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW)
    assert d.next_step is Step.WAIT and d.reason == "ReplicaBehind" and d.delay == 90
    assert "re-encrypted 7" in d.message and names(d) == ["Verify"]
    later = plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW + dt.timedelta(seconds=91))
    assert later.next_step is Step.VERIFY and "pass 2" in later.message
    st = status_after_verify_pass(st, KB, reencrypted=0, failed=0, at=NOW, retry_after=dt.timedelta(seconds=90))
    assert st.encrypted_with == KB and st.verification.passes == 2 and st.verification.verified_at
    assert (st.keys.current.key_id, st.keys.previous.key_id) == (KB, KA)
    assert plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW).next_step is Step.READY


def test_verification_pass_with_retried_errors_is_not_clean() -> None:
    """A replica that cannot read the new key answers 500: retried writes mean one was behind."""
    st = status_after_rewrite(_rewritten(KB), at=NOW)
    st = status_after_verify_pass(st, KB, reencrypted=0, failed=0, retried=4, at=NOW,
                                  retry_after=dt.timedelta(seconds=90))
    assert st.encrypted_with == KA and st.verification.next_pass_at
    assert plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW).reason == "ReplicaBehind"


def test_verification_pass_with_failures_stalls_until_the_next_pass() -> None:
    st = status_after_rewrite(_rewritten(KB), at=NOW)
    st = status_after_verify_pass(st, KB, reencrypted=0, failed=1, at=NOW, retry_after=dt.timedelta(seconds=30))
    d = plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW)
    assert d.next_step is Step.BLOCKED and d.reason == "VerifyFailed" and st.encrypted_with == KA


def test_verification_of_another_key_starts_from_pass_one() -> None:
    st = status_after_rewrite(_rewritten(KB), at=NOW)
    st = status_after_verify_pass(st, KB, reencrypted=3, failed=0, at=NOW, retry_after=dt.timedelta(hours=1))
    stale = dataclasses.replace(st, rewrite=dataclasses.replace(st.rewrite, target_key_id=KC))
    d = plan_next_step(spec(True, KC), cluster(True, KC), stale, now=NOW)
    assert d.next_step is Step.VERIFY and "pass 1" in d.message


def test_failed_rewrite_is_not_done_and_a_retry_starts_a_new_run() -> None:
    st = _rewritten(KB)
    st = dataclasses.replace(st, rewrite=dataclasses.replace(st.rewrite, failed=1, failures=("ns/x: 403",),
                                                             last_namespace="zz", namespaces_done=9))
    assert plan_next_step(spec(True, KB), cluster(True, KB), st).next_step is Step.REWRITE
    retry = rewrite_retry(st, at=NOW).rewrite
    assert (retry.target_key_id, retry.failed, retry.failures, retry.completed_at, retry.last_namespace) == \
        (KB, 0, (), "", "")
    assert retry.seen == retry.already_current == retry.reencrypted == retry.namespaces_done == 0
    assert retry.follows_write


def test_large_already_current_share_after_our_write_is_a_warning() -> None:
    st = status_after_rewrite(_rewritten(KB, already_current=47), at=NOW)
    d = plan_next_step(spec(True, KB), cluster(True, KB), st, now=NOW)
    assert d.next_step is Step.VERIFY
    assert [w.reason for w in d.warnings] == ["AlreadyCurrentAfterSwitch"] and "47 of 100" in d.warnings[0].message
    quiet = status_after_rewrite(_rewritten(KB, already_current=47, follows_write=False), at=NOW)
    assert plan_next_step(spec(True, KB), cluster(True, KB), quiet, now=NOW).warnings == ()
    few = status_after_rewrite(_rewritten(KB, already_current=2), at=NOW)
    assert plan_next_step(spec(True, KB), cluster(True, KB), few, now=NOW).warnings == ()


def test_key_switch_after_our_write_marks_the_run_as_following_it() -> None:
    st = dataclasses.replace(status(KA), operation=OperationStatus("Update", KB, "2026-06-01T00:00:00Z", "5"))
    after = status_after_key_switch(st, PlannedStep(Step.WAIT_FOR_KEY_SWITCH, KB), at=NOW)
    assert after.rewrite.follows_write and after.verification.target_key_id == ""
    adopted = status_after_key_switch(status(KA), PlannedStep(Step.WAIT_FOR_KEY_SWITCH, KB), at=NOW)
    assert not adopted.rewrite.follows_write


def test_paused_spec_holds_the_verification_too() -> None:
    st = status_after_rewrite(_rewritten(KB), at=NOW)
    s = dataclasses.replace(spec(True, KB), rewrite=dataclasses.replace(spec(True, KB).rewrite, paused=True))
    d = plan_next_step(s, cluster(True, KB), st, now=NOW)
    assert d.next_step is Step.WAIT and d.reason == "RewritePaused" and names(d) == ["Verify"]


# --------------------------------------------------------------------------- status output


def test_describe_names_the_plan_and_the_fix() -> None:
    d = plan_next_step(spec(True, KB), cluster(True, KA), status(KA))
    assert describe(d) == ("checking prerequisites for Update to kv1/etcd/bbbbbbbb; "
                           "plan: Check → Update → WaitForKeySwitch → Rewrite → Verify")
    b = plan_next_step(spec(True, KB), cluster(True, KA), status(KA),
                       findings=[Finding("KeyExpired", Severity.BLOCK, "key expired", "extend it")])
    assert describe(b).endswith(". Fix: extend it")
    r = plan_next_step(spec(True, KA), cluster(True, KA), status(KA))
    assert describe(r) == "AKS encrypts Secrets with kv1/etcd/aaaaaaaa and every Secret is written under it"


def test_plan_status_tracks_progress_through_one_generation() -> None:
    full = plan_next_step(spec(True, KB), cluster(True, KA), status(KA))
    ps = plan_status(PlanStatus(), full, 3)
    assert ps == PlanStatus(("Check", "Update", "WaitForKeySwitch", "Rewrite", "Verify"), 0, KB, 3)
    after = plan_next_step(spec(True, KB), cluster(True, KB), status(KA, proven=KB))
    assert plan_status(ps, after, 3).current == 3
    done = plan_next_step(spec(True, KB), cluster(True, KB), status(KB))
    assert plan_status(ps, done, 3).current == 5
    assert plan_status(ps, after, 4) == PlanStatus(("Rewrite", "Verify"), 0, KB, 4)  # new generation: new plan


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("1h30m", 5400), ("720h", 2592000), ("250ms", 0.25)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1d", "h", "1h 2m", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_ready_delay_follows_check_interval() -> None:
    s = dataclasses.replace(spec(True, KA), rotation=RotationSpec(check_interval="15m"))
    assert plan_next_step(s, cluster(True, KA), status(KA)).delay == 900


# ------------------------------------------------------------------ key switch without proof


def test_unproven_switch_after_failed_operation_says_how_to_redrive_aks() -> None:
    """AKS recorded the key but ended Failed: probing again cannot help, AKS's reconcile can."""
    d = key_switch_unproven("KeySwitchTimeout", "no agreement in 900s", spec(True, KB),
                            cluster(True, KB, state="Failed"), 30.0)
    assert (d.next_step, d.reason, d.phase) == (Step.BLOCKED, "KeySwitchTimeout", "WaitingForKeySwitch")
    assert "Failed after recording the key" in d.message
    assert "az aks update -g rg -n aks" in d.fix
    assert not d.writes  # invariant 2: the operator does not re-PUT on its own


def test_unproven_switch_on_a_succeeded_cluster_points_at_the_kms_plugin() -> None:
    d = key_switch_unproven("KeySwitchTimeout", "no agreement in 900s", spec(True, KB), cluster(True, KB), 30.0)
    assert d.message == "no agreement in 900s"
    assert "readyz" in d.fix and "az aks update" not in d.fix
    assert key_switch_unproven("CanaryGone", "gone", spec(), None, 30.0).fix == d.fix
