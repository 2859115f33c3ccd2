"""What ``aks-kms-operator plan`` prints: pure functions from a plan and its observations to a report.

The planner (``planning.plan_next_step``) and the preflight (``preflight.run_preflight``) decide; this
module only explains their answer to a reviewer of a pull request: every remaining step, the ARM
change each write implies (``securityProfile.azureKeyVaultKms`` before and after, computed with the
same ``kms_body`` the PUT sends), the preflight findings with their fixes, how many Secrets and
namespaces a rewrite touches and how long that takes at the configured rate, and what deserves a
warning. ``report`` builds a JSON-ready dict (``-o json``); ``render_text`` prints it for people;
``exit_code`` is what CI gates on.

Exit codes (like ``terraform plan -detailed-exitcode``):

* 0 (``EXIT_NO_CHANGE``): nothing to do; AKS and every Secret are where the policy wants them.
* 2 (``EXIT_CHANGE``): the operator would act (ARM writes and/or rewrites); nothing blocks it.
* 3 (``EXIT_BLOCKED``): a step is blocked; a human must act first (the findings say how).
* 1: the plan could not be computed (bad file, unreachable API, refused credentials); see ``plancmd``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api.v1alpha1 import PolicySpec, PolicyStatus
from .azure.clusters import kms_body
from .model import IDENTITY, ClusterState
from .planning import PLATFORM_KEY, Decision, PlannedStep, Step, short
from .preflight import Finding, Severity

EXIT_NO_CHANGE = 0
EXIT_ERROR = 1
EXIT_CHANGE = 2
EXIT_BLOCKED = 3

NO_CHANGE, CHANGE, BLOCKED = "NoChange", "ChangePlanned", "Blocked"
KMS_PATH = "properties.securityProfile.azureKeyVaultKms"


@dataclass(frozen=True)
class WriteCheck:
    """The preflight result for one ARM write of the plan (the Check before it)."""

    step_index: int  # index in PlanInputs.decision.steps of the write it guards
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class PlanInputs:
    """Everything ``plan`` observed, and the planner's answer. Built by ``plancmd``; pure data here."""

    name: str
    source: str  # "file <path>" or "cluster"
    spec: PolicySpec
    status: PolicyStatus
    cluster: ClusterState
    kms_before: Mapping[str, Any]  # the raw securityProfile.azureKeyVaultKms ARM reported
    decision: Decision
    checks: tuple[WriteCheck, ...] = ()
    secrets: int = 0
    namespaces: int = 0
    # False when the identity running plan may not list Secrets (a PR check often should not): sizes unknown.
    secrets_counted: bool = True
    key_switch_window: float = 90.0  # seconds every probe must agree (ReconcilerSettings)
    exists_in_cluster: bool = False
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


# ---------------------------------------------------------------------------------- pure pieces


def arm_changes(kms_before: Mapping[str, Any], steps: Sequence[PlannedStep]) -> list[tuple[dict[str, Any],
                                                                                         dict[str, Any]]]:
    """(before, after) of the KMS block for every write in ``steps``, in order: each write starts from
    what the previous one left, as AKS would."""
    current = dict(kms_before)
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for step in steps:
        if not step.writes:
            continue
        enabled = step.step is not Step.DISABLE and step.key_id != PLATFORM_KEY
        after = kms_body(current, enabled=enabled, key_id=step.key_id if enabled else "",
                         network_access=step.network_access or "Public", vault_resource_id=step.vault_resource_id)
        if step.managed:  # the Managed experience: kubernetesResourceObjectEncryptionProfile, shown alongside
            after = {**after, "infrastructureEncryption": "Enabled"}
        out.append((dict(current), after))
        current = after
    return out


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The fields whose value differs, in a stable order."""
    order = ("enabled", "keyId", "keyVaultNetworkAccess", "keyVaultResourceId", "infrastructureEncryption")
    names = sorted(set(before) | set(after), key=lambda n: order.index(n) if n in order else 9)
    return [(n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


def rewrite_estimate(secrets: int, rewrites: int, max_writes_per_second: float, key_switches: int,
                     key_switch_window: float) -> dict[str, Any]:
    """Writes and, with a rate cap, seconds: each Rewrite and each (at least one) verification pass
    writes every Secret once; each key switch is proven over a full probe window."""
    writes = secrets * rewrites * 2
    out: dict[str, Any] = {"secretWrites": writes, "maxWritesPerSecond": max_writes_per_second,
                           "keySwitchSeconds": key_switches * key_switch_window}
    if max_writes_per_second > 0:
        out["estimatedSeconds"] = math.ceil(writes / max_writes_per_second + key_switches * key_switch_window)
    else:
        out["estimatedSeconds"] = None
    return out


def duration(seconds: float) -> str:
    """``45s``, ``12m 30s``, ``3h 05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def _finding(f: Finding, step: int | None) -> dict[str, Any]:
    return {"reason": str(f.reason), "severity": str(f.severity), "message": f.message, "fix": f.fix,
            "beforeStep": step}


def _step_text(step: PlannedStep, secrets: int | None, namespaces: int | None) -> str:
    key = short(step.key_id)
    if step.step is Step.CHECK:
        return "preflight: every check that could make the next write fail, before it is sent"
    if step.managed and step.writes:
        what = "the platform-managed key" if step.key_id == PLATFORM_KEY else f"the customer-managed key {key}"
        verb = "migrate from legacy to" if step.step is Step.MIGRATE else "set"
        return (f"ARM PUT: {verb} the Managed experience (infrastructureEncryption Enabled) with {what}; AKS "
                "re-encrypts every Secret itself; irreversible")
    if step.step is Step.ENABLE:
        return f"ARM PUT: enable KMS with {key} ({step.network_access or 'Public'} network access)"
    if step.step is Step.UPDATE:
        return f"ARM PUT: rotate to {key}"
    if step.step is Step.DISABLE:
        return "ARM PUT: disable KMS (new Secrets are stored without KMS)"
    if step.step is Step.WAIT_FOR_KEY_SWITCH:
        target = "without KMS" if step.key_id == IDENTITY else f"with {key}"
        return f"prove every API server writes {target} (canary probes over a full window)"
    target = "without KMS" if step.key_id == IDENTITY else f"under {key}"
    if step.step is Step.REWRITE:
        size = "every Secret" if secrets is None else f"{secrets} Secret(s) in {namespaces} namespace(s)"
        return f"re-encrypt {size} {target} (metadata-only no-op writes)"
    if step.step is Step.VERIFY:
        return (f"verification pass: write every Secret again over fresh connections; done when none is "
                f"re-encrypted {target}")
    return step.step.value


def _warnings(inputs: PlanInputs, steps: Sequence[PlannedStep], blocked: bool) -> list[str]:
    out: list[str] = []
    spec, cluster = inputs.spec, inputs.cluster
    kinds = [s.step for s in steps]
    if Step.DISABLE in kinds and Step.ENABLE in kinds:
        out.append("Secrets pass through plaintext: AKS cannot change keyVaultNetworkAccess or the vault while "
                   "KMS is enabled, so the plan disables KMS, rewrites every Secret without KMS, then enables it "
                   "again and rewrites. Between the two, etcd holds Secrets unencrypted.")
    elif Step.DISABLE in kinds:
        out.append("KMS will be disabled: after the rewrite every Secret is stored in etcd without KMS "
                   "encryption. Enabling again later is another full change (enable, rewrite, verify).")
    if not inputs.status.encrypted_with and steps and steps[0].step in (Step.WAIT_FOR_KEY_SWITCH, Step.REWRITE,
                                                                         Step.VERIFY):
        out.append("No ledger yet (a new policy, or one never reconciled): the operator first proves every Secret "
                   "is written the way AKS encrypts now, so the ledger starts from a proven state. That adds a "
                   "rewrite and a verification pass before any ARM write.")
    if any(s.writes for s in steps):
        out.append("Each ARM write rolls the AKS API servers (minutes) and cannot be recalled once sent; "
                   "a later change is a new write.")
    old = [r for r in (inputs.status.keys.previous,) if r.key_id]
    rotations = sum(1 for s in steps if s.step is Step.UPDATE or (s.step is Step.ENABLE and cluster.kms_enabled))
    if rotations and old:
        out.append(f"After this rotation AKS no longer loads {short(old[0].key_id)}: it becomes retirable. "
                   "Deleting or purging a key is irreversible; do it only once status.keys.retirable lists it.")
    if spec.rewrite.paused and any(s.step in (Step.REWRITE, Step.VERIFY) for s in steps):
        out.append("spec.rewrite.paused is true: the plan stops before the rewrite until it is cleared.")
    if spec.deletion_policy == "Disable":
        out.append("deletionPolicy Disable: deleting this policy disables KMS and rewrites every Secret "
                   "without KMS.")
    if blocked:
        out.append("BLOCKED: the operator would stop at the blocked step and write nothing to Azure until the "
                   "finding is fixed.")
    return out


def outcome_of(decision: Decision, checks: Sequence[WriteCheck]) -> str:
    if decision.next_step is Step.BLOCKED or any(f.blocks for c in checks for f in c.findings):
        return BLOCKED
    if decision.next_step is Step.READY and not decision.steps:
        return NO_CHANGE
    return CHANGE


def exit_code(report: Mapping[str, Any]) -> int:
    return {NO_CHANGE: EXIT_NO_CHANGE, CHANGE: EXIT_CHANGE, BLOCKED: EXIT_BLOCKED}[report["outcome"]]


def report(inputs: PlanInputs) -> dict[str, Any]:
    """The plan as a JSON-ready dict (the ``-o json`` output; ``render_text`` prints the same)."""
    decision = inputs.decision
    steps = list(decision.steps)
    c = inputs.cluster
    outcome = outcome_of(decision, inputs.checks)
    changes = iter(arm_changes(inputs.kms_before, steps))
    check_at = {chk.step_index: chk for chk in inputs.checks}
    rendered: list[dict[str, Any]] = []
    findings: list[dict[str, Any]] = []
    secrets = inputs.secrets if inputs.secrets_counted else None
    namespaces = inputs.namespaces if inputs.secrets_counted else None
    for i, step in enumerate(steps):
        item: dict[str, Any] = {"index": i + 1, "step": step.step.value, "label": str(step),
                                "keyId": "" if step.key_id == IDENTITY else step.key_id,
                                "description": _step_text(step, secrets, namespaces),
                                "writesArm": step.writes}
        if step.writes:
            before, after = next(changes)
            item["arm"] = {"path": KMS_PATH, "before": before, "after": after,
                           "changed": [{"field": n, "before": b, "after": a} for n, b, a in changed_fields(before,
                                                                                                            after)]}
        chk = check_at.get(i)
        if chk is not None:
            item["blocked"] = any(f.blocks for f in chk.findings)
            findings += [_finding(f, i + 1) for f in chk.findings]
        rendered.append(item)
    # The planner's own findings (KMS v1, already-current) and a Blocked decision with no Check.
    for f in decision.warnings:
        if not any(d["reason"] == str(f.reason) and d["message"] == f.message for d in findings):
            findings.append(_finding(f, None))
    if decision.next_step is Step.BLOCKED and not any(d["reason"] == decision.reason for d in findings):
        findings.insert(0, {"reason": decision.reason, "severity": str(Severity.BLOCK), "message": decision.message,
                            "fix": decision.fix, "beforeStep": 1 if steps else None})
    rewrites = sum(1 for s in steps if s.step is Step.REWRITE)
    switches = sum(1 for s in steps if s.step is Step.WAIT_FOR_KEY_SWITCH)
    estimate = rewrite_estimate(secrets or 0, rewrites, inputs.spec.rewrite.max_writes_per_second, switches,
                                inputs.key_switch_window)
    if secrets is None:
        estimate = {**estimate, "secretWrites": None, "estimatedSeconds": None}
    return {
        "policy": inputs.name,
        "source": inputs.source,
        "existsInCluster": inputs.exists_in_cluster,
        "cluster": {"subscriptionId": inputs.spec.cluster.subscription_id,
                    "resourceGroup": inputs.spec.cluster.resource_group, "name": inputs.spec.cluster.name,
                    "provisioningState": c.provisioning_state, "kubernetesVersion": c.kubernetes_version,
                    "kms": dict(inputs.kms_before)},
        "encryptedWith": inputs.status.encrypted_with,
        "outcome": outcome,
        "exitCode": {NO_CHANGE: EXIT_NO_CHANGE, CHANGE: EXIT_CHANGE, BLOCKED: EXIT_BLOCKED}[outcome],
        "next": {"step": decision.next_step.value, "reason": decision.reason,
                 # the planner's message for a write reads "Disable to identity"; the step's own words read better
                 "message": _step_text(next(s for s in steps if s.writes), secrets, namespaces)
                 if decision.writes and any(s.writes for s in steps) else decision.message,
                 "fix": decision.fix},
        "steps": rendered,
        "armWrites": sum(1 for s in steps if s.writes),
        "findings": findings,
        "rewrite": {"secrets": secrets, "namespaces": namespaces, "runs": rewrites, **estimate},
        "warnings": _warnings(inputs, steps, outcome == BLOCKED),
    }


# ------------------------------------------------------------------------------------ text output


def _kms_line(kms: Mapping[str, Any]) -> str:
    if not kms.get("enabled"):
        return "KMS disabled"
    vault = f", vault {kms.get('keyVaultResourceId')}" if kms.get("keyVaultResourceId") else ""
    access = kms.get("keyVaultNetworkAccess") or "Public"
    return f"KMS enabled, key {short(str(kms.get('keyId') or ''))}, {access}{vault}"


def _size(rw: Mapping[str, Any]) -> str:
    if rw["secrets"] is None:
        return "Secrets not counted (this identity may not list Secrets)"
    return f"{rw['secrets']} Secret(s) in {rw['namespaces']} namespace(s)"


def _value(v: Any) -> str:
    if v is None:
        return "(unset)"
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if v == "" else str(v)


def render_text(rep: Mapping[str, Any]) -> str:
    """The report for people: steps with their ARM change, findings with fixes, rewrite size, warnings."""
    c = rep["cluster"]
    written = short(rep["encryptedWith"]) if rep["encryptedWith"] else "(not recorded yet)"
    lines = [f"ClusterEncryptionPolicy {rep['policy']} ({rep['source']}"
             f"{', exists in the cluster' if rep['existsInCluster'] else ', not in the cluster yet'})",
             f"  cluster   {c['resourceGroup']}/{c['name']} (subscription {c['subscriptionId']}), "
             f"provisioningState {c['provisioningState'] or '?'}, Kubernetes {c['kubernetesVersion'] or '?'}",
             f"  AKS now   {_kms_line(c['kms'])}",
             f"  Secrets   written under {written}"
             f"; {_size(rep['rewrite'])}",
             ""]
    if not rep["steps"]:
        lines.append(f"No change: {rep['next']['message']}.")
    else:
        lines.append(f"Plan: {len(rep['steps'])} step(s), {rep['armWrites']} ARM write(s); next: "
                     f"{rep['next']['step']} ({rep['next']['message']})")
        width = max(len(s["label"]) for s in rep["steps"])
        for s in rep["steps"]:
            mark = "  BLOCKED" if s.get("blocked") else ""
            lines.append(f"  {s['index']:>2}. {s['label']:<{width}}  {s['description']}{mark}")
            if s.get("arm"):
                pad = " " * width
                lines.append(f"      {pad}  PUT {s['arm']['path']}:")
                for ch in s["arm"]["changed"]:
                    lines.append(f"      {pad}    {ch['field']}: {_value(ch['before'])} → {_value(ch['after'])}")
    if rep["findings"]:
        lines += ["", "Preflight:"]
        for f in rep["findings"]:
            where = f" (before step {f['beforeStep']})" if f["beforeStep"] else ""
            lines.append(f"  [{f['severity']}] {f['reason']}{where}: {f['message']}")
            if f["fix"]:
                lines.append(f"        fix: {f['fix']}")
    elif rep["armWrites"]:
        lines += ["", f"Preflight: every check passes before each of the {rep['armWrites']} ARM write(s) "
                      "(later writes are checked against today's facts; the operator checks again right before each)."]
    rw = rep["rewrite"]
    if rw["runs"]:
        writes = "" if rw["secretWrites"] is None else f": {rw['secretWrites']} metadata-only write(s)"
        lines += ["", f"Rewrite: {rw['runs']} run(s) over {_size(rw)}, each followed by at least one verification "
                      f"pass{writes}."]
        if rw["secrets"] is None:
            lines.append("  estimate: unknown, Secrets not counted")
        elif rw["estimatedSeconds"] is not None:
            lines.append(f"  estimate: about {duration(rw['estimatedSeconds'])} at spec.rewrite.maxWritesPerSecond "
                         f"{rw['maxWritesPerSecond']:g}, including {duration(rw['keySwitchSeconds'])} of key-switch "
                         "proof (plus the AKS operations themselves, typically minutes each)")
        else:
            lines.append("  estimate: no rate cap (spec.rewrite.maxWritesPerSecond 0): as fast as the API server "
                         f"allows, plus {duration(rw['keySwitchSeconds'])} of key-switch proof and the AKS "
                         "operations; set maxWritesPerSecond for a bound")
    if rep["warnings"]:
        lines += ["", "Warnings:"]
        lines += [f"  ! {w}" for w in rep["warnings"]]
    verdict = {NO_CHANGE: "no change", CHANGE: "change planned", BLOCKED: "blocked"}[rep["outcome"]]
    lines += ["", f"Result: {verdict} (exit {rep['exitCode']}). plan wrote nothing to Azure or Kubernetes."]
    return "\n".join(lines) + "\n"
