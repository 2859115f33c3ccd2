"""Preflight checks: everything that would make an AKS KMS write fail or hurt, found before the write.

AKS validates some of this itself, but only after an ARM write was accepted, and then it reports
a generic error and may leave the cluster ``Failed`` (reference/aks-arm-api.md section 7). Checking
first keeps Azure untouched when the write cannot work (design.md 2.3, invariant 9) and lets the
``Stalled`` condition carry the exact fix.

Pure: the checks read only ``PreflightFacts``; the Azure gateways gather them. Each finding has a
stable reason code, a severity (block, wait, or warn) and a one-line fix, preferably an ``az``
command a platform engineer can paste.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from .model import ClusterState, KeyRef, KeyState, PreflightFacts, RoleGrant, VaultState

# The Azure KMS plugin encrypts and decrypts data keys with RSA-OAEP-256 through Key Vault's
# encrypt/decrypt operations (reference 9; the new experience documents the same two operations).
# It never calls wrapKey/unwrapKey, so those are not required; asking for them would block keys
# that work.
REQUIRED_KEY_OPS = ("encrypt", "decrypt")
RSA_KEY_TYPES = frozenset({"RSA", "RSA-HSM"})
ENCRYPT_DATA_ACTION = "Microsoft.KeyVault/vaults/keys/encrypt/action"
DECRYPT_DATA_ACTION = "Microsoft.KeyVault/vaults/keys/decrypt/action"
# Private link setup needs management-plane write access on the vault ("Key Vault Contributor",
# whose actions are Microsoft.KeyVault/*). We test the action, not the role name, so custom roles
# and Contributor/Owner count too.
VAULT_WRITE_ACTION = "Microsoft.KeyVault/vaults/write"
KMS_V2_MINIMUM = (1, 27)
# The Managed experience (KMS data encryption): Kubernetes 1.33+, ARM API 2026-07-01+, and for a
# customer-managed key Key Vault Reader (management-plane read of the vault's keys, to find new
# versions) next to Key Vault Crypto User. Private vaults are reached through the trusted-services bypass.
MANAGED_MINIMUM = (1, 33)
MANAGED_API_VERSION = "2026-07-01"
VAULT_KEYS_READ_ACTION = "Microsoft.KeyVault/vaults/keys/read"
KMS_V1_SECRET_LIMIT = 2000


class Severity(StrEnum):
    """What a finding does to the plan."""

    BLOCK = "Block"  # a human must act; nothing is written to Azure (Stalled)
    WAIT = "Wait"  # retry later on its own (kopf TemporaryError)
    WARN = "Warn"  # reported in status.warnings; the plan goes on


class Reason(StrEnum):
    """Reason codes; the declaration order is the order findings are reported in."""

    CONFLICT = "Conflict"
    CLUSTER_BUSY = "ClusterBusy"
    IDENTITY_NOT_USER_ASSIGNED = "IdentityNotUserAssigned"
    KEY_VAULT_IN_OTHER_TENANT = "KeyVaultInOtherTenant"
    KEY_NOT_FOUND = "KeyNotFound"
    KEY_DISABLED = "KeyDisabled"
    KEY_EXPIRED = "KeyExpired"
    KEY_NOT_YET_VALID = "KeyNotYetValid"
    KEY_NOT_RSA = "KeyNotRSA"
    KEY_OPERATIONS_MISSING = "KeyOperationsMissing"
    IDENTITY_LACKS_KEY_PERMISSION = "IdentityLacksKeyPermission"
    IDENTITY_LACKS_PRIVATE_LINK_PERMISSION = "IdentityLacksPrivateLinkPermission"
    KEY_VAULT_FIREWALL_BLOCKS_PLUGIN = "KeyVaultFirewallBlocksPlugin"
    PRIVATE_VAULT_NEEDS_VNET_INTEGRATION = "PrivateVaultNeedsVnetIntegration"
    PREVIOUS_KEY_INVALID = "PreviousKeyInvalid"
    KMS_V1_SECRET_LIMIT = "KmsV1SecretLimit"
    KEY_VAULT_RECOVERY_DISABLED = "KeyVaultRecoveryDisabled"
    KEY_EXPIRES_SOON = "KeyExpiresSoon"
    VAULT_NOT_OBSERVED = "VaultNotObserved"
    API_VERSION_TOO_OLD = "ApiVersionTooOld"
    MIGRATION_FROM_KMS_V1 = "MigrationFromKmsV1"
    MANAGED_NEEDS_KUBERNETES_1_33 = "ManagedNeedsKubernetes133"
    IDENTITY_LACKS_KEY_VAULT_READER = "IdentityLacksKeyVaultReader"
    KEY_VAULT_FIREWALL_NO_TRUSTED_SERVICES = "KeyVaultFirewallNoTrustedServices"
    KMS_V1 = "KmsV1"  # reported by the planner, not by run_preflight; listed for the shared order


_ORDER = {reason: i for i, reason in enumerate(Reason)}


@dataclass(frozen=True)
class Finding:
    """One preflight result: a reason code, what it does to the plan, and how to fix it."""

    reason: str
    severity: Severity
    message: str
    fix: str = ""

    @property
    def blocks(self) -> bool:
        return self.severity is Severity.BLOCK

    @property
    def waits(self) -> bool:
        return self.severity is Severity.WAIT

    def summary(self) -> str:
        """``Reason: message (fix: …)``: the form status.warnings and condition messages use."""
        return f"{self.reason}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


def blocking(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.blocks]


def waiting(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.waits]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.WARN]


def any_blocking(findings: Iterable[Finding]) -> bool:
    return any(f.blocks for f in findings)


def _rank(reason: str) -> int:
    try:
        return _ORDER[Reason(reason)]
    except ValueError:
        return len(_ORDER)


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Stable report order: by reason declaration order, then message (status diffs stay quiet)."""
    return sorted(findings, key=lambda f: (_rank(f.reason), f.reason, f.message))


# ------------------------------------------------------------------------------------ matching


@lru_cache(maxsize=256)
def _pattern(action: str) -> re.Pattern[str]:
    # Azure RBAC: case-insensitive, "*" matches any run of characters including "/".
    return re.compile("^" + ".*".join(re.escape(p) for p in action.split("*")) + "$", re.IGNORECASE)


def action_matches(pattern: str, action: str) -> bool:
    """Whether an RBAC (data) action pattern such as ``Microsoft.KeyVault/*`` covers ``action``."""
    return bool(_pattern(pattern).match(action))


def _grants(allowed: Sequence[str], denied: Sequence[str], action: str) -> bool:
    return any(action_matches(p, action) for p in allowed) and not any(action_matches(p, action) for p in denied)


def scope_covers(scope: str, resource_id: str) -> bool:
    """Whether a role assignment at ``scope`` applies to ``resource_id`` (inheritance downward).

    Root and management-group scopes cannot be resolved to subscriptions from here; the gateway
    only returns assignments that ARM lists for the vault, so those are taken as applying.
    """
    s = scope.rstrip("/").lower()
    r = resource_id.rstrip("/").lower()
    if s == "" or s.startswith("/providers/microsoft.management/managementgroups/"):
        return True
    return r == s or r.startswith(s + "/")


def _key_resource_id(vault_id: str, key: KeyRef | None) -> str:
    return f"{vault_id.rstrip('/')}/keys/{key.name}" if key else vault_id


def rbac_allows(grants: Iterable[RoleGrant], resource_id: str, data_action: str) -> bool:
    """Whether any grant whose scope covers ``resource_id`` allows ``data_action``."""
    return any(scope_covers(g.scope, resource_id) and _grants(g.data_actions, g.not_data_actions, data_action)
               for g in grants)


def rbac_allows_action(grants: Iterable[RoleGrant], resource_id: str, action: str) -> bool:
    return any(scope_covers(g.scope, resource_id) and _grants(g.actions, g.not_actions, action) for g in grants)


def access_policy_allows(vault: VaultState, object_id: str, permissions: Iterable[str]) -> bool:
    """Access-policy vaults: the identity's object id needs every permission (``all`` covers any)."""
    granted: set[str] = set()
    for policy in vault.access_policies:
        if policy.object_id.lower() == object_id.lower():
            granted |= {p.lower() for p in policy.key_permissions}
    return "all" in granted or all(p.lower() in granted for p in permissions)


# -------------------------------------------------------------------------------------- checks


def _parse(key: KeyState | None) -> KeyRef | None:
    if key is None:
        return None
    try:
        return KeyRef.parse(key.key_id)
    except ValueError:
        return None


def _ts(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "?"


def _key_checks(facts: PreflightFacts, key: KeyState) -> list[Finding]:
    now, kid = facts.now, key.key_id
    out: list[Finding] = []
    if not key.exists:
        return [Finding(Reason.KEY_NOT_FOUND, Severity.BLOCK, f"Key Vault has no key {kid}",
                        f"az keyvault key show --id {kid}  # then set spec.kms.keyId to an existing key version")]
    if not key.enabled:
        out.append(Finding(Reason.KEY_DISABLED, Severity.BLOCK, f"key {kid} is disabled",
                           f"az keyvault key set-attributes --id {kid} --enabled true"))
    if key.expired(now):
        out.append(Finding(Reason.KEY_EXPIRED, Severity.BLOCK, f"key {kid} expired at {_ts(key.expires_on)}",
                           f"az keyvault key set-attributes --id {kid} --expires <later UTC date>, "
                           "or point spec.kms.keyId at a new version"))
    elif key.expires_within(now, facts.expiry_warning):
        out.append(Finding(Reason.KEY_EXPIRES_SOON, Severity.WARN,
                           f"key {kid} expires at {_ts(key.expires_on)}, within the expiry warning window",
                           f"az keyvault key set-attributes --id {kid} --expires <later UTC date>"))
    if key.not_yet_valid(now):
        out.append(Finding(Reason.KEY_NOT_YET_VALID, Severity.BLOCK,
                           f"key {kid} is not valid before {_ts(key.not_before)}",
                           f"wait until {_ts(key.not_before)} or az keyvault key set-attributes --id {kid} "
                           "--not-before <earlier UTC date>"))
    if not key.key_type:
        # Type and operations unknown: Key Vault refuses to read a disabled version, and the gateway then
        # reports it from the version listing (no key material). KeyDisabled above already blocks.
        return out
    if key.key_type not in RSA_KEY_TYPES:
        ref = _parse(key)
        vault = ref.vault_name if ref else "<vault>"
        out.append(Finding(Reason.KEY_NOT_RSA, Severity.BLOCK,
                           f"key {kid} is {key.key_type}; the AKS KMS plugin needs an RSA key (RSA-OAEP-256)",
                           f"az keyvault key create --vault-name {vault} -n <name> --kty RSA --size 2048 "
                           "and set spec.kms.keyId to it"))
    ops = {o.lower() for o in key.key_ops}
    missing = [o for o in REQUIRED_KEY_OPS if o not in ops]
    if missing:
        wanted = sorted({*key.key_ops, *REQUIRED_KEY_OPS}, key=str.lower)
        out.append(Finding(Reason.KEY_OPERATIONS_MISSING, Severity.BLOCK,
                           f"key {kid} does not allow {' and '.join(missing)}",
                           f"az keyvault key set-attributes --id {kid} --ops {' '.join(wanted)}"))
    return out


def _identity_checks(facts: PreflightFacts, key: KeyState, key_ref: KeyRef | None) -> list[Finding]:
    vault, identity = facts.vault, facts.identity
    if vault is None or identity is None:
        return []
    out: list[Finding] = []
    pid = identity.principal_id
    assignee = f"--assignee-object-id {pid} --assignee-principal-type ServicePrincipal"
    if vault.rbac_authorization:
        target = _key_resource_id(vault.resource_id, key_ref)
        if not all(rbac_allows(facts.grants, target, a) for a in (ENCRYPT_DATA_ACTION, DECRYPT_DATA_ACTION)):
            out.append(Finding(
                Reason.IDENTITY_LACKS_KEY_PERMISSION, Severity.BLOCK,
                f"identity {pid} has no role with keys encrypt and decrypt data actions on the key, "
                "its vault, resource group or subscription",
                f'az role assignment create --role "Key Vault Crypto User" {assignee} --scope {vault.resource_id}'))
    elif not access_policy_allows(vault, pid, REQUIRED_KEY_OPS):
        name = key_ref.vault_name if key_ref else vault.resource_id.rsplit("/", 1)[-1]
        out.append(Finding(
            Reason.IDENTITY_LACKS_KEY_PERMISSION, Severity.BLOCK,
            f"the vault's access policies do not give identity {pid} the encrypt and decrypt key permissions",
            f"az keyvault set-policy -n {name} --object-id {pid} --key-permissions encrypt decrypt"))
    if facts.managed and vault.rbac_authorization and not rbac_allows_action(facts.grants, vault.resource_id,
                                                                             VAULT_KEYS_READ_ACTION):
        out.append(Finding(
            Reason.IDENTITY_LACKS_KEY_VAULT_READER, Severity.BLOCK,
            f"identity {pid} needs Key Vault Reader on the vault: the Managed experience reads the key's versions "
            "to follow new ones",
            f'az role assignment create --role "Key Vault Reader" {assignee} --scope {vault.resource_id}'))
    if facts.network_access == "Private" and not facts.managed and not rbac_allows_action(
            facts.grants, vault.resource_id, VAULT_WRITE_ACTION):
        out.append(Finding(
            Reason.IDENTITY_LACKS_PRIVATE_LINK_PERMISSION, Severity.BLOCK,
            f"identity {pid} needs Key Vault Contributor on the vault to set up the private link",
            f'az role assignment create --role "Key Vault Contributor" {assignee} --scope {vault.resource_id}'))
    return out


def _vault_checks(facts: PreflightFacts, vault: VaultState) -> list[Finding]:
    out: list[Finding] = []
    name = vault.resource_id.rstrip("/").rsplit("/", 1)[-1]
    tenant = facts.subscription_tenant_id or (facts.identity.tenant_id if facts.identity else "")
    if tenant and vault.tenant_id and vault.tenant_id.lower() != tenant.lower():
        out.append(Finding(Reason.KEY_VAULT_IN_OTHER_TENANT, Severity.BLOCK,
                           f"vault {name} is in tenant {vault.tenant_id}, the cluster in {tenant}; "
                           "AKS KMS does not support cross-tenant vaults",
                           f"create the key in a vault of tenant {tenant} and set spec.kms.keyId to it"))
    if facts.managed:
        if vault.public_network_access.lower() == "disabled" or (
                vault.network_default_action.lower() == "deny" and "azureservices" not in vault.network_bypass.lower()):
            out.append(Finding(Reason.KEY_VAULT_FIREWALL_NO_TRUSTED_SERVICES, Severity.BLOCK,
                               f"vault {name} firewall (publicNetworkAccess {vault.public_network_access}, default "
                               f"action {vault.network_default_action}, bypass {vault.network_bypass or 'None'}) "
                               "keeps AKS out: the Managed experience reaches the vault as a trusted Azure service",
                               f"az keyvault update -n {name} --public-network-access Enabled --bypass AzureServices"))
    elif facts.network_access == "Public" and (
        vault.public_network_access.lower() == "disabled" or vault.network_default_action.lower() == "deny"
    ):
        out.append(Finding(Reason.KEY_VAULT_FIREWALL_BLOCKS_PLUGIN, Severity.BLOCK,
                           f"vault {name} refuses public traffic (publicNetworkAccess "
                           f"{vault.public_network_access}, default action {vault.network_default_action}) "
                           "but spec.kms.keyVaultNetworkAccess is Public",
                           f"az keyvault update -n {name} --public-network-access Enabled --default-action Allow, "
                           "or set spec.kms.keyVaultNetworkAccess: Private with keyVaultResourceId"))
    if not (vault.soft_delete and vault.purge_protection):
        off = " and ".join(n for n, on in (("soft delete", vault.soft_delete),
                                            ("purge protection", vault.purge_protection)) if not on)
        out.append(Finding(Reason.KEY_VAULT_RECOVERY_DISABLED, Severity.WARN,
                           f"vault {name} has {off} off: a deleted key would make every Secret unreadable",
                           f"az keyvault update -n {name} --enable-purge-protection true"))
    return out


def run_preflight(facts: PreflightFacts) -> list[Finding]:
    """All findings for the write about to be made, in a stable order.

    ``facts.target_key`` is None when the write disables KMS: then only what still matters for
    reading the old key until the rewrite ends is checked (busy, conflict, previous key).
    """
    cluster = facts.cluster
    rg = facts.cluster_resource_group or "<resource-group>"
    name = facts.cluster_name or "<cluster>"
    found: list[Finding] = []
    if facts.conflicting_policies:
        others = ", ".join(sorted(facts.conflicting_policies))
        found.append(Finding(Reason.CONFLICT, Severity.BLOCK,
                             f"other ClusterEncryptionPolicies name the same cluster: {others}",
                             f"kubectl delete clusterencryptionpolicy {sorted(facts.conflicting_policies)[0]}"
                             " (keep exactly one per cluster)"))
    if cluster.busy:
        found.append(Finding(Reason.CLUSTER_BUSY, Severity.WAIT,
                             f"AKS is {cluster.provisioning_state or 'in an unknown state'}; "
                             "a PUT now would be rejected",
                             f"none: retried automatically (az aks show -g {rg} -n {name} "
                             "--query provisioningState)"))
    key = facts.target_key
    if key is not None:
        if cluster.identity_type != "UserAssigned":
            found.append(Finding(Reason.IDENTITY_NOT_USER_ASSIGNED, Severity.BLOCK,
                                 f"cluster identity is {cluster.identity_type or 'None'}; AKS KMS supports only "
                                 "a user-assigned managed identity",
                                 f"az aks update -g {rg} -n {name} --enable-managed-identity "
                                 "--assign-identity <user-assigned identity resource ID>"))
        found += _key_checks(facts, key)
        key_ref = _parse(key)
        if key.exists:
            found += _identity_checks(facts, key, key_ref)
        if facts.vault is not None:
            found += _vault_checks(facts, facts.vault)
        else:
            found.append(Finding(Reason.VAULT_NOT_OBSERVED, Severity.WARN,
                                 "the vault could not be read: firewall, tenant and permission checks skipped",
                                 "grant the operator's identity Reader on the vault"))
        if facts.network_access == "Private" and not facts.managed and not cluster.api_server_vnet_integration:
            found.append(Finding(Reason.PRIVATE_VAULT_NEEDS_VNET_INTEGRATION, Severity.BLOCK,
                                 "a Private vault needs API Server VNet Integration on the cluster",
                                 f"az aks update -g {rg} -n {name} --enable-apiserver-vnet-integration "
                                 "--apiserver-subnet-id <subnet resource ID>"))
        minor = cluster.kubernetes_minor
        if minor != (0, 0) and minor < KMS_V2_MINIMUM and facts.secret_count > KMS_V1_SECRET_LIMIT:
            found.append(Finding(Reason.KMS_V1_SECRET_LIMIT, Severity.BLOCK,
                                 f"Kubernetes {cluster.kubernetes_version} uses KMS v1, which supports at most "
                                 f"{KMS_V1_SECRET_LIMIT:,} Secrets; the cluster has {facts.secret_count:,}",
                                 f"az aks upgrade -g {rg} -n {name} --kubernetes-version <1.27 or later> "
                                 "(with KMS disabled), or reduce the number of Secrets"))
    if facts.managed:
        found += _managed_checks(facts)
    found += _previous_key_checks(facts)
    return ordered(found)


def _managed_checks(facts: PreflightFacts) -> list[Finding]:
    """What AKS refuses when a write turns on (or changes) the Managed experience (KMS data encryption)."""
    cluster = facts.cluster
    rg = facts.cluster_resource_group or "<resource-group>"
    name = facts.cluster_name or "<cluster>"
    out: list[Finding] = []
    if facts.api_version and facts.api_version < MANAGED_API_VERSION:
        out.append(Finding(Reason.API_VERSION_TOO_OLD, Severity.BLOCK,
                           f"the operator's azure-mgmt-containerservice speaks ARM API {facts.api_version}; the "
                           f"Managed experience needs {MANAGED_API_VERSION} or later (older versions do not carry "
                           "kubernetesResourceObjectEncryptionProfile)",
                           "upgrade the operator (azure-mgmt-containerservice >= 41.7.0)"))
    return out + managed_cluster_findings(cluster, rg, name)


def managed_cluster_findings(cluster: ClusterState, rg: str = "<resource-group>",
                             name: str = "<cluster>") -> list[Finding]:
    """What the cluster alone rules out for turning the Managed experience on (KMS v1, Kubernetes < 1.33).

    The planner asks this before anything else (even a pending legacy rewrite), preflight again before
    the write."""
    out: list[Finding] = []
    if cluster.managed:
        return out  # already on it: version and KMS v1 were settled when it was turned on
    minor = cluster.kubernetes_minor
    if cluster.kms_enabled and minor != (0, 0) and minor < KMS_V2_MINIMUM:
        out.append(Finding(Reason.MIGRATION_FROM_KMS_V1, Severity.BLOCK,
                           f"the cluster runs legacy KMS v1 (Kubernetes {cluster.kubernetes_version}); AKS migrates "
                           "to the Managed experience from KMS v2 only",
                           "move to KMS v2 first: spec.kms.experience Legacy with enabled: false, wait for Ready, "
                           f"az aks upgrade -g {rg} -n {name} --kubernetes-version 1.33, enable again, then migrate"))
    if minor != (0, 0) and minor < MANAGED_MINIMUM:
        out.append(Finding(Reason.MANAGED_NEEDS_KUBERNETES_1_33, Severity.BLOCK,
                           f"the Managed experience needs Kubernetes 1.33 or later; the cluster runs "
                           f"{cluster.kubernetes_version}",
                           f"az aks upgrade -g {rg} -n {name} --kubernetes-version 1.33"))
    return out


def _previous_key_checks(facts: PreflightFacts) -> list[Finding]:
    """The key AKS keeps in its previous slot must stay readable until the next rotation.

    Disabled, missing or expired blocks: Secrets still under it would become unreadable. Expiring
    within the warning window only warns: the usual reason to rotate is an expiring key, and
    staying on it is worse than rotating away from it.
    """
    prev = facts.previous_key
    if prev is None:
        return []
    kid = prev.key_id
    fix = f"az keyvault key set-attributes --id {kid} --enabled true --expires <date after the next rotation>"
    if not prev.exists:
        problem = "no longer exists"
    elif not prev.enabled:
        problem = "is disabled"
    elif prev.expired(facts.now):
        problem = f"expired at {_ts(prev.expires_on)}"
    elif prev.expires_within(facts.now, facts.expiry_warning):
        return [Finding(Reason.PREVIOUS_KEY_INVALID, Severity.WARN,
                        f"previous key {kid} expires at {_ts(prev.expires_on)}, and AKS keeps it loaded "
                        "until the next rotation", fix)]
    else:
        return []
    return [Finding(Reason.PREVIOUS_KEY_INVALID, Severity.BLOCK,
                    f"previous key {kid} {problem}, but Secrets under it must stay readable until the rewrite "
                    "ends", fix)]
