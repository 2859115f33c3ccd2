"""The Helm chart and the kustomize base, checked against the real API server.

* ``helm lint`` and the values schema;
* everything ``helm template`` renders (default and all-features values, CRD included) and the
  kustomize base is applied with server-side dry-run, so Kubernetes validates every object and
  field (strict field validation);
* the chart's RBAC is applied for real and the operator's ServiceAccount (a real token) is checked
  three ways: the exact rule set it holds, the API calls the operator makes succeeding, and
  everything else it must not do being refused. Finally the real operator process runs under that
  token and handles a policy.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from aks_kms_lab.controlplane import ControlPlane, free_port, tool

from ..support import kubectl, unreachable_azure_env, wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "aks-kms-operator"
RELEASE = "aks-kms-operator"
NS = "aks-kms-system"
SA = "aks-kms-operator"
OTHER_NS = "team-chart"
CANARY = "aks-kms-canary"
KUBE_VERSION = "1.35.4"
POLICIES = "/apis/aks-kms.dev/v1alpha1/clusterencryptionpolicies"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

ALL_FEATURES: dict[str, Any] = {
    "image": {"repository": "myacr.azurecr.io/aks-kms-operator", "tag": "0.1.0",
              "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "acr"}],
    "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
    "workloadIdentity": {"enabled": True, "clientId": "11111111-2222-3333-4444-555555555555",
                         "tenantId": "66666666-7777-8888-9999-000000000000"},
    "azure": {"armEndpoint": "https://management.usgovcloudapi.net",
              "armAudience": "https://management.usgovcloudapi.net", "lroPollingInterval": 10, "httpTimeout": "30"},
    "operator": {"logFormat": "plain", "verbose": True, "livenessPort": 9080},
    "extraEnv": [{"name": "AKS_KMS_RETRY_TOTAL", "value": "5"}],
    "podAnnotations": {"example.com/scrape": "true"},
    "podLabels": {"team": "platform"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.azure.com/mode", "operator": "In", "values": ["system"]}]}]}}},
    "priorityClassName": "system-cluster-critical",
    "metrics": {"enabled": True, "port": 8081,
                "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prometheus"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}, "keyExpiryDays": 45,
                                   "additionalAlertLabels": {"team": "platform"}},
                "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Security"}}},
    "networkPolicy": {"enabled": True, "apiServerCidrs": ["20.1.2.3/32"], "azureCidrs": ["10.0.0.0/8"],
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "monitoring"}}}]},
    "flowControl": {"enabled": True, "nominalConcurrencyShares": 5, "borrowingLimitPercent": 0},
    "replicaCount": 3,
    "leaderElection": {"enabled": True, "leaseName": "kms-leader", "leaseDurationSeconds": 30},
    "keySwitch": {"windowSeconds": 150},
}

DEFAULT_KINDS = ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "FlowSchema",
                 "PodDisruptionBudget", "PriorityLevelConfiguration", "Role", "RoleBinding", "Service",
                 "ServiceAccount"]
ALL_FEATURES_KINDS = sorted([*DEFAULT_KINDS, "ConfigMap", "NetworkPolicy", "PrometheusRule", "ServiceMonitor"])


# ---------------------------------------------------------------------------------------------- helm

def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {result.stderr}")
    return result


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def template(tmp_path: Path | None = None, values: dict[str, Any] | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NS, "--kube-version", KUBE_VERSION, "--include-crds"]
    if values is not None and tmp_path is not None:
        args += ["-f", str(values_file(tmp_path, values))]
    return helm(*args, check=check)


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return docs(template().stdout)


@pytest.fixture(scope="module")
def full_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return docs(template(tmp_path_factory.mktemp("values"), ALL_FEATURES).stdout)


def test_helm_lint_strict(tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, ALL_FEATURES)))


def test_default_objects(default_objects: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in default_objects) == DEFAULT_KINDS


def test_all_features_objects(full_objects: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in full_objects) == ALL_FEATURES_KINDS
    sa = by_kind(full_objects, "ServiceAccount")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == ALL_FEATURES[
        "workloadIdentity"]["clientId"]
    assert sa["metadata"]["annotations"]["azure.workload.identity/tenant-id"]
    deploy = by_kind(full_objects, "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "myacr.azurecr.io/aks-kms-operator:0.1.0@sha256:" + "ab" * 32
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AKS_KMS_ARM_ENDPOINT"] == "https://management.usgovcloudapi.net"
    assert env["AKS_KMS_LRO_POLLING_INTERVAL"] == "10" and env["AKS_KMS_HTTP_TIMEOUT"] == "30"
    assert env["AKS_KMS_RETRY_TOTAL"] == "5" and "AKS_KMS_NAMESPACE" in env
    assert container["args"][1] == "--liveness=http://0.0.0.0:9080/healthz" and "--verbose" in container["args"]
    assert deploy["spec"]["replicas"] == 3
    assert env["AKS_KMS_LEASE_NAME"] == "kms-leader" and env["AKS_KMS_LEASE_DURATION_SECONDS"] == "30"
    assert env["AKS_KMS_KEY_SWITCH_WINDOW_SECONDS"] == "150"
    lease_rule = next(r for r in by_kind(full_objects, "Role")["rules"] if r.get("resourceNames") == ["kms-leader"])
    assert lease_rule["apiGroups"] == ["coordination.k8s.io"] and lease_rule["verbs"] == ["get", "update"]


def test_deployment_is_hardened(default_objects: list[dict[str, Any]]) -> None:
    deploy = by_kind(default_objects, "Deployment")
    spec = deploy["spec"]
    # two replicas, one acting (leader election); rolled, since a new pod starts as a standby
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["spec"]["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["args"][:3] == ["run", "--liveness=http://0.0.0.0:8080/healthz", "--log-format=json"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["spec"]["volumes"][0]["emptyDir"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 8081}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the lease holder identity
    assert env["AKS_KMS_LEADER_ELECTION"]["value"] == "true"
    assert env["AKS_KMS_LEASE_NAME"]["value"] == "aks-kms-operator"
    assert env["AKS_KMS_LEASE_DURATION_SECONDS"]["value"] == "15"
    assert env["AKS_KMS_KEY_SWITCH_WINDOW_SECONDS"]["value"] == "90"
    pdb = by_kind(default_objects, "PodDisruptionBudget")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": spec["selector"]}
    # no workload identity client ID by default: the ServiceAccount has no annotation yet
    assert "annotations" not in by_kind(default_objects, "ServiceAccount")["metadata"]


@pytest.mark.parametrize(("values", "complaint"), [
    ({"securityContext": {"readOnlyRootFilesystem": False}}, "readOnlyRootFilesystem"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    ({"workloadIdentity": {"clientId": "not-a-guid"}}, "clientId"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"replicas": 2}, "replicas"),
    ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection"),
    ({"replicaCount": 0}, "replicaCount"),
    ({"leaderElection": {"leaseDurationSeconds": 2}}, "leaseDurationSeconds"),
    ({"keySwitch": {"windowSeconds": "90s"}}, "windowSeconds"),
    ({"flowControl": {"matchingPrecedence": 9500}}, "matchingPrecedence"),
    ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "metrics"),
    ({"serviceAccount": {"create": False}}, "name"),
    ({"operator": {"logFormat": "xml"}}, "logFormat"),
])
def test_values_schema_refuses(tmp_path: Path, values: dict[str, Any], complaint: str) -> None:
    result = template(tmp_path, values, check=False)
    assert result.returncode != 0, f"accepted {values}"
    assert complaint in result.stderr, result.stderr


# ------------------------------------------------------------------------------ server-side dry run

# A stub of the Prometheus Operator's ServiceMonitor CRD (it is not part of Kubernetes), declaring
# only the fields our template uses with their upstream types, so strict validation still catches
# a typo in them.
MONITORING_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor",
                       "listKind": "ServiceMonitorList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "required": ["selector"], "properties": {
                     "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                     "namespaceSelector": {"type": "object", "properties": {
                         "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                     "endpoints": {"type": "array", "items": {"type": "object", "properties": {
                         "port": {"type": "string"}, "path": {"type": "string"},
                         "interval": {"type": "string", "pattern": MONITORING_DURATION},
                         "scrapeTimeout": {"type": "string"}}}}}}}}}}],
             },
}

# The same for PrometheusRule: groups of rules, each an alert (or record) with expr, for, labels, annotations.
PROMETHEUSRULE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "PrometheusRule", "plural": "prometheusrules", "singular": "prometheusrule",
                       "listKind": "PrometheusRuleList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "properties": {
                     "groups": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                         "name": {"type": "string"}, "interval": {"type": "string"},
                         "rules": {"type": "array", "items": {"type": "object", "required": ["expr"], "properties": {
                             "alert": {"type": "string"}, "record": {"type": "string"},
                             "expr": {"x-kubernetes-int-or-string": True},
                             "for": {"type": "string", "pattern": MONITORING_DURATION},
                             "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                             "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                         }}}}}}}}}}}}],
             },
}


def install_crd(cp: ControlPlane, crd: dict[str, Any]) -> None:
    """Apply a CRD and wait until it is Established and discoverable.

    (Own helper rather than the shared ``crd_installed`` fixture: right after creation the API server
    may answer ``status.conditions: null``, which that fixture's wait does not tolerate.)
    """
    cp.apply(crd)
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"

    def established() -> bool:
        code, body = cp.request("GET", path)
        conds = (body or {}).get("status", {}).get("conditions") or []
        return code == 200 and any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    wait_for(established, what=f"{crd['metadata']['name']} Established")
    group_version = f"/apis/{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    wait_for(lambda: cp.request("GET", group_version)[0] == 200, what=f"{group_version} discovery")


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    install_crd(control_plane, yaml.safe_load((REPO / "manifests" / "crd" / "clusterencryptionpolicies.yaml")
                                              .read_text()))
    install_crd(control_plane, SERVICEMONITOR_CRD)
    install_crd(control_plane, PROMETHEUSRULE_CRD)
    control_plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    control_plane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}})
    return control_plane


def dry_run(cp: ControlPlane, manifest: str) -> str:
    result = kubectl(cp, "apply", "--server-side", "--force-conflicts", "--dry-run=server",
                     "--field-manager=chart-test", "-f", "-", stdin=manifest)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_default_render_passes_server_validation(cluster: ControlPlane) -> None:
    out = dry_run(cluster, template().stdout)
    assert out.count("serverside-applied (server dry run)") == len(DEFAULT_KINDS), out


def test_all_features_render_passes_server_validation(cluster: ControlPlane, tmp_path: Path) -> None:
    out = dry_run(cluster, template(tmp_path, ALL_FEATURES).stdout)
    assert out.count("serverside-applied (server dry run)") == len(ALL_FEATURES_KINDS), out


def test_server_validation_is_strict(cluster: ControlPlane) -> None:
    """The dry run is worth something only if a wrong field fails it."""
    objs = docs(template().stdout)
    deploy = by_kind(objs, "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    result = kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(deploy))
    assert result.returncode != 0 and "readOnlyRootFS" in result.stderr


def test_kustomize_base_matches_the_chart() -> None:
    result = subprocess.run([sys.executable, str(REPO / "hack" / "render_base.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_kustomize_base_passes_server_validation(cluster: ControlPlane) -> None:
    built = kubectl(cluster, "kustomize", str(REPO / "manifests" / "base"), check=True).stdout
    kinds = sorted(d["kind"] for d in docs(built))
    assert kinds == sorted([*DEFAULT_KINDS, "Namespace"])
    dry_run(cluster, built)


def test_chart_and_base_grant_identical_rules(default_objects: list[dict[str, Any]], cluster: ControlPlane) -> None:
    built = docs(kubectl(cluster, "kustomize", str(REPO / "manifests" / "base"), check=True).stdout)
    for kind in ("ClusterRole", "Role"):
        assert by_kind(built, kind)["rules"] == by_kind(default_objects, kind)["rules"]


# ----------------------------------------------------------------------------- RBAC, for real

EXPECTED_CLUSTER_RULES = {
    ("aks-kms.dev", "clusterencryptionpolicies", "*", "get"),
    ("aks-kms.dev", "clusterencryptionpolicies", "*", "list"),
    ("aks-kms.dev", "clusterencryptionpolicies", "*", "watch"),
    ("aks-kms.dev", "clusterencryptionpolicies", "*", "patch"),
    ("aks-kms.dev", "clusterencryptionpolicies/status", "*", "patch"),
    ("", "namespaces", "*", "list"),
    ("", "secrets", "*", "list"),
    ("", "secrets", "*", "patch"),
}
EXPECTED_OWN_NAMESPACE_RULES = EXPECTED_CLUSTER_RULES | {
    ("", "secrets", "*", "create"),
    ("", "secrets", CANARY, "get"),
    ("", "secrets", CANARY, "patch"),
    ("", "secrets", CANARY, "delete"),
    ("", "events", "*", "create"),
    ("coordination.k8s.io", "leases", "*", "create"),
    ("coordination.k8s.io", "leases", "aks-kms-operator", "get"),
    ("coordination.k8s.io", "leases", "aks-kms-operator", "update"),
}


class SA_Client:
    """Plain HTTPS calls with the ServiceAccount's bearer token, as the operator makes them."""

    def __init__(self, cp: ControlPlane, kubeconfig: Path) -> None:
        user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
        self.server = cp.server
        self.token = user["token"]
        self.ctx = ssl.create_default_context(cafile=str(cp.ca_path))

    def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
             accept: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": accept, "Content-Type": content_type}
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw.startswith(b"{") else raw.decode()
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw.startswith(b"{") else raw.decode()


@pytest.fixture(scope="module")
def operator_sa(cluster: ControlPlane, default_objects: list[dict[str, Any]]) -> Path:
    """Apply the chart's ServiceAccount and RBAC for real; return a kubeconfig with a real SA token."""
    rbac = [o for o in default_objects
            if o["kind"] in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}]
    assert len(rbac) == 5
    kubectl(cluster, "apply", "--server-side", "--field-manager=chart-test", "-f", "-",
            stdin="---\n".join(yaml.safe_dump(o) for o in rbac), check=True)
    return cluster.service_account_kubeconfig(NS, SA)


def granted_rules(cp: ControlPlane, kubeconfig: Path, namespace: str) -> set[tuple[str, str, str, str]]:
    """Every (apiGroup, resource, resourceName, verb) a SelfSubjectRulesReview reports."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    # --validate=false: client-side validation would list CRDs, which neither account may do
    out = kubectl(cp, "create", "--validate=false", "-f", "-", "-o", "json", stdin=json.dumps(review),
                  kubeconfig=kubeconfig, check=True).stdout
    status = json.loads(out)["status"]
    assert not status.get("incomplete"), status
    rules: set[tuple[str, str, str, str]] = set()
    for rule in status["resourceRules"]:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources") or []:
                for name in rule.get("resourceNames") or ["*"]:
                    for verb in rule["verbs"]:
                        rules.add((group, resource, name, verb))
    return rules


@pytest.fixture(scope="module")
def baseline(cluster: ControlPlane) -> dict[str, set[tuple[str, str, str, str]]]:
    """What any ServiceAccount holds without our bindings (system:basic-user and friends)."""
    nobody = cluster.service_account_kubeconfig(NS, "nobody")
    return {ns: granted_rules(cluster, nobody, ns) for ns in (NS, OTHER_NS)}


def test_exactly_these_rules_in_the_operator_namespace(cluster, operator_sa, baseline) -> None:
    assert granted_rules(cluster, operator_sa, NS) - baseline[NS] == EXPECTED_OWN_NAMESPACE_RULES


def test_exactly_these_rules_in_any_other_namespace(cluster, operator_sa, baseline) -> None:
    assert granted_rules(cluster, operator_sa, OTHER_NS) - baseline[OTHER_NS] == EXPECTED_CLUSTER_RULES


@pytest.mark.parametrize(("verb", "resource", "namespace"), [
    ("get", "secrets", OTHER_NS), ("watch", "secrets", OTHER_NS), ("delete", "secrets", OTHER_NS),
    ("update", "secrets", OTHER_NS), ("create", "secrets", OTHER_NS), ("deletecollection", "secrets", OTHER_NS),
    ("get", "secrets/other", NS), ("update", f"secrets/{CANARY}", NS), ("watch", "secrets", NS),
    ("create", "events", OTHER_NS), ("create", "events.events.k8s.io", NS),
    ("get", "namespaces", ""), ("watch", "namespaces", ""),
    ("create", "clusterencryptionpolicies.aks-kms.dev", ""),
    ("update", "clusterencryptionpolicies.aks-kms.dev", ""), ("delete", "clusterencryptionpolicies.aks-kms.dev", ""),
    ("update", "clusterencryptionpolicies.aks-kms.dev/status", ""),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", ""), ("list", "clusterkopfpeerings.kopf.dev", ""),
    ("list", "configmaps", OTHER_NS), ("list", "pods", OTHER_NS),
    ("update", "leases.coordination.k8s.io/someone-elses", NS), ("delete", "leases.coordination.k8s.io", NS),
    ("list", "leases.coordination.k8s.io", NS), ("create", "leases.coordination.k8s.io", OTHER_NS),
])
def test_everything_else_is_forbidden(cluster, operator_sa, verb: str, resource: str, namespace: str) -> None:
    args = ["auth", "can-i", verb, resource] + (["-n", namespace] if namespace else [])
    result = kubectl(cluster, *args, kubeconfig=operator_sa)
    assert result.stdout.strip() == "no", f"{verb} {resource} in {namespace or 'cluster'}: {result.stdout}"


@pytest.fixture(scope="module")
def sa_client(cluster: ControlPlane, operator_sa: Path) -> SA_Client:
    return SA_Client(cluster, operator_sa)


@pytest.fixture(scope="module")
def workload_secret(cluster: ControlPlane) -> dict[str, Any]:
    return cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app", "namespace": OTHER_NS},
                          "stringData": {"password": "hunter2"}})


def test_operator_calls_on_secrets_succeed(sa_client: SA_Client, workload_secret: dict[str, Any]) -> None:
    # metadata-only pages, per namespace and cluster-wide: no data in the answer
    for path in (f"/api/v1/namespaces/{OTHER_NS}/secrets?limit=2", "/api/v1/secrets?limit=500"):
        code, page = sa_client.call("GET", path, accept=METADATA_LIST)
        assert code == 200, page
        assert page["kind"] == "PartialObjectMetadataList"
        assert all("data" not in item for item in page["items"])
    # the rewrite's no-op patch: identity and preconditions only, metadata-only response
    meta = workload_secret["metadata"]
    code, out = sa_client.call("PATCH", f"/api/v1/namespaces/{OTHER_NS}/secrets/app",
                               {"metadata": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}},
                               content_type="application/merge-patch+json", accept=METADATA_ONLY)
    assert code == 200, out
    assert out["kind"] == "PartialObjectMetadata" and "data" not in out
    code, out = sa_client.call("GET", "/api/v1/namespaces", accept=METADATA_LIST)
    assert code == 200 and out["items"], out


def test_secret_data_is_out_of_reach(sa_client: SA_Client, workload_secret: dict[str, Any]) -> None:
    path = f"/api/v1/namespaces/{OTHER_NS}/secrets/app"
    assert sa_client.call("GET", path)[0] == 403
    assert sa_client.call("GET", f"/api/v1/namespaces/{OTHER_NS}/secrets?watch=1&timeoutSeconds=1")[0] == 403
    assert sa_client.call("DELETE", path)[0] == 403
    replacement = {**workload_secret, "metadata": {"name": "app", "namespace": OTHER_NS}}
    assert sa_client.call("PUT", path, replacement)[0] == 403
    assert sa_client.call("POST", f"/api/v1/namespaces/{OTHER_NS}/secrets",
                          {"metadata": {"name": "planted"}, "stringData": {"x": "y"}})[0] == 403


def test_canary_lifecycle_in_own_namespace(sa_client: SA_Client) -> None:
    base = f"/api/v1/namespaces/{NS}/secrets"
    code, out = sa_client.call("POST", base, {"metadata": {"name": CANARY}, "stringData": {"canary": "x"}},
                               accept=METADATA_ONLY)
    assert code == 201, out
    assert sa_client.call("GET", f"{base}/{CANARY}", accept=METADATA_ONLY)[0] == 200
    code, out = sa_client.call("PATCH", f"{base}/{CANARY}", {"metadata": {"uid": out["metadata"]["uid"]}},
                               content_type="application/merge-patch+json", accept=METADATA_ONLY)
    assert code == 200, out
    assert sa_client.call("DELETE", f"{base}/{CANARY}")[0] == 200
    assert sa_client.call("GET", f"{base}/someone-elses")[0] == 403


def test_policy_and_status_and_event_calls_succeed(cluster: ControlPlane, sa_client: SA_Client) -> None:
    name = "chart-rbac"
    cluster.request("POST", POLICIES, {
        "apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy", "metadata": {"name": name},
        "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg",
                             "name": "aks"}}})
    try:
        code, listed = sa_client.call("GET", POLICIES)
        assert code == 200 and any(i["metadata"]["name"] == name for i in listed["items"])
        assert sa_client.call("GET", f"{POLICIES}/{name}")[0] == 200
        code, _ = sa_client.call("GET", f"{POLICIES}?watch=1&timeoutSeconds=1")
        assert code == 200
        code, out = sa_client.call("PATCH", f"{POLICIES}/{name}",
                                   {"metadata": {"annotations": {"aks-kms.dev/probe": "1"}}},
                                   content_type="application/merge-patch+json")
        assert code == 200, out
        code, out = sa_client.call("PATCH", f"{POLICIES}/{name}/status", {"status": {"phase": "Pending"}},
                                   content_type="application/merge-patch+json")
        assert code == 200 and out["status"]["phase"] == "Pending", out
        event = {"metadata": {"generateName": "aks-kms-", "namespace": NS}, "type": "Normal", "reason": "Probe",
                 "message": "chart RBAC test", "involvedObject": {
                     "apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy", "name": name,
                     "uid": out["metadata"]["uid"], "namespace": NS},
                 "source": {"component": "aks-kms-operator"}}
        code, out = sa_client.call("POST", f"/api/v1/namespaces/{NS}/events", event)
        assert code == 201, out
    finally:
        cluster.request("DELETE", f"{POLICIES}/{name}")


def test_the_real_operator_runs_under_the_chart_rbac(cluster: ControlPlane, operator_sa: Path,
                                                     tmp_path: Path) -> None:
    """kopf's own calls (watch, finalizer and annotation patches, status patches) and the leader
    election Lease under the SA token.

    The kubeconfig's context namespace plays the part of the in-cluster namespace file, which is
    where kopf posts Events about cluster-scoped objects (the operator's login hands kopf that
    namespace, whichever loader found the credentials).
    """
    config = yaml.safe_load(operator_sa.read_text())
    config["contexts"][0]["context"]["namespace"] = NS
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "operator.log"
    name = "chart-operator"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": "chart-operator-0", **unreachable_azure_env()}
    script = Path(sys.executable).parent / "aks-kms-operator"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(script), "run", f"--liveness=http://127.0.0.1:{port}/healthz",
                                 "--log-format=plain"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        code, body = cluster.request("POST", POLICIES, {
            "apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy", "metadata": {"name": name},
            "spec": {"cluster": {"subscriptionId": "00000000-0000-0000-0000-000000000000", "resourceGroup": "rg",
                                 "name": "aks"}}})
        assert code == 201, body

        def handled() -> dict[str, Any] | None:
            _, obj = cluster.request("GET", f"{POLICIES}/{name}")
            done = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
            return obj if done and "aks-kms.dev/finalizer" in obj["metadata"].get("finalizers", []) else None

        try:
            wait_for(handled, timeout=60, what=f"the operator to handle {name} under the chart's RBAC")
            code, lease = cluster.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{RELEASE}")
            assert code == 200 and lease["spec"]["holderIdentity"] == "chart-operator-0", lease
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- operator log (tail) ---\n{log.read_text()[-4000:]}") from None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.request("PATCH", f"{POLICIES}/{name}", {"metadata": {"finalizers": None}},
                        content_type="application/merge-patch+json")
        cluster.request("DELETE", f"{POLICIES}/{name}")
    # Kubernetes refusals only: without Azure credentials here the Azure calls fail, as they should.
    refusals = [line for line in log.read_text().splitlines() if "is forbidden: User" in line]
    assert not refusals, "\n".join(refusals)


def test_notes_tell_the_next_steps(cluster: ControlPlane, tmp_path: Path) -> None:
    """NOTES.txt renders (helm install --dry-run against the real API server) and warns without a client ID."""
    def notes(*extra: str) -> str:
        # another release name: the RBAC tests have created this release's objects without Helm
        out = helm("install", "notes", str(CHART), "--namespace", NS, "--dry-run=client",
                   "--kubeconfig", str(cluster.kubeconfig), *extra).stdout
        return out.split("NOTES:", 1)[1]

    text = notes()
    assert "WARNING: workloadIdentity.clientId is empty" in text
    assert "system:serviceaccount:aks-kms-system:notes-aks-kms-operator" in text
    assert "kubectl get cep" in text and "resource.customizations.health.aks-kms.dev_ClusterEncryptionPolicy" in text
    assert "WARNING" not in notes("-f", str(values_file(tmp_path, ALL_FEATURES)))
