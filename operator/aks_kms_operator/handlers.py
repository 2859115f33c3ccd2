"""kopf handlers: translate events into calls of the domain code and write the result to status.

Handlers hold no logic of their own. Registering them is a side effect of importing this module,
which only ``aks_kms_operator.cli run`` does.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import status as st
from .api import v1alpha1 as api

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


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
def acknowledge(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    """Record that the current generation has been seen; the reconciler takes it from here."""
    generation = int(body.metadata.get("generation") or 0)
    conds = list(status.get("conditions") or [])
    conds = st.set_condition(conds, st.RECONCILING, True, "Pending", "waiting for the first reconcile",
                             generation=generation)
    conds = st.set_condition(conds, st.STALLED, False, "Pending", "", generation=generation)
    conds = st.summarize(conds, generation=generation)
    patch.status["observedGeneration"] = generation
    patch.status["phase"] = "Pending"
    patch.status["message"] = "accepted; waiting for the first reconcile"
    patch.status["conditions"] = conds


@kopf.on.delete(*RESOURCE)
def finalize(spec: kopf.Spec, logger: kopf.Logger, **_: Any) -> None:
    """Honour deletionPolicy before letting the policy go."""
    if spec.get("deletionPolicy", "Retain") == "Retain":
        logger.info("deletionPolicy Retain: AKS encryption is left as it is")
