"""``spec.cluster`` is immutable (CEL transition rule), refused by the real API server with the fix.

Why: the key ledger and rewrite progress in status describe one cluster; re-pointing a policy would
carry them over to another cluster and could skip a pending rewrite there.
"""

from __future__ import annotations

import json

import pytest
import yaml

from ..support import kubectl
from .test_admission import SUB, policy

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("field", "value"), [("name", "other-aks"), ("resourceGroup", "other-rg"),
                                              ("subscriptionId", SUB.replace("0", "1"))])
def test_spec_cluster_cannot_be_changed(crd_installed, field: str, value: str) -> None:
    obj = policy()
    obj["metadata"]["name"] = "immutable-cluster"
    kubectl(crd_installed, "apply", "-f", "-", stdin=yaml.safe_dump(obj), check=True)
    try:
        patch = json.dumps({"spec": {"cluster": {field: value}}})
        result = kubectl(crd_installed, "patch", "cep", "immutable-cluster", "--type=merge", "-p", patch)
        assert result.returncode != 0, f"spec.cluster.{field} was changed: {result.stdout}"
        assert "spec.cluster is immutable" in result.stderr and "create a new ClusterEncryptionPolicy" in \
            result.stderr, result.stderr
        # the rest of the spec stays editable
        ok = kubectl(crd_installed, "patch", "cep", "immutable-cluster", "--type=merge",
                     "-p", json.dumps({"spec": {"rewrite": {"concurrency": 4}}}))
        assert ok.returncode == 0, ok.stderr
    finally:
        kubectl(crd_installed, "delete", "cep", "immutable-cluster", "--wait=false")
