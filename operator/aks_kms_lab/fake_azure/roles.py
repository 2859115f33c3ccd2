"""Azure built-in role definitions the fake serves, with their real IDs, actions and data actions.

Why real values: the operator's preflight resolves a role assignment to its definition and checks the
data actions (``Microsoft.KeyVault/vaults/keys/encrypt/action`` ...) exactly as AKS does, so a fake
that invented simpler roles would let a wrong check pass. The permission sets follow the Azure
built-in roles reference (security section); only the roles that matter for KMS are listed.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

ENCRYPT = "Microsoft.KeyVault/vaults/keys/encrypt/action"
DECRYPT = "Microsoft.KeyVault/vaults/keys/decrypt/action"
KMS_DATA_ACTIONS = (ENCRYPT, DECRYPT)
VAULT_WRITE = "Microsoft.KeyVault/vaults/write"  # what a private link for a Private vault needs

_AUTHZ_READ_BASE = (
    "Microsoft.Authorization/*/read",
    "Microsoft.Insights/alertRules/*",
    "Microsoft.Resources/deployments/*",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    "Microsoft.Support/*",
    "Microsoft.KeyVault/checkNameAvailability/read",
    "Microsoft.KeyVault/deletedVaults/read",
    "Microsoft.KeyVault/locations/*/read",
    "Microsoft.KeyVault/operations/read",
)


@dataclass(frozen=True)
class RoleDefinition:
    guid: str
    name: str
    description: str
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()
    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()

    def allows_data_action(self, action: str) -> bool:
        return _matches(action, self.data_actions) and not _matches(action, self.not_data_actions)

    def allows_action(self, action: str) -> bool:
        return _matches(action, self.actions) and not _matches(action, self.not_actions)


def _matches(action: str, patterns: tuple[str, ...]) -> bool:
    # Azure RBAC wildcards are case-insensitive and '*' spans path segments.
    return any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns)


BUILT_IN_ROLES: tuple[RoleDefinition, ...] = (
    RoleDefinition(
        guid="12338af0-0e69-4776-bea7-57ae8d297424",
        name="Key Vault Crypto User",
        description="Perform cryptographic operations using keys.",
        actions=(),
        data_actions=(
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/update/action",
            "Microsoft.KeyVault/vaults/keys/backup/action",
            "Microsoft.KeyVault/vaults/keys/encrypt/action",
            "Microsoft.KeyVault/vaults/keys/decrypt/action",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
            "Microsoft.KeyVault/vaults/keys/sign/action",
            "Microsoft.KeyVault/vaults/keys/verify/action",
        ),
    ),
    RoleDefinition(
        guid="e147488a-f6f5-4113-8e2d-b22465e65bf6",
        name="Key Vault Crypto Service Encryption User",
        description="Read metadata of keys and perform wrap/unwrap operations.",
        actions=(
            "Microsoft.EventGrid/eventSubscriptions/write",
            "Microsoft.EventGrid/eventSubscriptions/read",
            "Microsoft.EventGrid/eventSubscriptions/delete",
        ),
        data_actions=(
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
        ),
    ),
    RoleDefinition(
        guid="14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        name="Key Vault Crypto Officer",
        description="Perform any action on the keys of a key vault, except manage permissions.",
        actions=(*_AUTHZ_READ_BASE, "Microsoft.KeyVault/vaults/*/read"),
        data_actions=("Microsoft.KeyVault/vaults/keys/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"),
    ),
    RoleDefinition(
        guid="00482a5a-887f-4fb3-b363-3b7fe8e74483",
        name="Key Vault Administrator",
        description="Perform all data plane operations on a key vault and all objects in it.",
        actions=(*_AUTHZ_READ_BASE, "Microsoft.KeyVault/vaults/*/read"),
        data_actions=("Microsoft.KeyVault/vaults/*",),
    ),
    RoleDefinition(
        guid="f25e0fa2-a7c8-4377-a976-54943a77a395",
        name="Key Vault Contributor",
        description="Manage key vaults, but does not allow you to assign roles or access data.",
        actions=(*_AUTHZ_READ_BASE, "Microsoft.KeyVault/vaults/*"),
        not_actions=(
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
        ),
    ),
    RoleDefinition(
        guid="21090545-7ca7-4776-b22c-e363652d74d2",
        name="Key Vault Reader",
        description="Read metadata of key vaults and its certificates, keys, and secrets.",
        actions=(*_AUTHZ_READ_BASE, "Microsoft.KeyVault/vaults/*/read"),
        data_actions=(
            "Microsoft.KeyVault/vaults/*/read",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ),
    ),
    RoleDefinition(
        guid="4633458b-17de-408a-b874-0445c86b69e6",
        name="Key Vault Secrets User",
        description="Read secret contents.",
        data_actions=(
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ),
    ),
    RoleDefinition(
        guid="b24988ac-6180-42a0-ab88-20f7382dd24c",
        name="Contributor",
        description="Grants full access to manage all resources, but does not allow you to assign roles.",
        actions=("*",),
        not_actions=(
            "Microsoft.Authorization/*/Delete",
            "Microsoft.Authorization/*/Write",
            "Microsoft.Authorization/elevateAccess/Action",
        ),
    ),
    RoleDefinition(
        guid="8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
        name="Owner",
        description="Grants full access to manage all resources, including the ability to assign roles.",
        actions=("*",),
    ),
)

ROLES_BY_NAME = {r.name.lower(): r for r in BUILT_IN_ROLES}
ROLES_BY_GUID = {r.guid: r for r in BUILT_IN_ROLES}


def role_by_name(name: str) -> RoleDefinition:
    try:
        return ROLES_BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown built-in role {name!r}; known: {sorted(r.name for r in BUILT_IN_ROLES)}") from None
