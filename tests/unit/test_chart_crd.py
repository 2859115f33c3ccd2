"""The chart agrees with the code: the same CRD (both written by `make crd`), the same canary name."""

from __future__ import annotations

from pathlib import Path

from aks_kms_operator.api import crd

REPO = Path(__file__).resolve().parents[2]
CHART_CRD = REPO / "charts" / "aks-kms-operator" / "crds" / "clusterencryptionpolicies.yaml"


def test_chart_crd_matches_the_model() -> None:
    assert CHART_CRD.read_text() == crd.render_yaml(), "the chart's crds/ is stale: run `make crd` and commit"


def test_chart_crd_is_a_plain_file() -> None:
    """A copy, not a symlink: Helm packaging, Windows checkouts and GitOps fetchers all read it."""
    assert not CHART_CRD.is_symlink()


def test_kustomize_base_uses_the_crd_directory() -> None:
    text = (REPO / "manifests" / "base" / "kustomization.yaml").read_text()
    assert "- ../crd" in text
    assert (REPO / "manifests" / "crd" / "kustomization.yaml").exists()


def test_role_names_the_operators_canary() -> None:
    """The Role limits get/patch/delete to one Secret name; it must be the one the operator uses."""
    from aks_kms_operator.rewrite.canary import CANARY_NAME

    role = (REPO / "charts" / "aks-kms-operator" / "templates" / "rbac-namespace.yaml").read_text()
    assert f"resourceNames: [{CANARY_NAME}]" in role
