"""The committed CRD is exactly what the Python model renders (one source of truth)."""

from __future__ import annotations

from pathlib import Path

import yaml

from aks_kms_operator.api import crd
from aks_kms_operator.api import v1alpha1 as api
from aks_kms_operator.api.schema import dump, parse

REPO = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_model() -> None:
    committed = (REPO / "manifests" / "crd" / "clusterencryptionpolicies.yaml").read_text()
    assert committed == crd.render_yaml(), "manifests/crd is stale: run `make crd` and commit the result"


def test_every_status_field_is_declared() -> None:
    """kopf and our patches write these; a structural schema would silently prune any undeclared one."""
    schema = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    declared = set(schema["properties"])
    written = set(dump(api.PolicyStatus()))
    assert written == declared


def test_names_are_the_fixed_ones() -> None:
    names = crd.render()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "ClusterEncryptionPolicy", "clusterencryptionpolicies", ["cep"])
    assert crd.render()["spec"]["scope"] == "Cluster"


def test_parse_applies_defaults_and_round_trips() -> None:
    spec = parse(api.PolicySpec, {"cluster": {"subscriptionId": "s", "resourceGroup": "rg", "name": "n"},
                                  "rewrite": {"concurrency": 3}})
    assert spec.rewrite.concurrency == 3 and spec.rewrite.page_size == 500
    assert spec.kms.key_vault_network_access == "Public" and spec.deletion_policy == "Retain"
    assert parse(api.PolicySpec, dump(spec)) == spec


def test_examples_parse_into_the_model() -> None:
    for path in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        spec = parse(api.PolicySpec, yaml.safe_load(path.read_text())["spec"])
        assert spec.cluster.name == "my-aks", path
