"""Azure Resource Manager: AKS managed clusters with AKS's KMS validation, plus what the operator's
preflight and the Azure CLI read and write around them: subscriptions, tenants and resource groups;
``GET /metadata/endpoints`` (no token, as ARM serves it); managed clusters listed per subscription and
per resource group; vaults, user-assigned identities and role assignments (GET, PUT, DELETE; a duplicate
assignment is 409 ``RoleAssignmentExists``); role definitions and the ``/resources`` list. Tokens for
both ARM audiences are accepted (``https://management.azure.com`` and the CLI's
``https://management.core.windows.net/``).

Managed clusters behave like AKS (``reference/aks-arm-api.md`` sections 4, 5 and 7):

* ``eTag`` in the body and the ``ETag`` header; a stale ``If-Match`` → 412 ``PreconditionFailed``;
  ``If-None-Match: *`` on an existing cluster → 412; both headers, or ``If-None-Match`` other than
  ``*`` → 400 ``BadRequest``.
* PUT of an existing cluster returns 200 with ``provisioningState`` ``Updating``, ``Retry-After``
  and an ``Azure-AsyncOperation`` header (creating clusters by PUT is not served: seed them with
  ``fake.add_cluster``); ``GET .../locations/{loc}/operations/{id}`` answers ``InProgress``
  until a worker thread finishes the operation as ``Succeeded`` or ``Failed`` (the cluster's state
  follows). A PUT while an operation runs → 409 ``OperationNotAllowed``.
* PUT semantics: the body is merged over the stored object (read-only fields the SDK strips are
  kept; agent pools merge by name). The write log records which leaf paths changed and which
  top-level properties the body dropped, so tests can prove "only the KMS block changed".

KMS validation runs when ``securityProfile.azureKeyVaultKms`` changes. Codes marked * are ours: the
reference lists the message but not the code, or neither (AKS uses ``InvalidParameter`` for most
request-shape errors, so we do too).

Synchronous, 400 before anything is stored (AKS validates these in the RP front end):

========================================================  =================================================
Situation                                                 Code: message
========================================================  =================================================
cluster identity not UserAssigned                         InvalidParameter*: AzureKeyVaultKms feature does not
                                                          support cluster identity type SystemAssigned, ...
enabled without keyId / keyId not a Key Vault key URL     InvalidParameter*
keyVaultNetworkAccess not Public or Private               InvalidParameter*
Private without keyVaultResourceId                        InvalidParameter*: KeyVault resource ID is empty when
                                                          KeyVault network access is Private.
Public with keyVaultResourceId                            InvalidParameter*
keyVaultNetworkAccess changed while KMS stays enabled     InvalidParameter*
Private without API server VNet integration               InvalidParameter*
versionless keyId without kubernetesResourceObject-        InvalidParameter*
EncryptionProfile.infrastructureEncryption=Enabled
infrastructureEncryption with api-version < 2026-07-01     InvalidParameter*
Managed: Kubernetes < 1.33; legacy source on KMS v1;      InvalidParameter*
versioned keyId with infrastructureEncryption Enabled
Managed: disable, Public<->Private, back to a versioned   OperationNotAllowed*
key (irreversible)
Managed CMK: identity without Key Vault Reader            AzureKeyVaultKmsValidateIdentityPermissionCustomerError
vault unknown, in another tenant, or not the vault named  InvalidParameter*
by keyVaultResourceId; key version not found
non-RSA key, key_ops without encrypt+decrypt, identity    AzureKeyVaultKmsValidateIdentityPermissionCustomerError
without encrypt/decrypt (access policy or RBAC data
actions at or above the key)
========================================================  =================================================

Asynchronous, the LRO fails and the cluster is left ``Failed`` (AKS finds these only when its
plugin first uses the key, or while it builds the private link):

* key version disabled, expired or not yet valid → ``KeyDisabled`` / ``KeyExpired`` ("Operation
  encrypt is not allowed on an expired key") / ``KeyNotYetValid``;
* Managed CMK while the vault's firewall blocks traffic without the trusted-services bypass →
  ``InternalOperationError``*;
* Public access while the vault's firewall blocks public traffic (public network access Disabled, or
  default action Deny without the AzureServices bypass) → ``InternalOperationError``*;
* Private access while the identity lacks ``Microsoft.KeyVault/vaults/write`` on the vault (Key
  Vault Contributor, needed for the private endpoint) → ``InternalOperationError`` (as in
  MicrosoftDocs/azure-docs#105101);
* ``fake.set_lro(fail_with=...)`` and an exception raised by ``fake.on_kms_change``.

A failed operation leaves the new KMS block stored (ARM keeps the goal state of the last PUT), but the
``on_kms_change`` hook was not called, so the lab's data plane still uses the old key.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import entra, keyvault, roles
from .state import (
    FakeState,
    Identity,
    Operation,
    RoleAssignment,
    Vault,
    cluster_key,
    new_etag,
    now_utc,
    role_definition_arm,
)
from .wire import ApiError, Request, Response, json_body

ARM_AUDIENCE = "https://management.azure.com"
# Real ARM accepts tokens for either audience; the Azure CLI asks for the older one by default.
ARM_AUDIENCES = frozenset({ARM_AUDIENCE, "https://management.core.windows.net"})
# Seconds a client should wait between polls of a running operation (AKS sends Retry-After on the
# PUT and on every InProgress poll; without it the SDK's poller falls back to 30 s).
RETRY_AFTER = "1"
TERMINAL = frozenset({"Succeeded", "Failed", "Canceled"})
KMS_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "keyId": "",
    "keyVaultNetworkAccess": "Public",
    "keyVaultResourceId": "",
}
PERMISSION_CODE = "AzureKeyVaultKmsValidateIdentityPermissionCustomerError"
# Fields ARM computes; a PUT body that omits them has not "dropped" anything.
SERVER_OWNED = frozenset(
    {
        "id",
        "name",
        "type",
        "eTag",
        "systemData",
        "provisioningState",
        "powerState",
        "currentKubernetesVersion",
        "currentOrchestratorVersion",
        "nodeImageVersion",
        "fqdn",
        "azurePortalFQDN",
        "privateFQDN",
        "maxAgentPools",
        "resourceUID",
        "principalId",
        "clientId",
        "tenantId",
    }
)

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourcegroups/(?P<rg>[^/]+)/providers/"
ROUTE_CLUSTER = re.compile(_RG + r"microsoft\.containerservice/managedclusters/(?P<name>[^/]+)", re.I)
ROUTE_OPERATION = re.compile(
    _SUB + r"/providers/microsoft\.containerservice/locations/(?P<loc>[^/]+)/operations/(?P<id>[^/]+)", re.I
)
ROUTE_VAULT = re.compile(_RG + r"microsoft\.keyvault/vaults/(?P<name>[^/]+)", re.I)
ROUTE_IDENTITY = re.compile(_RG + r"microsoft\.managedidentity/userassignedidentities/(?P<name>[^/]+)", re.I)
ROUTE_RESOURCES = re.compile(_SUB + r"/resources", re.I)
ROUTE_ASSIGNMENTS = re.compile(r"(?P<scope>.*)/providers/microsoft\.authorization/roleassignments", re.I)
ROUTE_ROLE_DEF = re.compile(r"(?P<scope>.*)/providers/microsoft\.authorization/roledefinitions/(?P<id>[^/]+)", re.I)
ROUTE_ROLE_DEFS = re.compile(r"(?P<scope>.*)/providers/microsoft\.authorization/roledefinitions", re.I)
ROUTE_ASSIGNMENT = re.compile(
    r"(?P<scope>.*)/providers/microsoft\.authorization/roleassignments/(?P<name>[^/]+)", re.I
)
ROUTE_SUBSCRIPTIONS = re.compile(r"/subscriptions", re.I)
ROUTE_SUBSCRIPTION = re.compile(_SUB, re.I)
ROUTE_TENANTS = re.compile(r"/tenants", re.I)
ROUTE_GROUPS = re.compile(_SUB + r"/resourcegroups", re.I)
ROUTE_GROUP = re.compile(_SUB + r"/resourcegroups/(?P<rg>[^/]+)", re.I)
ROUTE_CLUSTERS = re.compile(
    _SUB + r"(?:/resourcegroups/(?P<rg>[^/]+))?/providers/microsoft\.containerservice/managedclusters", re.I
)
ROUTE_METADATA = re.compile(r"/metadata/endpoints", re.I)


@dataclass(frozen=True)
class LroPlan:
    """What the server's worker does with a newly accepted operation."""

    operation: Operation
    old_kms: dict[str, Any]
    new_kms: dict[str, Any]
    failure: tuple[str, str] | None  # decided at PUT time: async validation or injected failure
    # An injected failure reported only after the change was applied (AKS-sim rolled the API servers).
    failure_after_apply: tuple[str, str] | None = None


Launcher = Callable[[LroPlan], None]


def _not_found(kind: str, name: str, rg: str) -> ApiError:
    return ApiError(
        404,
        "ResourceNotFound",
        f"The Resource '{kind}/{name}' under resource group '{rg}' was not found. For more details please go "
        "to https://aka.ms/ARMResourceNotFoundFix",
    )


def _invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


MANAGED_API_VERSION = "2026-07-01"  # first API version with kubernetesResourceObjectEncryptionProfile
MANAGED_MINIMUM = (1, 33)
KMS_V2_MINIMUM = (1, 27)  # below, an enabled legacy KMS is KMS v1
# Key Vault Reader (actions Microsoft.KeyVault/vaults/*/read): management-plane read of the vault's keys, which
# the Managed experience needs to find new key versions; Key Vault Crypto User has data actions only.
VAULT_READ = "Microsoft.KeyVault/vaults/keys/read"


def infrastructure_encryption(obj: dict[str, Any]) -> str:
    """securityProfile.kubernetesResourceObjectEncryptionProfile.infrastructureEncryption ('' when absent)."""
    sp = (obj.get("properties") or {}).get("securityProfile") or {}
    return str((sp.get("kubernetesResourceObjectEncryptionProfile") or {}).get("infrastructureEncryption") or "")


def kms_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The KMS block plus the experience: what the lab's AKS acts on when either changes."""
    return {**kms_block(obj), "infrastructureEncryption": infrastructure_encryption(obj)}


def _minor(obj: dict[str, Any]) -> tuple[int, int]:
    props = obj.get("properties") or {}
    nums = re.findall(r"\d+", str(props.get("currentKubernetesVersion") or props.get("kubernetesVersion") or ""))
    return (int(nums[0]), int(nums[1])) if len(nums) >= 2 else (0, 0)


def validate_managed(state: FakeState, old_obj: dict[str, Any], new_obj: dict[str, Any],
                     api_version: str) -> tuple[str, str] | None:
    """AKS's rules for KMS data encryption (the Managed experience), before the legacy KMS validation.

    Irreversible: once ``infrastructureEncryption`` is Enabled it cannot be Disabled, the cluster cannot go
    back to a versioned (legacy) key, and keyVaultNetworkAccess cannot change. Turning it on needs
    Kubernetes 1.33+, and a legacy source must be KMS v2. Returns an asynchronous failure or None.
    """
    old_infra, new_infra = infrastructure_encryption(old_obj), infrastructure_encryption(new_obj)
    if new_infra and api_version < MANAGED_API_VERSION:
        raise _invalid(f"kubernetesResourceObjectEncryptionProfile is not supported in api-version {api_version}; "
                       f"use {MANAGED_API_VERSION} or later.")
    if new_infra not in ("", "Enabled", "Disabled"):
        raise _invalid(f"infrastructureEncryption {new_infra!r} is invalid; supported values are 'Enabled' and "
                       "'Disabled'.")
    old_kms, new_kms = kms_block(old_obj), kms_block(new_obj)
    if old_infra == "Enabled":
        if new_infra != "Enabled":
            raise ApiError(400, "OperationNotAllowed", "KMS data encryption (kubernetesResourceObjectEncryption"
                           "Profile.infrastructureEncryption) cannot be disabled once it is Enabled.")
        if old_kms["enabled"] and new_kms["enabled"] and (
                old_kms["keyVaultNetworkAccess"] != new_kms["keyVaultNetworkAccess"]):
            raise ApiError(400, "OperationNotAllowed", "Changing keyVaultNetworkAccess from "
                           f"{old_kms['keyVaultNetworkAccess']} to {new_kms['keyVaultNetworkAccess']} is not "
                           "supported with KMS data encryption.")
    if new_infra != "Enabled":
        return None
    if new_kms["enabled"] and re.search(r"/keys/[A-Za-z0-9-]+/[0-9A-Fa-f]{32}/?$", new_kms["keyId"]):
        raise ApiError(400, "OperationNotAllowed" if old_infra == "Enabled" else "InvalidParameter",
                       "A versioned keyId selects the legacy Azure Key Vault KMS experience and cannot be combined "
                       "with kubernetesResourceObjectEncryptionProfile.infrastructureEncryption Enabled; use the "
                       "versionless key ID.")
    if old_infra != "Enabled":
        if old_kms["enabled"] and _minor(old_obj) < KMS_V2_MINIMUM:
            raise _invalid("Migration to KMS data encryption is supported from KMS v2 only; this cluster uses "
                           "KMS v1. Upgrade to KMS v2 first.")
        if _minor(new_obj) < MANAGED_MINIMUM:
            raise _invalid("KMS data encryption requires Kubernetes version 1.33.0 or later.")
        ident_type = (new_obj.get("identity") or {}).get("type", "None")
        if ident_type not in ("UserAssigned", "SystemAssigned"):
            raise _invalid("KMS data encryption requires a managed identity cluster.")
    if not new_kms["enabled"]:
        return None  # platform-managed key
    vault_name = keyvault.vault_name_of(urlsplit(new_kms["keyId"]).hostname or "")
    vault = state.vault(vault_name) if vault_name else None
    principal = _principal(state, new_obj)
    if vault is not None and principal is not None:
        grants = state.grants_for(principal, vault.resource_id)
        if vault.rbac and not any(g.role.allows_action(VAULT_READ) for g in grants):
            raise ApiError(400, PERMISSION_CODE, f"The identity needs the 'Key Vault Reader' role on key vault "
                           f"{vault.name} for KMS data encryption with a customer-managed key.")
        if vault.public_network_access == "Disabled" or (
                vault.default_action == "Deny" and "azureservices" not in vault.bypass.lower()):
            return ("InternalOperationError", f"KMS data encryption cannot reach key vault {vault.name}: its "
                    "firewall must allow trusted Azure services (--bypass AzureServices).")
    return None


def kms_block(obj: dict[str, Any]) -> dict[str, Any]:
    raw = ((obj.get("properties") or {}).get("securityProfile") or {}).get("azureKeyVaultKms") or {}
    merged = {**KMS_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    return {k: merged[k] for k in KMS_DEFAULTS}


# ------------------------------------------------------------------------------- cluster objects


def make_cluster(
    state: FakeState,
    subscription_id: str,
    resource_group: str,
    name: str,
    *,
    kubernetes_version: str,
    identity_type: str,
    identity_id: str,
    api_server_vnet_integration: bool,
    location: str,
) -> dict[str, Any]:
    """A managed cluster as ``az aks show`` returns it, trimmed to realistic essentials."""
    identity: dict[str, Any]
    if identity_type == "UserAssigned":
        ident = state.identities[identity_id.lower()]
        identity = {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                ident.resource_id: {"principalId": ident.principal_id, "clientId": ident.client_id}
            },
        }
    else:
        identity = {"type": identity_type, "principalId": str(uuid.uuid4()), "tenantId": state.tenant_id}
    agent_pool = {
        "name": "nodepool1",
        "count": 3,
        "vmSize": "Standard_D4ds_v5",
        "osDiskSizeGB": 128,
        "osDiskType": "Ephemeral",
        "maxPods": 250,
        "type": "VirtualMachineScaleSets",
        "provisioningState": "Succeeded",
        "powerState": {"code": "Running"},
        "orchestratorVersion": kubernetes_version,
        "currentOrchestratorVersion": kubernetes_version,
        "mode": "System",
        "osType": "Linux",
        "osSKU": "Ubuntu",
        "nodeImageVersion": "AKSUbuntu-2204gen2containerd-202601.07.0",
        "enableNodePublicIP": False,
    }
    short = uuid.uuid4().hex[:8]
    # Every managed-identity cluster has a kubelet identity in its node resource group; `az aks update`
    # reads it (identityProfile.kubeletidentity) before it builds its PUT.
    node_rg = f"MC_{resource_group}_{name}_{location}"
    state.ensure_group(subscription_id, node_rg, location)
    kubelet_id = (
        f"/subscriptions/{subscription_id}/resourcegroups/{node_rg}"
        f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}-agentpool"
    )
    kubelet = state.identities.get(kubelet_id.lower())
    if kubelet is None:
        kubelet = Identity(kubelet_id, str(uuid.uuid4()), str(uuid.uuid4()), state.tenant_id, location)
        state.identities[kubelet_id.lower()] = kubelet
    return {
        "id": (
            f"/subscriptions/{subscription_id}/resourcegroups/{resource_group}"
            f"/providers/Microsoft.ContainerService/managedClusters/{name}"
        ),
        "location": location,
        "name": name,
        "type": "Microsoft.ContainerService/ManagedClusters",
        "eTag": new_etag(),
        "sku": {"name": "Base", "tier": "Free"},
        "identity": identity,
        "properties": {
            "provisioningState": "Succeeded",
            "powerState": {"code": "Running"},
            "kubernetesVersion": kubernetes_version,
            "currentKubernetesVersion": kubernetes_version,
            "dnsPrefix": f"{name}-dns",
            "fqdn": f"{name}-dns-{short}.hcp.{location}.azmk8s.io",
            "azurePortalFQDN": f"{name}-dns-{short}.portal.hcp.{location}.azmk8s.io",
            "agentPoolProfiles": [agent_pool],
            "servicePrincipalProfile": {"clientId": "msi"},
            "identityProfile": {
                "kubeletidentity": {
                    "resourceId": kubelet.resource_id,
                    "clientId": kubelet.client_id,
                    "objectId": kubelet.principal_id,
                }
            },
            "addonProfiles": {},
            "nodeResourceGroup": node_rg,
            "enableRBAC": True,
            "supportPlan": "KubernetesOfficial",
            "networkProfile": {
                "networkPlugin": "azure",
                "networkPluginMode": "overlay",
                "podCidr": "10.244.0.0/16",
                "serviceCidr": "10.0.0.0/16",
                "dnsServiceIP": "10.0.0.10",
                "outboundType": "loadBalancer",
                "loadBalancerSku": "standard",
                "loadBalancerProfile": {
                    "managedOutboundIPs": {"count": 1},
                    "backendPoolType": "nodeIPConfiguration",
                },
                "podCidrs": ["10.244.0.0/16"],
                "serviceCidrs": ["10.0.0.0/16"],
                "ipFamilies": ["IPv4"],
            },
            "autoUpgradeProfile": {"upgradeChannel": "none", "nodeOSUpgradeChannel": "NodeImage"},
            "storageProfile": {
                "diskCSIDriver": {"enabled": True},
                "fileCSIDriver": {"enabled": True},
                "snapshotController": {"enabled": True},
            },
            "bootstrapProfile": {"artifactSource": "Direct"},
            "apiServerAccessProfile": {"enableVnetIntegration": api_server_vnet_integration},
            "oidcIssuerProfile": {"enabled": True, "issuerURL": f"https://{location}.oic.prod-aks.azure.com/{short}/"},
            "securityProfile": {"workloadIdentity": {"enabled": True}},
            "maxAgentPools": 100,
            "disableLocalAccounts": False,
            "resourceUID": uuid.uuid4().hex[:24],
        },
    }


def _merge(old: Any, new: Any) -> Any:
    """PUT body over the stored object: dicts merge, agent pools merge by name, other values replace."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for k, v in new.items():
            out[k] = _merge(old.get(k), v) if k in old else copy.deepcopy(v)
        return out
    if isinstance(old, list) and isinstance(new, list) and all(isinstance(i, dict) and "name" in i for i in old + new):
        by_name = {i["name"]: i for i in old}
        return [_merge(by_name[i["name"]], i) if i["name"] in by_name else copy.deepcopy(i) for i in new]
    return copy.deepcopy(new)


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if k in SERVER_OWNED:
                continue
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else k))
        return out or {prefix: {}}
    if isinstance(obj, list) and obj and all(isinstance(i, dict) and "name" in i for i in obj):
        out = {}
        for item in obj:
            out.update(_leaves(item, f"{prefix}[{item['name']}]"))
        return out
    return {prefix: obj}


def changed_paths(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _leaves(old), _leaves(new)
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))


def dropped_properties(old: dict[str, Any], body: dict[str, Any]) -> list[str]:
    before = set((old.get("properties") or {}).keys()) - SERVER_OWNED
    sent = set((body.get("properties") or {}).keys())
    return sorted(before - sent)


# ------------------------------------------------------------------------------- KMS validation


def _principal(state: FakeState, obj: dict[str, Any]) -> str | None:
    ident = obj.get("identity") or {}
    for rid in ident.get("userAssignedIdentities") or {}:
        found = state.identities.get(rid.lower())
        if found is not None:
            return found.principal_id
    return None


def _vault_from_resource_id(resource_id: str) -> str | None:
    m = re.fullmatch(
        r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.keyvault/vaults/([^/]+)", resource_id, re.I
    )
    return m[1] if m else None


def has_kms_permission(state: FakeState, vault_name: str, key_name: str, principal_id: str) -> bool:
    vault = state.vault(vault_name)
    if vault is None:
        return False
    if vault.rbac:
        key_scope = f"{vault.resource_id}/keys/{key_name}"
        grants = state.grants_for(principal_id, key_scope)
        return all(any(g.role.allows_data_action(a) for g in grants) for a in roles.KMS_DATA_ACTIONS)
    for oid, perms in vault.access_policies:
        lowered = {p.lower() for p in perms}
        if oid == principal_id and {"encrypt", "decrypt"} <= lowered:
            return True
    return False


def validate_kms(state: FakeState, old_obj: dict[str, Any], new_obj: dict[str, Any]) -> tuple[str, str] | None:
    """Raise AKS's synchronous errors; return the asynchronous failure (code, message) or None."""
    old, new = kms_block(old_obj), kms_block(new_obj)
    if not new["enabled"]:
        return None
    ident_type = (new_obj.get("identity") or {}).get("type", "None")
    if ident_type != "UserAssigned":
        raise _invalid(
            f"AzureKeyVaultKms feature does not support cluster identity type {ident_type}, "
            "supported value is 'UserAssigned'."
        )
    access, vault_id, key_id = new["keyVaultNetworkAccess"], new["keyVaultResourceId"], new["keyId"]
    if not key_id:
        raise _invalid("KeyId is empty when Azure Key Vault KMS is enabled.")
    if access not in ("Public", "Private"):
        raise _invalid(f"KeyVault network access {access!r} is invalid; supported values are 'Public' and 'Private'.")
    if access == "Private" and not vault_id:
        raise _invalid("KeyVault resource ID is empty when KeyVault network access is Private.")
    if access == "Public" and vault_id:
        raise _invalid("KeyVault resource ID must be empty when KeyVault network access is Public.")
    if old["enabled"] and old["keyVaultNetworkAccess"] != access:
        raise _invalid(
            f"Changing KeyVault network access from {old['keyVaultNetworkAccess']} to {access} is not supported "
            "while Azure Key Vault KMS is enabled. Disable Azure Key Vault KMS first, then enable it with the "
            "new network access."
        )
    props = new_obj.get("properties") or {}
    managed = infrastructure_encryption(new_obj) == "Enabled"  # trusted-services bypass, not VNet integration
    if access == "Private" and not managed and not (props.get("apiServerAccessProfile") or {}).get(
            "enableVnetIntegration"):
        raise _invalid("API Server VNet Integration is required when KeyVault network access is Private.")
    parts = urlsplit(key_id)
    m = re.fullmatch(r"/keys/([A-Za-z0-9-]{1,127})(?:/([0-9A-Fa-f]{32}))?/?", parts.path)
    vault_name = keyvault.vault_name_of(parts.hostname or "")
    if parts.scheme != "https" or not m or vault_name is None:
        raise _invalid(f"KeyId {key_id!r} is not a valid Azure Key Vault key ID.")
    key_name, version = m[1], (m[2] or "")
    infra = ((props.get("securityProfile") or {}).get("kubernetesResourceObjectEncryptionProfile") or {}).get(
        "infrastructureEncryption"
    )
    if not version and infra != "Enabled":
        raise _invalid(
            "KeyId must be a versioned key ID (https://<vault>.vault.azure.net/keys/<name>/<version>) unless "
            "kubernetesResourceObjectEncryptionProfile.infrastructureEncryption is Enabled."
        )
    vault = state.vault(vault_name)
    if vault is None:
        raise _invalid(f"Key vault {vault_name} referenced by keyId was not found.")
    if vault.tenant_id.lower() != state.tenant_id.lower():
        raise _invalid(
            f"Key vault {vault_name} is in tenant {vault.tenant_id}; vaults in another tenant are not supported."
        )
    if access == "Private" and (_vault_from_resource_id(vault_id) or "").lower() != vault.name.lower():
        raise _invalid(f"KeyVault resource ID {vault_id!r} does not refer to the key vault {vault.name} of keyId.")
    key = state.find_key(vault.name, key_name, version)
    if key is None:
        raise _invalid(f"Key {key_id} was not found in key vault {vault.name}.")
    if key.kty != "RSA":
        raise ApiError(
            400,
            PERMISSION_CODE,
            f"The key {key_id} has key type {key.kty}; Azure Key Vault KMS supports only RSA keys.",
        )
    if not {"encrypt", "decrypt"} <= set(key.ops):
        raise ApiError(400, PERMISSION_CODE, f"The key {key_id} does not allow the encrypt and decrypt operations.")
    principal = _principal(state, new_obj)
    if principal is None or not has_kms_permission(state, vault.name, key_name, principal):
        raise ApiError(
            400,
            PERMISSION_CODE,
            f"The identity does not have keys encrypt/decrypt permission on key vault {vault.name}. Grant the "
            "cluster's user-assigned identity the 'Key Vault Crypto User' role on the key (RBAC vault) or an "
            "access policy with encrypt and decrypt key permissions.",
        )
    # Asynchronous: only found when the plugin uses the key or the private link is built.
    problem = keyvault.refusal(key, "encrypt", now_utc())
    if problem is not None:
        return (problem.inner_code or problem.code, problem.message.rstrip("."))
    if managed:
        return None  # validate_managed checked the firewall
    if access == "Public" and (
        vault.public_network_access == "Disabled"
        or (vault.default_action == "Deny" and "azureservices" not in vault.bypass.lower())
    ):
        return (
            "InternalOperationError",
            f"Azure Key Vault KMS cannot reach key vault {vault.name}: its firewall denies public network access "
            "and keyVaultNetworkAccess is Public.",
        )
    if access == "Private":
        grants = state.grants_for(principal, vault.resource_id)
        if not any(g.role.allows_action(roles.VAULT_WRITE) for g in grants):
            return (
                "InternalOperationError",
                f"Failed to create the private endpoint to key vault {vault.name}: the cluster identity needs "
                "'Key Vault Contributor' on the vault for KeyVault network access Private.",
            )
    return None


# ------------------------------------------------------------------------------- handlers


def metadata_endpoints(base_url: str, request: Request) -> Response:
    """``GET /metadata/endpoints``: served without a token, as ARM does (``az cloud register
    --endpoint-resource-manager`` reads it). Through the lab's proxy ``base_url`` is
    ``https://management.azure.com`` and the answer is AzureCloud's; on the fake's own address it names
    that address, so a custom cloud registered from it stays on the fake."""
    public = base_url == "https://management.azure.com"
    login = "https://login.microsoftonline.com" if public else base_url
    cloud = {
        "name": "AzureCloud",
        "portal": "https://portal.azure.com",
        "authentication": {
            "loginEndpoint": login,
            "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
            "tenant": "common",
            "identityProvider": "AAD",
        },
        "resourceManager": f"{base_url}/",
        "graph": "https://graph.windows.net/",
        "graphAudience": "https://graph.windows.net/",
        "microsoftGraphResourceId": "https://graph.microsoft.com/",
        "batch": "https://batch.core.windows.net/",
        "media": "https://rest.media.azure.net",
        "sqlManagement": "https://management.core.windows.net:8443/",
        "activeDirectoryDataLake": "https://datalake.azure.net/",
        "suffixes": {
            "keyVaultDns": "vault.azure.net",
            "mhsmDns": "managedhsm.azure.net",
            "storage": "core.windows.net",
            "acrLoginServer": "azurecr.io",
            "sqlServerHostname": "database.windows.net",
            "azureDataLakeStoreFileSystem": "azuredatalakestore.net",
            "azureDataLakeAnalyticsCatalogAndJob": "azuredatalakeanalytics.net",
        },
    }
    version = request.query.get("api-version", "")
    if version >= "2019-05-01":
        return Response(200, [cloud])
    legacy = {
        "galleryEndpoint": "https://gallery.azure.com/",
        "graphEndpoint": cloud["graph"],
        "portalEndpoint": "https://portal.azure.com/",
        "authentication": {**cloud["authentication"], "loginEndpoint": f"{login}/"},
    }
    return Response(200, legacy)


def _authenticate(state: FakeState, request: Request) -> None:
    if not request.header("authorization"):
        raise ApiError(
            401,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
            headers={
                "WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", error="invalid_token"'
            },
        )
    token = entra.bearer(state, request)
    if token is None or token.audience.rstrip("/") not in ARM_AUDIENCES:
        raise ApiError(401, "InvalidAuthenticationToken", "The access token is invalid.")


def _strip_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _cluster_response(obj: dict[str, Any], status: int = 200) -> Response:
    return Response(status, copy.deepcopy(obj), {"ETag": f'"{obj["eTag"]}"'})


def put_cluster(
    state: FakeState, base_url: str, request: Request, sub: str, rg: str, name: str, launch: Launcher
) -> Response:
    key = cluster_key(sub, rg, name)
    existing = state.clusters.get(key)
    if_match, if_none = request.header("if-match"), request.header("if-none-match")
    if if_match and if_none:
        raise ApiError(400, "BadRequest", "If-Match and If-None-Match headers cannot be specified together.")
    if if_none and if_none.strip() != "*":
        raise ApiError(400, "BadRequest", "If-None-Match header supports only '*'.")
    if existing is not None:
        if if_none:
            raise ApiError(412, "PreconditionFailed", f"Managed cluster {name} already exists (If-None-Match: *).")
        if if_match and if_match.strip() != "*" and _strip_etag(if_match) != existing["eTag"]:
            raise ApiError(
                412,
                "PreconditionFailed",
                f"Operation is not allowed: the eTag {if_match} does not match the current eTag of {name}.",
            )
        state_now = existing["properties"]["provisioningState"]
        if state_now not in TERMINAL or key in state.busy:
            raise ApiError(
                409,
                "OperationNotAllowed",
                f"Operation is not allowed: Another operation ({state_now}) is in progress, please wait for it to "
                "finish before starting a new operation. See https://aka.ms/aks-pending-operation for more details",
            )
    elif if_match:
        raise ApiError(412, "PreconditionFailed", f"Managed cluster {name} does not exist (If-Match).")
    body = json_body(request)
    if existing is None:
        raise ApiError(
            400, "BadRequest", "Creating managed clusters is not supported by this fake; use fake.add_cluster."
        )
    merged = _merge(existing, body)
    for owned in ("id", "name", "type", "location"):
        merged[owned] = existing[owned]
    old_kms, new_kms = kms_view(existing), kms_view(merged)
    api_version = request.query.get("api-version", "2026-08-01")
    failure: tuple[str, str] | None = None
    if old_kms != new_kms:
        failure = validate_managed(state, existing, merged, api_version)
        failure = validate_kms(state, existing, merged) or failure
        sp = merged["properties"].setdefault("securityProfile", {})
        sp["azureKeyVaultKms"] = kms_block(merged)
    after_apply: tuple[str, str] | None = None
    if failure is None and state.lro.fail_times > 0 and state.lro.fail_with is not None:
        if state.lro.fail_after_apply:
            after_apply = state.lro.fail_with
        else:
            failure = state.lro.fail_with
        state.lro.fail_times -= 1
    changed = changed_paths(existing, merged)
    dropped = dropped_properties(existing, body)
    merged["properties"]["provisioningState"] = "Updating"
    merged["eTag"] = new_etag()
    state.clusters[key] = merged
    location = existing["location"]
    op = Operation(id=str(uuid.uuid4()), cluster_key=key, subscription_id=sub, location=location)
    state.operations[op.id] = op
    state.busy[key] = op.id
    launch(LroPlan(op, old_kms, new_kms, failure, after_apply))
    resp = _cluster_response(merged, 200)
    resp.headers["Retry-After"] = RETRY_AFTER
    resp.headers["Azure-AsyncOperation"] = (
        f"{base_url}/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/{location}"
        f"/operations/{op.id}?api-version={api_version}"
    )
    resp.write_summary = {
        "cluster": key,
        "ifMatch": if_match,
        "changed": changed,
        "dropped": dropped,
        "kms": kms_block(merged),
        "infrastructureEncryption": new_kms["infrastructureEncryption"],
        "operation": op.id,
    }
    return resp


def _filter_principal(filter_expr: str) -> tuple[str | None, bool]:
    m = re.search(r"(?:principalId\s+eq\s+'([^']+)'|assignedTo\('([^']+)'\))", filter_expr, re.I)
    principal = (m[1] or m[2]) if m else None
    return principal, bool(re.search(r"atScope\(\)", filter_expr, re.I))


def list_assignments(state: FakeState, scope: str, filter_expr: str) -> Response:
    principal, at_scope = _filter_principal(filter_expr)
    scope_l = scope.lower().rstrip("/") + "/"
    out = []
    for a in state.assignments:
        if principal and a.principal_id != principal:
            continue
        a_scope = a.scope.lower().rstrip("/") + "/"
        above_or_at = scope_l.startswith(a_scope)
        below = a_scope.startswith(scope_l)
        if above_or_at or (below and not at_scope):
            out.append(a.arm())
    return Response(200, {"value": out})


def _subscription_arm(state: FakeState, sub: str) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{sub}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": sub,
        "tenantId": state.tenant_id,
        "displayName": "aks-kms lab",
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


def _subscription(state: FakeState, sub: str) -> str:
    known = state.subscriptions.get(sub.lower())
    if known is None:
        raise ApiError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
    return known


def _group(state: FakeState, sub: str, rg: str) -> Any:
    _subscription(state, sub)
    group = state.groups.get(f"{sub}/{rg}".lower())
    if group is None:
        raise ApiError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
    return group


def _identity_put(state: FakeState, request: Request, sub: str, rg: str, name: str) -> Response:
    """Create (201) or update (200) a user-assigned identity; its principal and client IDs are kept."""
    group = _group(state, sub, rg)
    body = json_body(request)
    rid = (
        f"/subscriptions/{sub}/resourcegroups/{group.name}"
        f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
    existing = state.identities.get(rid.lower())
    if existing is not None:
        return Response(200, existing.arm(), write_summary={"identity": existing.resource_id, "op": "update"})
    ident = Identity(
        resource_id=rid,
        principal_id=str(uuid.uuid4()),
        client_id=str(uuid.uuid4()),
        tenant_id=state.tenant_id,
        location=str(body.get("location") or group.location),
    )
    state.identities[rid.lower()] = ident
    return Response(201, ident.arm(), write_summary={"identity": rid, "op": "create"})


def _vault_put(state: FakeState, request: Request, sub: str, rg: str, name: str) -> Response:
    """Create (201) or replace (200) a vault's ARM properties; its keys are kept.

    Vault names are global in Azure: a name taken in another resource group → 409 ``VaultAlreadyExists``.
    """
    group = _group(state, sub, rg)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]", name) or "--" in name:
        raise ApiError(400, "VaultNameNotValid", f"The vault name '{name}' is invalid: use 3-24 letters, digits and "
                                                 "single hyphens, starting with a letter and ending with a letter "
                                                 "or digit.")
    body = json_body(request)
    props = body.get("properties") or {}
    existing = state.vault(name)
    if existing is not None and (
        existing.resource_group.lower() != rg.lower() or existing.subscription_id.lower() != sub.lower()
    ):
        raise ApiError(409, "VaultAlreadyExists", f"The vault name '{name}' is already in use.")
    if existing is None and not props.get("tenantId"):
        raise ApiError(400, "BadRequest", "The parameter properties.tenantId is required to create a vault.")
    acls = props.get("networkAcls") or {}
    vault = existing or Vault(
        subscription_id=sub, resource_group=group.name, name=name,
        location=str(body.get("location") or group.location), tenant_id=str(props["tenantId"]),
    )
    if props.get("tenantId"):
        vault.tenant_id = str(props["tenantId"])
    # Azure's defaults for a new vault: public access on, firewall open, soft delete on (API >= 2021).
    vault.public_network_access = str(props.get("publicNetworkAccess") or vault.public_network_access)
    if vault.public_network_access not in ("Enabled", "Disabled"):
        raise ApiError(400, "BadRequest", "properties.publicNetworkAccess must be 'Enabled' or 'Disabled'.")
    vault.default_action = str(acls.get("defaultAction") or vault.default_action)
    vault.bypass = str(acls.get("bypass") or vault.bypass)
    if props.get("enableRbacAuthorization") is not None:
        vault.rbac = bool(props["enableRbacAuthorization"])
    if props.get("enablePurgeProtection") is not None:
        vault.purge_protection = bool(props["enablePurgeProtection"])
    if "accessPolicies" in props:
        vault.access_policies = [
            (str(ap.get("objectId")), tuple((ap.get("permissions") or {}).get("keys") or ()))
            for ap in props.get("accessPolicies") or []
        ]
    state.vaults[name.lower()] = vault
    summary = {"vault": vault.resource_id, "op": "update" if existing else "create",
               "publicNetworkAccess": vault.public_network_access}
    return Response(200 if existing else 201, vault.arm(), write_summary=summary)


def _assignment_put(state: FakeState, request: Request, scope: str, name: str) -> Response:
    """Create a role assignment; the same principal, role and scope again → 409 ``RoleAssignmentExists``."""
    body = json_body(request)
    props = body.get("properties") or {}
    role_id, principal = str(props.get("roleDefinitionId") or ""), str(props.get("principalId") or "")
    role = roles.ROLES_BY_GUID.get(role_id.rstrip("/").rsplit("/", 1)[-1].lower())
    if role is None:
        raise ApiError(400, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role_id}' "
                                                          "does not exist.")
    if not principal:
        raise ApiError(400, "InvalidPrincipalId", "properties.principalId is required.")
    known = ({p for p, _secret in state.clients.values()} | {i.principal_id for i in state.identities.values()}
             | {u.object_id for u in state.users.values()})
    if principal not in known:
        raise ApiError(400, "PrincipalNotFound", f"Principal {principal.replace('-', '')} does not exist in the "
                                                 f"directory {state.tenant_id}. Check that you have the correct "
                                                 "principal ID (an object ID, not a client ID).")
    for a in state.assignments:
        if a.guid.lower() == name.lower():
            raise ApiError(409, "RoleAssignmentUpdateNotPermitted", "Tenant ID, application ID, principal ID, and "
                                                                   "scope are not allowed to be updated.")
        if (a.principal_id == principal and a.role.guid == role.guid
                and a.scope.lower().rstrip("/") == scope.lower().rstrip("/")):
            raise ApiError(409, "RoleAssignmentExists", "The role assignment already exists.")
    sub_m = re.match(_SUB, scope, re.I)
    assignment = RoleAssignment(name, principal, scope, role, sub_m["sub"] if sub_m else "",
                                str(props.get("principalType") or "ServicePrincipal"))
    state.assignments.append(assignment)
    summary = {"roleAssignment": assignment.arm()["id"], "role": role.name, "principalId": principal}
    return Response(201, assignment.arm(), write_summary=summary)


def _resource(state: FakeState, request: Request, path: str) -> Response | None:
    """Subscriptions, resource groups, identities, vaults and role assignments; None if no route."""
    method = request.method
    if ROUTE_TENANTS.fullmatch(path) and method == "GET":
        return Response(200, {"value": [{"id": f"/tenants/{state.tenant_id}", "tenantId": state.tenant_id,
                                         "tenantCategory": "Home", "displayName": "aks-kms lab",
                                         "defaultDomain": "akskmslab.onmicrosoft.com"}]})
    if ROUTE_SUBSCRIPTIONS.fullmatch(path) and method == "GET":
        return Response(200, {"value": [_subscription_arm(state, s) for s in state.subscriptions.values()]})
    if (m := ROUTE_SUBSCRIPTION.fullmatch(path)) and method == "GET":
        return Response(200, _subscription_arm(state, _subscription(state, m["sub"])))
    if (m := ROUTE_GROUPS.fullmatch(path)) and method == "GET":
        sub = _subscription(state, m["sub"]).lower()
        return Response(200, {"value": [g.arm() for g in state.groups.values() if g.subscription_id.lower() == sub]})
    if m := ROUTE_GROUP.fullmatch(path):
        if method in ("GET", "HEAD"):
            group = _group(state, m["sub"], m["rg"])
            return Response(200 if method == "GET" else 204, group.arm() if method == "GET" else None)
        if method == "PUT":
            _subscription(state, m["sub"])
            is_new = f"{m['sub']}/{m['rg']}".lower() not in state.groups
            location = str(json_body(request).get("location") or "westeurope")
            group = state.ensure_group(m["sub"], m["rg"], location)
            return Response(201 if is_new else 200, group.arm(), write_summary={"resourceGroup": group.arm()["id"]})
    if m := ROUTE_CLUSTERS.fullmatch(path):
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a list of managed clusters.")
        if m["rg"]:
            _group(state, m["sub"], m["rg"])
        prefix = f"{m['sub']}/{m['rg']}/".lower() if m["rg"] else f"{m['sub']}/".lower()
        items = [copy.deepcopy(obj) for key, obj in state.clusters.items() if key.startswith(prefix)]
        return Response(200, {"value": items})
    if m := ROUTE_IDENTITY.fullmatch(path):
        if method == "PUT":
            return _identity_put(state, request, m["sub"], m["rg"], m["name"])
        ident = state.identities.get(path.lower())
        if method == "DELETE":
            if ident is None:
                return Response(204)
            del state.identities[path.lower()]
            return Response(200, None, write_summary={"identity": ident.resource_id, "op": "delete"})
        if method == "GET":
            if ident is None:
                raise _not_found("Microsoft.ManagedIdentity/userAssignedIdentities", m["name"], m["rg"])
            return Response(200, ident.arm())
    if m := ROUTE_VAULT.fullmatch(path):
        vault = state.vault(m["name"])
        mine = vault is not None and vault.resource_group.lower() == m["rg"].lower()
        if method == "PUT":
            return _vault_put(state, request, m["sub"], m["rg"], m["name"])
        if method == "GET":
            if vault is None or not mine:
                raise _not_found("Microsoft.KeyVault/vaults", m["name"], m["rg"])
            return Response(200, vault.arm())
        if method == "DELETE":
            if vault is None or not mine:
                return Response(204)
            del state.vaults[m["name"].lower()]
            return Response(200, None, write_summary={"vault": vault.resource_id, "op": "delete"})
    if m := ROUTE_ASSIGNMENT.fullmatch(path):
        if method == "PUT":
            return _assignment_put(state, request, m["scope"] or "/", m["name"])
        found = next((a for a in state.assignments if a.guid.lower() == m["name"].lower()), None)
        if method == "GET":
            if found is None:
                raise ApiError(404, "RoleAssignmentNotFound", f"The role assignment '{m['name']}' is not found.")
            return Response(200, found.arm())
        if method == "DELETE":
            if found is None:
                return Response(204)
            state.assignments.remove(found)
            return Response(200, found.arm(), write_summary={"roleAssignment": found.arm()["id"], "op": "delete"})
    return None


def handle(state: FakeState, base_url: str, request: Request, launch: Launcher) -> Response:
    """Serve one ARM request. Call with ``state.lock`` held."""
    path, method = request.path.rstrip("/"), request.method
    if ROUTE_METADATA.fullmatch(path) and method == "GET":
        return metadata_endpoints(base_url, request)
    _authenticate(state, request)

    if m := ROUTE_OPERATION.fullmatch(path):
        op = state.operations.get(m["id"])
        if op is None or method != "GET":
            raise ApiError(404, "NotFound", f"Operation {m['id']} was not found.")
        return Response(200, op.arm(), {"Retry-After": RETRY_AFTER} if op.status not in TERMINAL else {})

    if m := ROUTE_CLUSTER.fullmatch(path):
        key = cluster_key(m["sub"], m["rg"], m["name"])
        if method == "GET":
            obj = state.clusters.get(key)
            if obj is None:
                raise _not_found("Microsoft.ContainerService/managedClusters", m["name"], m["rg"])
            return _cluster_response(obj)
        if method == "PUT":
            return put_cluster(state, base_url, request, m["sub"], m["rg"], m["name"], launch)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on managed clusters by this fake.")

    served = _resource(state, request, path)
    if served is not None:
        return served

    if method != "GET":
        raise ApiError(405, "MethodNotAllowed", f"{method} {request.path} is not supported by this fake.")

    if m := ROUTE_RESOURCES.fullmatch(path):
        filter_expr = request.query.get("$filter", "")
        type_m = re.search(r"resourceType\s+eq\s+'([^']+)'", filter_expr, re.I)
        name_m = re.search(r"name\s+eq\s+'([^']+)'", filter_expr, re.I)
        items = []
        if type_m is None or type_m[1].lower() == "microsoft.keyvault/vaults":
            for v in state.vaults.values():
                if v.subscription_id.lower() == m["sub"].lower() and (
                    name_m is None or name_m[1].lower() == v.name.lower()
                ):
                    arm = v.arm()
                    items.append({k: arm[k] for k in ("id", "name", "type", "location", "tags")})
        return Response(200, {"value": items})

    if m := ROUTE_ASSIGNMENTS.fullmatch(path):
        return list_assignments(state, m["scope"] or "/", request.query.get("$filter", ""))

    if m := ROUTE_ROLE_DEF.fullmatch(path):
        role = roles.ROLES_BY_GUID.get(m["id"].lower())
        if role is None:
            raise ApiError(
                404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{m['id']}' does not exist."
            )
        sub_m = re.match(_SUB, m["scope"], re.I)
        return Response(200, role_definition_arm(sub_m["sub"] if sub_m else "", role))

    if m := ROUTE_ROLE_DEFS.fullmatch(path):
        name_m = re.search(r"roleName\s+eq\s+'([^']+)'", request.query.get("$filter", ""), re.I)
        sub_m = re.match(_SUB, m["scope"], re.I)
        chosen = [r for r in roles.BUILT_IN_ROLES if name_m is None or r.name.lower() == name_m[1].lower()]
        return Response(200, {"value": [role_definition_arm(sub_m["sub"] if sub_m else "", r) for r in chosen]})

    raise ApiError(404, "NotFound", f"No ARM route for {method} {request.path} in this fake.")
