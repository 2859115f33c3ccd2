"""A real etcd + kube-apiserver, started once per test session, with our CRD installed.

If the binaries are missing the session errors (it never skips): `make test` builds them first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aks_kms_lab.controlplane import ControlPlane

from ..support import wait_for

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "clusterencryptionpolicies.yaml"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    with cp:
        yield cp


@pytest.fixture(scope="session")
def crd_installed(control_plane: ControlPlane) -> ControlPlane:
    control_plane.apply(yaml.safe_load(CRD.read_text()))

    def established() -> bool:
        status, body = control_plane.request(
            "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/clusterencryptionpolicies.aks-kms.dev")
        conds = {c["type"]: c["status"] for c in ((body or {}).get("status") or {}).get("conditions") or []}
        return status == 200 and conds.get("Established") == "True"

    wait_for(established, what="CRD Established")
    # discovery needs a moment more before kubectl can resolve the short name
    wait_for(lambda: control_plane.request("GET", "/apis/aks-kms.dev/v1alpha1")[0] == 200, what="discovery")
    return control_plane
