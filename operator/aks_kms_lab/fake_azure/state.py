"""In-memory state of the fake Azure: clusters, identities, vaults, keys, role assignments, tokens.

One :class:`FakeState` holds everything behind one re-entrant lock. Handlers take the lock for the
whole of a request, so every request sees and leaves a consistent picture; the only work done outside
the lock is the LRO worker's sleep and the ``on_kms_change`` hook (which may take seconds while the
lab rolls its API server).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .roles import RoleDefinition

KV_SUFFIX = "vault.azure.net"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def epoch(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


@dataclass
class KeyVersion:
    vault: str
    name: str
    version: str
    kty: str  # RSA | EC
    ops: tuple[str, ...]
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    enabled: bool = True
    expires_on: dt.datetime | None = None
    not_before: dt.datetime | None = None
    created: dt.datetime = field(default_factory=now_utc)
    updated: dt.datetime = field(default_factory=now_utc)

    @property
    def kid(self) -> str:
        return f"https://{self.vault}.{KV_SUFFIX}/keys/{self.name}/{self.version}"

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "enabled": self.enabled,
            "created": epoch(self.created),
            "updated": epoch(self.updated),
            "recoveryLevel": "Recoverable",
            "recoverableDays": 90,
            "exportable": False,
        }
        if self.expires_on is not None:
            attrs["exp"] = epoch(self.expires_on)
        if self.not_before is not None:
            attrs["nbf"] = epoch(self.not_before)
        return attrs

    def jwk(self) -> dict[str, Any]:
        key: dict[str, Any] = {"kid": self.kid, "kty": self.kty, "key_ops": list(self.ops)}
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            key.update(n=b64url(_int_bytes(numbers.n)), e=b64url(_int_bytes(numbers.e)))
        else:
            numbers_ec = public.public_numbers()
            size = (public.curve.key_size + 7) // 8
            key.update(
                crv="P-256",
                x=b64url(numbers_ec.x.to_bytes(size, "big")),
                y=b64url(numbers_ec.y.to_bytes(size, "big")),
            )
        return key

    def bundle(self) -> dict[str, Any]:
        return {"key": self.jwk(), "attributes": self.attributes(), "tags": {}}

    def item(self) -> dict[str, Any]:
        return {"kid": self.kid, "attributes": self.attributes(), "tags": {}}


@dataclass
class Vault:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    tenant_id: str
    public_network_access: str = "Enabled"
    default_action: str = "Allow"
    bypass: str = "AzureServices"
    rbac: bool = True
    soft_delete: bool = True
    purge_protection: bool = True
    # (object_id, key permissions)
    access_policies: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    keys: dict[str, list[KeyVersion]] = field(default_factory=dict)  # name -> versions, oldest first
    # name -> rotation policy as Key Vault stores it (lifetimeActions, attributes.expiryTime, created/updated)
    rotation_policies: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/vaults/{self.name}"
        )

    def arm(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "tenantId": self.tenant_id,
            "sku": {"family": "A", "name": "standard"},
            "vaultUri": f"https://{self.name}.{KV_SUFFIX}/",
            "enableRbacAuthorization": self.rbac,
            "enableSoftDelete": self.soft_delete,
            "softDeleteRetentionInDays": 90,
            "publicNetworkAccess": self.public_network_access,
            "networkAcls": {
                "bypass": self.bypass,
                "defaultAction": self.default_action,
                "ipRules": [],
                "virtualNetworkRules": [],
            },
            "accessPolicies": [
                {
                    "tenantId": self.tenant_id,
                    "objectId": oid,
                    "permissions": {"keys": list(perms), "secrets": [], "certificates": []},
                }
                for oid, perms in self.access_policies
            ],
            "provisioningState": "Succeeded",
        }
        if self.purge_protection:
            props["enablePurgeProtection"] = True
        return {
            "id": self.resource_id,
            "name": self.name,
            "type": "Microsoft.KeyVault/vaults",
            "location": self.location,
            "tags": {},
            "properties": props,
        }


@dataclass
class User:
    """A directory user who signs in with a password (the Azure CLI's ``az login -u -p``)."""

    user_principal_name: str
    object_id: str
    password: str
    display_name: str = "Lab User"

    def graph(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.user",
            "id": self.object_id,
            "displayName": self.display_name,
            "userPrincipalName": self.user_principal_name,
            "mail": None,
            "givenName": "Lab",
            "surname": "User",
            "businessPhones": [],
            "jobTitle": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "mobilePhone": None,
        }


@dataclass
class ResourceGroup:
    subscription_id: str
    name: str
    location: str

    def arm(self) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.subscription_id}/resourceGroups/{self.name}",
            "name": self.name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": self.location,
            "tags": {},
            "properties": {"provisioningState": "Succeeded"},
        }


@dataclass
class Identity:
    resource_id: str
    principal_id: str
    client_id: str
    tenant_id: str
    location: str = "westeurope"

    def arm(self) -> dict[str, Any]:
        return {
            "id": self.resource_id,
            "name": self.resource_id.rsplit("/", 1)[-1],
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "location": self.location,
            "tags": {},
            "properties": {
                "tenantId": self.tenant_id,
                "principalId": self.principal_id,
                "clientId": self.client_id,
            },
        }


@dataclass
class RoleAssignment:
    guid: str
    principal_id: str
    scope: str
    role: RoleDefinition
    subscription_id: str
    principal_type: str = "ServicePrincipal"

    def arm(self) -> dict[str, Any]:
        scope = self.scope.rstrip("/")
        return {
            "id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{self.guid}",
            "name": self.guid,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "roleDefinitionId": role_definition_id(self.subscription_id, self.role.guid),
                "principalId": self.principal_id,
                "principalType": self.principal_type,
                "scope": self.scope,
            },
        }


def role_definition_id(subscription_id: str, guid: str) -> str:
    return f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def role_definition_arm(subscription_id: str, role: RoleDefinition) -> dict[str, Any]:
    return {
        "id": role_definition_id(subscription_id, role.guid),
        "name": role.guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": role.name,
            "type": "BuiltInRole",
            "description": role.description,
            "assignableScopes": ["/"],
            "permissions": [
                {
                    "actions": list(role.actions),
                    "notActions": list(role.not_actions),
                    "dataActions": list(role.data_actions),
                    "notDataActions": list(role.not_data_actions),
                }
            ],
        },
    }


@dataclass
class Operation:
    """An AKS long-running operation, as served at ``.../locations/{loc}/operations/{id}``."""

    id: str
    cluster_key: str
    subscription_id: str
    location: str
    status: str = "InProgress"
    error: dict[str, str] | None = None
    started: dt.datetime = field(default_factory=now_utc)
    ended: dt.datetime | None = None

    def arm(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": (
                f"/subscriptions/{self.subscription_id}/providers/Microsoft.ContainerService"
                f"/locations/{self.location}/operations/{self.id}"
            ),
            "name": self.id,
            "status": self.status,
            "startTime": self.started.isoformat(),
        }
        if self.ended is not None:
            body["endTime"] = self.ended.isoformat()
        if self.error is not None:
            body["error"] = dict(self.error)
        return body


@dataclass
class Token:
    client_id: str
    principal_id: str
    audience: str  # the scope's resource, e.g. https://management.azure.com
    expires: dt.datetime


@dataclass
class LroSettings:
    seconds: float = 0.2
    fail_with: tuple[str, str] | None = None
    fail_times: int = 0
    fail_after_apply: bool = False  # the failure comes after the KMS change reached the API servers


class FakeState:
    """All mutable state. Access only with ``lock`` held."""

    def __init__(self, tenant_id: str) -> None:
        self.lock = threading.RLock()
        self.tenant_id = tenant_id
        self.clusters: dict[str, dict[str, Any]] = {}  # cluster key -> ARM object
        self.identities: dict[str, Identity] = {}  # lower-case resource id -> identity
        self.vaults: dict[str, Vault] = {}  # lower-case vault name -> vault
        self.assignments: list[RoleAssignment] = []
        self.operations: dict[str, Operation] = {}
        self.busy: dict[str, str] = {}  # cluster key -> running operation id
        self.tokens: dict[str, Token] = {}
        self.clients: dict[str, tuple[str, str | None]] = {}  # client id -> (principal id, secret)
        self.lro = LroSettings()
        # Real seconds per day of a Key Vault rotation policy's ISO 8601 durations (P30D, P1Y…). 86400 is
        # Key Vault's clock; the lab shortens it so a test sees Key Vault rotate a key by itself.
        self.rotation_day_seconds = 86400.0
        # Subscriptions and resource groups come into being with the first resource seeded in them
        # (``ensure_group``), so ``az login`` lists the subscription and ``az group show`` finds the group.
        self.subscriptions: dict[str, str] = {}  # lower-case id -> id as written
        self.groups: dict[str, ResourceGroup] = {}  # "sub/rg" lower-case -> group
        self.users: dict[str, User] = {}  # lower-case user principal name -> user
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> lower-case user principal name

    # ---------------------------------------------------------------- lookups

    def ensure_group(self, subscription_id: str, name: str, location: str = "westeurope") -> ResourceGroup:
        """The resource group (and its subscription), created on first use."""
        self.subscriptions.setdefault(subscription_id.lower(), subscription_id)
        key = f"{subscription_id}/{name}".lower()
        if key not in self.groups:
            self.groups[key] = ResourceGroup(subscription_id, name, location)
        return self.groups[key]

    def identity_by_principal(self, principal_id: str) -> Identity | None:
        return next((i for i in self.identities.values() if i.principal_id == principal_id), None)

    def vault(self, name: str) -> Vault | None:
        return self.vaults.get(name.lower())

    def key_versions(self, vault: str, name: str) -> list[KeyVersion]:
        v = self.vault(vault)
        return [] if v is None else v.keys.get(name.lower(), [])

    def find_key(self, vault: str, name: str, version: str = "") -> KeyVersion | None:
        versions = self.key_versions(vault, name)
        if not versions:
            return None
        if not version:
            return versions[-1]
        return next((k for k in versions if k.version == version.lower()), None)

    def grants_for(self, principal_id: str, resource_id: str) -> list[RoleAssignment]:
        """Assignments of the principal whose scope covers the resource (at or above it)."""
        target = resource_id.lower().rstrip("/") + "/"
        return [
            a
            for a in self.assignments
            if a.principal_id == principal_id and target.startswith(a.scope.lower().rstrip("/") + "/")
        ]

    def snapshot_cluster(self, key: str) -> dict[str, Any] | None:
        obj = self.clusters.get(key)
        return None if obj is None else copy.deepcopy(obj)


def cluster_key(subscription_id: str, resource_group: str, name: str) -> str:
    """Resource names in ARM are case-insensitive; the key is the lower-cased triple."""
    return f"{subscription_id}/{resource_group}/{name}".lower()


def new_etag() -> str:
    return str(uuid.uuid4())
