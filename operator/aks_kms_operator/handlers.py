"""kopf handlers: translate events into calls of the domain code and write the result to status.

Handlers hold no logic of their own. Registering them is a side effect of importing this module,
which only ``aks_kms_operator.cli run`` does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from .api import v1alpha1 as api
from .azure import build_gateways
from .azure.config import AzureSettings
from .kube import CredentialSource, KubeClient, KubeError
from .leader import LeaderElector, LeaderSettings, standby_liveness
from .planning import Step
from .reconciler import Reconciler, ReconcilerSettings

FINALIZER = f"{api.GROUP}/finalizer"
RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Operator-wide settings; why each one is set is said next to it."""
    # Our own finalizer name in our own group, not kopf's default marker.
    settings.persistence.finalizer = FINALIZER
    # Watches behind cloud load balancers (AKS's included) can freeze silently; bookmarks plus an
    # inactivity timeout make kopf notice and re-establish them.
    settings.watching.inactivity_timeout = 300
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Keep kopf's bookkeeping off the status we own; its progress goes to annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Warnings and errors become Kubernetes Events on the policy; our own step Events are posted
    # explicitly by the reconciler.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "aks-kms-operator"
    # One cluster-scoped kind: cluster-wide CRD and namespace discovery is not needed.
    settings.scanning.disabled = True


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's client logs in from the same ``CredentialSource`` as ours: the official client's
    loaders (in-cluster service account with its rotating token, else the kubeconfig, exec plugins
    included). kopf calls this again after a 401; the source then reloads, so a rotated token or a
    re-run exec plugin reaches kopf too. Sync on purpose: kopf runs it in a thread, and an exec
    plugin may take a moment."""
    source = getattr(memo, "credentials", None) or CredentialSource.discover()
    return source.connection_info()


@kopf.on.startup()
async def connect(memo: kopf.Memo, **_: Any) -> None:
    """One credential source, one API client, one set of Azure gateways and one reconciler for the
    whole process; then, unless disabled, wait here until this replica leads (see ``leader``): no
    handler or daemon runs before every startup handler has returned."""
    if getattr(memo, "kube", None) is None:  # kopf retries a startup handler that raised
        memo.credentials = CredentialSource.discover()
        memo.kube = await KubeClient(memo.credentials, pool_size=64).__aenter__()
    leadership = LeaderSettings.from_env()
    if leadership.enabled and getattr(memo, "leader", None) is None:
        # A pool of its own and a short timeout: renewals never queue behind the rewrite's requests.
        lease_client = await KubeClient(memo.credentials, pool_size=2, timeout=leadership.renew_interval).__aenter__()
        memo.leader = LeaderElector(lease_client, leadership, on_lost=leadership.stop_acting())
        async with standby_liveness(getattr(memo, "liveness_endpoint", None)):
            await memo.leader.acquire()
        memo.leader.start_renewing()
    memo.reconciler = Reconciler(memo.kube, build_gateways(AzureSettings.from_env()), ReconcilerSettings.from_env(),
                                 events=_post_event)
    memo.wakeups = {}


@kopf.on.probe(id="leader")
def leader_probe(memo: kopf.Memo, **_: Any) -> str:
    """The liveness endpoint names the lease holder identity this process acts as."""
    leader: LeaderElector | None = getattr(memo, "leader", None)
    return leader.settings.identity if leader is not None else "leader election disabled"


@kopf.on.cleanup()
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    """Runs after kopf has stopped every daemon: only now may the standby take over."""
    leader: LeaderElector | None = getattr(memo, "leader", None)
    if leader is not None:
        await leader.release()
        await leader.kube.__aexit__(None, None, None)
    if getattr(memo, "kube", None) is not None:
        await memo.kube.__aexit__(None, None, None)


def _post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
def wake(name: str, memo: kopf.Memo, **_: Any) -> None:
    """A spec, label or annotation change: reconcile now instead of at the next requeue."""
    event = memo.wakeups.get(name)
    if event is not None:
        event.set()


@kopf.daemon(*RESOURCE, cancellation_timeout=30)
async def reconcile_loop(name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: kopf.Logger,
                         **_: Any) -> None:
    """Reconcile this policy, sleep for the delay the planner chose (or until it changes), repeat."""
    reconciler: Reconciler = memo.reconciler
    woken = memo.wakeups.setdefault(name, asyncio.Event())
    while not stopped:
        woken.clear()
        try:
            decision = await reconciler.reconcile(name)
        except (KubeError, OSError, TimeoutError, aiohttp.ClientError) as err:
            # The API server restarts while AKS applies a KMS change: expected, retry soon.
            logger.warning("reconcile of %s failed, retrying: %s", name, err)
            delay = min(reconciler.settings.error_retry, 5.0)
        except Exception:  # never let one bad reconcile end the loop for this policy
            logger.exception("reconcile of %s failed unexpectedly, retrying", name)
            delay = reconciler.settings.error_retry
        else:
            if decision is None:
                return
            delay = decision.delay if decision.delay is not None else 0.0
        if delay > 0:
            await _sleep(stopped, woken, delay)
    memo.wakeups.pop(name, None)


async def _sleep(stopped: kopf.DaemonStopped, woken: asyncio.Event, seconds: float) -> None:
    stop = asyncio.ensure_future(stopped.wait(seconds))
    wake = asyncio.ensure_future(woken.wait())
    try:
        await asyncio.wait({stop, wake}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stop, wake):
            task.cancel()


@kopf.on.delete(*RESOURCE)
async def finalize(name: str, spec: kopf.Spec, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Honour deletionPolicy before the finalizer goes: Retain leaves AKS alone; Disable disables
    KMS and re-encrypts every Secret back to plaintext first."""
    if spec.get("deletionPolicy", "Retain") == "Retain":
        logger.info("deletionPolicy Retain: AKS encryption is left as it is")
        return
    decision = await memo.reconciler.reconcile(name, deleting=True)
    if decision is not None and decision.next_step is not Step.READY:
        raise kopf.TemporaryError(f"deletionPolicy Disable: {decision.message}", delay=decision.delay or 10)
