"""``aks-kms-operator plan``: observe like a reconcile, decide like a reconcile, write nothing.

The reads are the operator's own: the policy and its status ledger from the API server (or the policy
from a file, with the status of the same-named policy if the cluster has one), the managed cluster
from ARM, key versions and the facts behind every preflight check from Key Vault and ARM (through
``Reconciler._gather_facts``, the very function a reconcile uses), and the Secrets' count from one
metadata-only list (``PartialObjectMetadataList``, paged with limit/continue: no Secret data). The
decision is ``planning.plan_next_step`` with the findings of ``preflight.run_preflight``, exactly as
the reconciler calls them; only here every write of the plan is checked against today's facts, not
just the next one, so a blocker three steps ahead shows up in the pull request.

Nothing is written: no ARM request other than GETs (and the token request), no Kubernetes request
other than GETs. ``tests/integration/test_plan.py`` counts both during a plan.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from . import planning, planview, startup
from .api import v1alpha1 as api
from .api.schema import parse
from .api.validate import Problem, validate_policy
from .azure import AzureGatewayError, AzureNotFound, build_gateways
from .azure.config import AzureSettings
from .kube import KubeClient, KubeError
from .planning import Decision, Step
from .preflight import run_preflight
from .reconciler import POLICIES, Observation, Reconciler, ReconcilerSettings, cluster_id


class PlanError(Exception):
    """The plan cannot be computed; the message is the one line printed (exit 1)."""


def load_policy_file(path: str) -> dict[str, Any]:
    """The one ClusterEncryptionPolicy in a YAML file (other kinds in a multi-document file are ignored)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise PlanError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PlanError(f"{path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from err
    policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == api.KIND]
    if len(policies) == 1:
        return policies[0]
    if not policies:
        if len(docs) == 1:
            return docs[0]  # validation names what is wrong with it (kind, apiVersion, …)
        kinds = ", ".join(sorted({str(d.get("kind")) for d in docs if isinstance(d, dict)}))
        raise PlanError(f"{path} holds no {api.KIND} (kinds: {kinds})")
    names = ", ".join(str((p.get("metadata") or {}).get("name")) for p in policies)
    raise PlanError(f"{path} holds {len(policies)} {api.KIND} objects ({names}): plan one at a time "
                    "(one file each, or plan NAME for a policy already in the cluster)")


def _problems_line(source: str, problems: list[Problem]) -> str:
    return f"{source} would be refused by the API server: " + "; ".join(str(p) for p in problems)


async def count_secrets_and_namespaces(kube: KubeClient, page_size: int = 500) -> tuple[int, int]:
    """(Secrets, namespaces holding them) from metadata-only list pages, never data. The rewrite engine's
    count_secrets needs one request, but only gives the total; a plan also names the namespaces."""
    secrets = 0
    namespaces: set[str] = set()
    async for page in kube.list_pages("/api/v1/secrets", limit=page_size, metadata_only=True):
        for item in page.get("items") or []:
            secrets += 1
            namespaces.add((item.get("metadata") or {}).get("namespace") or "")
    return secrets, len(namespaces)


async def gather(args: argparse.Namespace) -> planview.PlanInputs:
    """Every read ``plan`` makes, then the planner's decision; raises PlanError or StartupProblem."""
    from_file: dict[str, Any] | None = None
    if args.filename:
        from_file = load_policy_file(args.filename)
        problems = validate_policy(from_file)
        if problems:
            raise PlanError(_problems_line(args.filename, problems))
        name = from_file["metadata"]["name"]
    else:
        name = args.name
    source = startup.kube_source(args.kubeconfig or "")
    await startup.check_kubernetes(source)
    async with KubeClient(source, pool_size=4) as kube:
        try:
            stored: dict[str, Any] | None = await kube.request("GET", f"{POLICIES}/{name}")
        except KubeError as err:
            if err.status != 404:
                raise PlanError(f"reading {api.KIND} {name}: {err}") from err
            stored = None
        if from_file is None and stored is None:
            raise PlanError(f"the cluster has no {api.KIND} {name}: kubectl get {api.PLURAL} lists them, "
                            "or plan a file with -f")
        if from_file is not None and stored is not None:
            problems = validate_policy(from_file, old_spec=stored.get("spec") or {})
            if problems:
                raise PlanError(_problems_line(args.filename, problems))
        body: dict[str, Any] = dict(stored or {})
        if from_file is not None:
            # The file's spec on top of the stored object: status (the ledger) and creation time stay the cluster's.
            body = {**body, "spec": from_file.get("spec"),
                    "metadata": {**(body.get("metadata") or {}), "name": name,
                                 "creationTimestamp": (body.get("metadata") or {}).get("creationTimestamp")
                                 or "9999-12-31T23:59:59Z"}}
        counted = True
        try:
            secrets, namespaces = await count_secrets_and_namespaces(kube)
        except KubeError as err:
            if err.status != 403:
                raise PlanError(f"listing Secrets (metadata only): {err}") from err
            # A pull-request check may well run without the right to list Secrets: plan without their count.
            counted, secrets, namespaces = False, 0, 0
        warning = await asyncio.to_thread(startup.check_azure)
        if warning:
            raise PlanError(warning.split("; starting anyway")[0])
        azure = build_gateways(AzureSettings.from_env())
        settings = ReconcilerSettings.from_env()
        reconciler = Reconciler(kube, azure, settings)
        spec = parse(api.PolicySpec, body.get("spec"))
        obs = Observation(body, spec, parse(api.PolicyStatus, body.get("status")),
                          int((body.get("metadata") or {}).get("generation") or 0))
        now = dt.datetime.now(dt.UTC)
        try:
            obs.snapshot = await asyncio.to_thread(azure.clusters.get, cluster_id(spec))
        except AzureNotFound as err:
            raise PlanError(f"ARM has no managed cluster {cluster_id(spec)} ({err.message}): check spec.cluster "
                            "(subscriptionId, resourceGroup, name) against az aks list") from err
        except AzureGatewayError as err:
            raise PlanError(f"reading the managed cluster from ARM: {err}") from err
        try:
            if spec.rotation.follow_latest_version and spec.kms.enabled:
                obs.key_versions = await asyncio.to_thread(azure.keys.list_versions, spec.kms.key_id)
            conflict = await reconciler._conflict(obs)
            first = conflict or planning.plan_next_step(spec, obs.snapshot.state, obs.status,
                                                       key_versions=obs.key_versions, now=now)
            checks: list[planview.WriteCheck] = []
            for i, step in enumerate(first.steps):
                if step.writes:
                    facts = await asyncio.to_thread(reconciler._gather_facts, obs, step)
                    facts = dataclasses.replace(facts, secret_count=secrets)
                    checks.append(planview.WriteCheck(i, tuple(run_preflight(facts))))
        except AzureGatewayError as err:
            raise PlanError(f"reading Key Vault or ARM for the preflight: {err}") from err
        decision: Decision = first
        if first.next_step is Step.CHECK and checks:
            second = planning.plan_next_step(spec, obs.snapshot.state, obs.status, key_versions=obs.key_versions,
                                             findings=list(checks[0].findings), now=now)
            decision = dataclasses.replace(second, steps=first.steps)
        raw = obs.snapshot.raw
        kms = ((raw.get("properties") or {}).get("securityProfile") or {}).get("azureKeyVaultKms") or {}
        return planview.PlanInputs(
            name=name, source=f"file {args.filename}" if args.filename else "cluster", spec=spec, status=obs.status,
            cluster=obs.snapshot.state, kms_before=dict(kms), decision=decision, checks=tuple(checks),
            secrets=secrets, namespaces=namespaces, secrets_counted=counted,
            key_switch_window=settings.key_switch_window, exists_in_cluster=stored is not None, now=now)


def run_plan(args: argparse.Namespace) -> int:
    """Print the plan (text or JSON) and return its exit code; one line on stderr and 1 when it cannot."""
    try:
        inputs = asyncio.run(gather(args))
    except (PlanError, startup.StartupProblem) as err:
        print(f"aks-kms-operator plan: {err}", file=sys.stderr)
        return planview.EXIT_ERROR
    rep = planview.report(inputs)
    if args.output == "json":
        print(json.dumps(rep, indent=2, sort_keys=False, default=str))
    else:
        sys.stdout.write(planview.render_text(rep))
    return planview.exit_code(rep)
