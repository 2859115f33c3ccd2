"""Helpers of the Managed KMS experience e2e modules (issue 12): one lab each, since the Managed
experience cannot be left and two labs in one process only add load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aks_kms_lab import lab
from aks_kms_lab.world import KEY_NAME, PUBLIC_VAULT

from .conftest import LabHarness, condition, running_lab

SECRETS = 60
VERSIONLESS = f"https://{PUBLIC_VAULT}.vault.azure.net/keys/{KEY_NAME}"
os.environ.setdefault("LAB_AKS_KEY_DETECTION_SECONDS", "5")  # AKS: about 6 hours


def patch_spec(h: LabHarness, spec: dict[str, Any], name: str = "default") -> None:
    code, out = h.cp.request("PATCH", f"{lab.POLICIES}/{name}", {"spec": spec},
                             content_type="application/merge-patch+json")
    assert code == 200, out


def puts(h: LabHarness) -> list[dict[str, Any]]:
    return [w.summary for w in h.runtime.fake.writes if w.method == "PUT" and "managedClusters" in w.path]


def verified(h: LabHarness, expect: str) -> lab.LabVerification:
    result = lab.verify_lab(h.root)
    assert result.ok and result.expected == expect, result.render()
    return result


def managed_lab(root: Path) -> Iterator[LabHarness]:
    """The lab of one Managed module (a module fixture yields from it): SECRETS in 3 namespaces."""
    with running_lab(root, secrets=SECRETS, namespaces=3) as h:
        yield h


def managed(status: dict[str, Any], key_management: str = "") -> bool:
    """Ready on the Managed experience (and with this keyManagement, when given), as AKS reports it."""
    cluster = status.get("cluster") or {}
    return cluster.get("experience") == "Managed" and condition(status, "Ready").get("status") == "True" and \
        key_management in ("", cluster.get("keyManagement"))
