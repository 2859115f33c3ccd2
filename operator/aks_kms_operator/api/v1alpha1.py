"""ClusterEncryptionPolicy v1alpha1: the one description of the custom resource.

Every field of spec and status is declared here with its JSON name, default, limits and the
admission rules that refuse bad input with a message naming the field and the fix. The CRD under
``manifests/crd/`` is rendered from these classes by ``aks_kms_operator.api.crd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Rule, object_rules, spec_field

GROUP = "aks-kms.dev"
VERSION = "v1alpha1"
KIND = "ClusterEncryptionPolicy"
PLURAL = "clusterencryptionpolicies"
SINGULAR = "clusterencryptionpolicy"
SHORT_NAMES = ("cep",)
API_VERSION = f"{GROUP}/{VERSION}"

# Key Vault and Managed HSM DNS suffixes of the public and sovereign clouds.
KEY_VAULT_SUFFIXES = (
    "vault.azure.net",
    "vault.azure.cn",
    "vault.usgovcloudapi.net",
    "vault.microsoftazure.de",
    "managedhsm.azure.net",
    "managedhsm.azure.cn",
    "managedhsm.usgovcloudapi.net",
)
_SUFFIXES = "|".join(s.replace(".", "\\.") for s in KEY_VAULT_SUFFIXES)
# https://<vault>.<suffix>/keys/<name>[/<32-hex version>]; the vault name rules are Key Vault's own.
KEY_ID_PATTERN = (
    rf"^https://[a-zA-Z][a-zA-Z0-9-]{{1,22}}[a-zA-Z0-9]\.({_SUFFIXES})(:443)?"
    r"/keys/[a-zA-Z0-9-]{1,127}(/[0-9a-fA-F]{32})?$"
)
VERSIONED_KEY_PATTERN = r"/keys/[a-zA-Z0-9-]{1,127}/[0-9a-fA-F]{32}$"
VAULT_ID_PATTERN = (
    r"^/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"/(resourceGroups|resourcegroups)/[-\w._()]{1,90}/providers/Microsoft\.KeyVault/vaults/"
    r"[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$"
)
GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"

PHASES = (
    "Pending",
    "Checking",
    "UpdatingCluster",
    "WaitingForKeySwitch",
    "Rewriting",
    "Verifying",
    "Ready",
    "Paused",
    "Blocked",
    "Failed",
    "Deleting",
)


def _regex(field: str, pattern: str, fix: str) -> Rule:
    return Rule(rule=f"self == '' || self.matches(r'{pattern}')", message=f"{field} {fix}")


# ---------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ClusterRef:
    """The AKS managed cluster this operator runs in."""

    subscription_id: str = spec_field(
        "subscriptionId",
        "Azure subscription ID (a GUID) of the AKS cluster.",
        required=True,
        max_length=36,
        rules=(
            Rule(
                rule=f"self.matches(r'{GUID_PATTERN}')",
                message="spec.cluster.subscriptionId must be a subscription GUID such as "
                "00000000-0000-0000-0000-000000000000 (az account show --query id)",
            ),
        ),
    )
    resource_group: str = spec_field(
        "resourceGroup",
        "Resource group of the AKS cluster.",
        required=True,
        max_length=90,
        rules=(
            Rule(
                rule="self != ''",
                message="spec.cluster.resourceGroup must not be empty: set the cluster's resource group",
            ),
        ),
    )
    name: str = spec_field(
        "name",
        "Name of the AKS managed cluster.",
        required=True,
        max_length=63,
        rules=(
            Rule(rule="self != ''", message="spec.cluster.name must not be empty: set the AKS cluster name"),
        ),
    )


@dataclass(frozen=True)
@object_rules(
    Rule(
        rule="!self.enabled || self.keyManagement == 'PlatformManaged' || self.keyId != ''",
        message="spec.kms.keyId is required when spec.kms.enabled is true: set it to the Key Vault key URL "
        "(or, on experience Managed, set keyManagement: PlatformManaged)",
        field_path=".keyId",
        reason="FieldValueRequired",
    ),
    Rule(
        rule="self.keyVaultNetworkAccess != 'Private' || self.keyVaultResourceId != ''",
        message="spec.kms.keyVaultResourceId is required when spec.kms.keyVaultNetworkAccess is Private: "
        "set it to the vault's resource ID (/subscriptions/…/providers/Microsoft.KeyVault/vaults/<name>)",
        field_path=".keyVaultResourceId",
        reason="FieldValueRequired",
    ),
    Rule(
        rule="self.keyVaultNetworkAccess != 'Public' || self.keyVaultResourceId == ''",
        message="spec.kms.keyVaultResourceId must be empty when spec.kms.keyVaultNetworkAccess is Public: "
        "remove it, or set keyVaultNetworkAccess to Private",
        field_path=".keyVaultResourceId",
        reason="FieldValueForbidden",
    ),
    # The new experience: which experience is never inferred from the shape of keyId (AKS does that
    # from API 2026-07-01 on, and a versionless key in a legacy policy must not flip a cluster).
    Rule(
        rule="self.experience != 'Legacy' || self.keyManagement == 'CustomerManaged'",
        message="spec.kms.keyManagement PlatformManaged needs spec.kms.experience Managed: the legacy experience "
        "always encrypts with your Key Vault key; set experience: Managed (irreversible) or keyManagement: "
        "CustomerManaged",
        field_path=".keyManagement",
        reason="FieldValueInvalid",
    ),
    Rule(
        rule="self.experience != 'Managed' || self.enabled",
        message="spec.kms.enabled must be true when spec.kms.experience is Managed: AKS forbids disabling the "
        "Managed (KMS data encryption) experience once it is on; set enabled: true",
        field_path=".enabled",
        reason="FieldValueInvalid",
    ),
    Rule(
        rule="self.keyManagement != 'PlatformManaged' || (self.keyId == '' && self.keyVaultResourceId == '' "
        "&& self.keyVaultNetworkAccess == 'Public')",
        message="spec.kms.keyId must be empty when spec.kms.keyManagement is PlatformManaged: AKS creates and "
        "rotates the key itself; remove keyId, keyVaultResourceId and keyVaultNetworkAccess, or set keyManagement: "
        "CustomerManaged",
        field_path=".keyId",
        reason="FieldValueForbidden",
    ),
    Rule(
        rule="self.experience != 'Managed' || self.keyId == '' || "
        f"!self.keyId.matches(r'{VERSIONED_KEY_PATTERN}')",
        message="spec.kms.keyId must be versionless (https://<vault>.vault.azure.net/keys/<name>) when "
        "spec.kms.experience is Managed: AKS follows new key versions itself, and a versioned keyId means the "
        "legacy experience to AKS; drop the /<version> segment",
        field_path=".keyId",
        reason="FieldValueInvalid",
    ),
    Rule(
        rule="self.experience == 'Managed' || self.migration != 'Allow'",
        message="spec.kms.migration Allow needs spec.kms.experience Managed: it allows the one-way move of a "
        "legacy cluster to the Managed experience; remove migration or set experience: Managed",
        field_path=".migration",
        reason="FieldValueInvalid",
    ),
)
class KmsSpec:
    """The KMS configuration AKS should have (securityProfile.azureKeyVaultKms and, for the Managed
    experience, securityProfile.kubernetesResourceObjectEncryptionProfile)."""

    enabled: bool = spec_field("enabled", "Whether AKS encrypts Secrets in etcd with a KMS key. Must be true "
                               "with experience Managed (AKS cannot turn it off).", default=False)
    experience: str = spec_field(
        "experience",
        "Legacy: azureKeyVaultKms with a versioned key; the operator rotates and re-encrypts Secrets. Managed: "
        "KMS data encryption (kubernetesResourceObjectEncryptionProfile.infrastructureEncryption Enabled, "
        "Kubernetes 1.33+, API 2026-07-01+); AKS rotates and re-encrypts by itself. Managed cannot be undone: "
        "moving a legacy cluster there also needs migration: Allow.",
        default="Legacy",
        enum=("Legacy", "Managed"),
    )
    key_management: str = spec_field(
        "keyManagement",
        "CustomerManaged: your Key Vault key (keyId). PlatformManaged (experience Managed only): AKS creates, "
        "stores and rotates the key; no keyId.",
        default="CustomerManaged",
        enum=("CustomerManaged", "PlatformManaged"),
    )
    migration: str = spec_field(
        "migration",
        "Allow: the operator may move a cluster that AKS reports on the legacy experience to the Managed one "
        "(one ARM write; AKS rewrites the Secrets; there is no way back). Forbid (default): such a cluster stays "
        "Blocked with MigrationNotAllowed.",
        default="Forbid",
        enum=("Forbid", "Allow"),
    )
    key_id: str = spec_field(
        "keyId",
        "Key Vault or Managed HSM key URL. Versioned (…/keys/<name>/<version>) unless "
        "spec.rotation.followLatestVersion is true.",
        default="",
        max_length=512,
        rules=(
            _regex(
                "spec.kms.keyId",
                KEY_ID_PATTERN,
                "must be an https Key Vault or Managed HSM key URL such as "
                "https://<vault>.vault.azure.net/keys/<name>/<version> (az keyvault key show --query key.kid)",
            ),
        ),
    )
    key_vault_network_access: str = spec_field(
        "keyVaultNetworkAccess",
        "Public: the vault is reached over its public endpoint. Private: needs keyVaultResourceId; legacy: "
        "private link and API server VNet integration; Managed: the vault firewall's trusted-services bypass. "
        "Cannot change on the Managed experience (AKS forbids it).",
        default="Public",
        enum=("Public", "Private"),
    )
    key_vault_resource_id: str = spec_field(
        "keyVaultResourceId",
        "ARM resource ID of the Key Vault; required when Private, empty when Public.",
        default="",
        max_length=512,
        rules=(
            _regex(
                "spec.kms.keyVaultResourceId",
                VAULT_ID_PATTERN,
                "must be a Microsoft.KeyVault/vaults resource ID such as /subscriptions/<guid>/resourceGroups/"
                "<rg>/providers/Microsoft.KeyVault/vaults/<name> (az keyvault show --query id)",
            ),
        ),
    )


def _duration(field: str, default: str, description: str) -> str:
    return spec_field(
        field.rsplit(".", 1)[1],
        description,
        default=default,
        max_length=32,
        rules=(
            Rule(
                rule=f"self.matches(r'{DURATION_PATTERN}')",
                message=f"{field} must be a duration such as 90s, 30m, 1h or 720h",
            ),
        ),
    )


@dataclass(frozen=True)
class RotationSpec:
    """How the operator follows new key versions and warns about expiry."""

    follow_latest_version: bool = spec_field(
        "followLatestVersion",
        "Legacy experience only. When true, keyId may be versionless: the operator resolves the newest enabled "
        "version and sends AKS that versioned key (never the versionless one, which AKS would read as the "
        "Managed experience), then re-encrypts.",
        default=False,
    )
    check_interval: str = _duration("spec.rotation.checkInterval", "1h",
                                    "How often key versions and expiry are checked.")
    expiry_warning: str = _duration("spec.rotation.expiryWarning", "720h",
                                    "Warn this long before the current or previous key expires.")


@dataclass(frozen=True)
class RewriteSpec:
    """How Secrets are re-encrypted after each key change."""

    resources: tuple[str, ...] = spec_field(
        "resources",
        "Resources to re-encrypt. Only secrets are encrypted by AKS KMS.",
        default=("secrets",),
        enum=("secrets",),
        max_items=1,
    )
    concurrency: int = spec_field(
        "concurrency",
        "Concurrent no-op writes.",
        default=8,
        rules=(
            Rule(
                rule="self >= 1 && self <= 256",
                message="spec.rewrite.concurrency must be between 1 and 256",
            ),
        ),
    )
    page_size: int = spec_field(
        "pageSize",
        "Secrets per metadata-only list page.",
        default=500,
        rules=(
            Rule(rule="self >= 1 && self <= 5000", message="spec.rewrite.pageSize must be between 1 and 5000"),
        ),
    )
    max_writes_per_second: float = spec_field(
        "maxWritesPerSecond",
        "Cap on rewrite writes per second; 0 means as fast as the API server allows (429-aware).",
        default=0.0,
        rules=(
            Rule(
                rule="self >= 0.0",
                message="spec.rewrite.maxWritesPerSecond must be 0 (no cap) or a positive number",
            ),
        ),
    )
    paused: bool = spec_field("paused", "Stop the rewrite between pages until cleared.", default=False)


@dataclass(frozen=True)
class VerifySpec:
    """On-demand verification pass (design.md invariant 10) for clusters whose Secrets AKS rewrites itself."""

    requested_at: str = spec_field(
        "requestedAt",
        "Set to any new value (a timestamp, by convention) to run one verification pass: a no-op write to every "
        "Secret that must come back unchanged. status.verification.requestedAt echoes the value handled.",
        default="",
        max_length=64,
    )


@dataclass(frozen=True)
@object_rules(
    Rule(
        rule="self.kms.experience != 'Legacy' || !self.kms.enabled || self.kms.keyId == '' || "
        f"self.rotation.followLatestVersion || self.kms.keyId.matches(r'{VERSIONED_KEY_PATTERN}')",
        message="spec.kms.keyId must name a key version (…/keys/<name>/<32-hex version>) unless "
        "spec.rotation.followLatestVersion is true",
        field_path=".kms.keyId",
    ),
    Rule(
        rule="self.kms.experience != 'Managed' || !self.rotation.followLatestVersion",
        message="spec.rotation.followLatestVersion applies to the legacy experience only: with spec.kms.experience "
        "Managed AKS picks up new key versions itself; remove followLatestVersion",
        field_path=".rotation.followLatestVersion",
    ),
)
class PolicySpec:
    """The encryption the cluster should have."""

    cluster: ClusterRef = spec_field(
        "cluster",
        "The AKS cluster this policy manages. Immutable: the key ledger and the rewrite progress in status "
        "describe this one cluster.",
        required=True,
        rules=(
            # Re-pointing a policy would carry one cluster's ledger (which key still holds Secrets)
            # over to another and could skip a pending rewrite there.
            Rule(
                rule="self == oldSelf",
                message="spec.cluster is immutable: create a new ClusterEncryptionPolicy for the other cluster "
                "(and delete this one with deletionPolicy Retain if it should no longer manage this cluster)",
            ),
        ),
    )
    kms: KmsSpec = spec_field("kms", "Desired KMS state.", default_factory=KmsSpec)
    rotation: RotationSpec = spec_field("rotation", "Key version following and expiry warnings.",
                                        default_factory=RotationSpec)
    rewrite: RewriteSpec = spec_field("rewrite", "Secret re-encryption settings.", default_factory=RewriteSpec)
    verify: VerifySpec = spec_field("verify", "Run the verification pass on demand.", default_factory=VerifySpec)
    deletion_policy: str = spec_field(
        "deletionPolicy",
        "Retain: deleting the policy leaves AKS as it is. Disable: disable KMS and rewrite first.",
        default="Retain",
        enum=("Retain", "Disable"),
    )


# -------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Condition:
    """A Kubernetes condition (kstatus: Ready, Reconciling, Stalled; plus our own)."""

    type: str = spec_field("type", "Condition type.", required=True, max_length=64)
    status: str = spec_field("status", "True, False or Unknown.", required=True,
                             enum=("True", "False", "Unknown"))
    reason: str = spec_field("reason", "CamelCase reason code.", default="", max_length=128)
    message: str = spec_field("message", "Human-readable detail and the fix.", default="", max_length=4096)
    last_transition_time: str = spec_field("lastTransitionTime", "When status last changed.", default="",
                                           max_length=64)
    observed_generation: int = spec_field("observedGeneration", "Generation this condition describes.",
                                          default=0)


@dataclass(frozen=True)
class ObservedCluster:
    """What AKS reports about the cluster, as last read through ARM."""

    kms_enabled: bool = spec_field("kmsEnabled", "securityProfile.azureKeyVaultKms.enabled.", default=False)
    key_id: str = spec_field("keyId", "The key AKS encrypts with.", default="", max_length=512)
    key_vault_network_access: str = spec_field("keyVaultNetworkAccess", "Public or Private.", default="",
                                               max_length=16)
    key_vault_resource_id: str = spec_field("keyVaultResourceId", "Vault resource ID (Private).", default="",
                                            max_length=512)
    provisioning_state: str = spec_field("provisioningState", "ARM provisioning state.", default="",
                                         max_length=64)
    kubernetes_version: str = spec_field("kubernetesVersion", "Control plane version.", default="",
                                         max_length=32)
    identity_type: str = spec_field("identityType", "Cluster identity type.", default="", max_length=64)
    experience: str = spec_field(
        "experience", "The KMS experience AKS reports: None, Legacy (azureKeyVaultKms with a versioned key) or "
        "Managed (kubernetesResourceObjectEncryptionProfile.infrastructureEncryption Enabled).", default="",
        max_length=16)
    key_management: str = spec_field(
        "keyManagement", "On the Managed experience: PlatformManaged (no azureKeyVaultKms) or CustomerManaged.",
        default="", max_length=32)
    observed_at: str = spec_field("observedAt", "When this was read.", default="", max_length=64)


@dataclass(frozen=True)
class KeyRecord:
    """One key version in the ledger."""

    key_id: str = spec_field("keyId", "Versioned key URL.", default="", max_length=512)
    name: str = spec_field("name", "Short display name <vault>/<key>/<version prefix>.", default="",
                           max_length=128)
    enabled: bool = spec_field("enabled", "Key Vault attribute.", default=True)
    expires_on: str = spec_field("expiresOn", "Key Vault expiry, if any.", default="", max_length=64)
    retired_at: str = spec_field("retiredAt", "When it left AKS's slots (retirable entries).", default="",
                                 max_length=64)


@dataclass(frozen=True)
class KeyLedger:
    """AKS holds a current and a previous key but only shows the current one; we keep both."""

    current: KeyRecord = spec_field("current", "The key AKS writes with.", default_factory=KeyRecord)
    previous: KeyRecord = spec_field("previous", "Still loaded by AKS: must stay enabled and unexpired.",
                                     default_factory=KeyRecord)
    retirable: tuple[KeyRecord, ...] = spec_field(
        "retirable",
        "No longer loaded by AKS and no Secret uses them: safe to expire or delete.",
        default=(),
        max_items=16,
    )


@dataclass(frozen=True)
class PlanStatus:
    """The ordered steps still to do for the current generation, and which is running."""

    steps: tuple[str, ...] = spec_field("steps", "Ordered plan steps.", default=(), max_items=16)
    current: int = spec_field("current", "Index of the step in progress.", default=0)
    target_key_id: str = spec_field("targetKeyId", "Key the plan converges on ('' = disabled).", default="",
                                    max_length=512)
    generation: int = spec_field("generation", "Spec generation the plan was made for.", default=0)


@dataclass(frozen=True)
class OperationStatus:
    """An ARM write in flight, so a restarted operator resumes waiting instead of writing again."""

    step: str = spec_field("step", "Plan step that sent the write.", default="", max_length=32)
    target_key_id: str = spec_field("targetKeyId", "Key the write sent ('' = disable).", default="",
                                    max_length=512)
    started_at: str = spec_field("startedAt", "When the write was accepted.", default="", max_length=64)
    canary_resource_version: str = spec_field(
        "canaryResourceVersion", "Canary Secret resourceVersion before the write.", default="", max_length=64)
    canary_uid: str = spec_field(
        "canaryUid", "uid of the canary Secret the baseline belongs to; another uid proves nothing.", default="",
        max_length=64)
    canary_recreated: bool = spec_field(
        "canaryRecreated", "The canary was re-created after the write: no before/after exists, so the proof "
        "is a full window of agreement and the verification pass.", default=False)


@dataclass(frozen=True)
class RewriteStatus:
    """Progress and checkpoint of the current (or last) re-encryption run."""

    target_key_id: str = spec_field("targetKeyId", "Key every Secret is being written under.", default="",
                                    max_length=512)
    started_at: str = spec_field("startedAt", "Run start.", default="", max_length=64)
    completed_at: str = spec_field("completedAt", "Run end.", default="", max_length=64)
    namespaces_total: int = spec_field("namespacesTotal", "Namespaces in the run.", default=0)
    namespaces_done: int = spec_field("namespacesDone", "Namespaces finished.", default=0)
    last_namespace: str = spec_field("lastNamespace", "Checkpoint: last finished namespace.", default="",
                                     max_length=253)
    current_namespace: str = spec_field("currentNamespace", "Namespace in progress.", default="",
                                        max_length=253)
    secrets_total: int = spec_field("secretsTotal", "Secrets counted when the run started.", default=0)
    seen: int = spec_field("seen", "Secrets listed.", default=0)
    reencrypted: int = spec_field("reencrypted", "Secrets rewritten (resourceVersion changed).", default=0)
    already_current: int = spec_field(
        "alreadyCurrent", "Secrets the answering API server left unchanged (it held them current). Proof of "
        "nothing by itself: a replica that has not reloaded yet answers the same; the verification pass decides.",
        default=0)
    skipped: int = spec_field("skipped", "Deleted or written by someone else meanwhile (404/409).", default=0)
    failed: int = spec_field("failed", "Secrets whose write failed.", default=0)
    failures: tuple[str, ...] = spec_field("failures", "namespace/name: error, first few only.", default=(),
                                           max_items=20)
    retried: int = spec_field(
        "retried", "Writes answered with a 5xx or a dropped connection and retried. In a verification pass "
        "any is a sign of a replica that cannot read the new key: the pass does not count as clean.", default=0)
    writes_per_second: float = spec_field("writesPerSecond", "Throughput of the run.", default=0.0)
    progress: str = spec_field("progress", "seen/total, for kubectl get.", default="", max_length=32)
    follows_write: bool = spec_field(
        "followsWrite", "The run follows an AKS write of ours, so every older Secret was under the replaced "
        "key: a large alreadyCurrent share then means a replica had not switched.", default=False)


@dataclass(frozen=True)
class VerificationStatus(RewriteStatus):
    """The verification passes after a rewrite (design.md invariant 10), and the checkpoint of the current one.

    The inherited fields are the checkpoint of pass ``pass``. Only a pass that re-encrypted zero
    Secrets (and failed none) moves ``status.encryptedWith``.
    """

    pass_number: int = spec_field("pass", "Number of the pass in progress (or last run), from 1.", default=0)
    passes: int = spec_field("passes", "Passes completed toward targetKeyId.", default=0)
    last_pass_reencrypted: int = spec_field(
        "lastPassReencrypted", "Secrets the last completed pass re-encrypted: more than zero means an API "
        "server replica was still writing with an older key.", default=0)
    last_pass_failed: int = spec_field("lastPassFailed", "Secrets the last completed pass could not write.",
                                       default=0)
    next_pass_at: str = spec_field("nextPassAt", "The next pass starts no earlier than this.", default="",
                                   max_length=64)
    verified_at: str = spec_field("verifiedAt", "When a pass re-encrypted zero Secrets.", default="",
                                  max_length=64)
    requested_at: str = spec_field("requestedAt", "Echo of spec.verify.requestedAt once its pass finished.",
                                   default="", max_length=64)


@dataclass(frozen=True)
class ManagedKeyStatus:
    """Day 2 on the Managed experience: AKS rotates by itself and reports nothing about it (no ARM field),
    so the operator observes Key Vault: the version AKS picks up (the newest enabled one) and since when."""

    key_version: str = spec_field(
        "keyVersion", "Newest enabled version of the customer-managed key: the one AKS encrypts with once it has "
        "picked it up (AKS checks about every 6 hours).", default="", max_length=512)
    key_version_since: str = spec_field("keyVersionSince", "When the operator first saw keyVersion.", default="",
                                        max_length=64)
    previous_key_version: str = spec_field(
        "previousKeyVersion", "The version before keyVersion: keep it enabled until AKS re-encrypted (verify).",
        default="", max_length=512)
    expires_on: str = spec_field("expiresOn", "Key Vault expiry of keyVersion, if any.", default="",
                                 max_length=64)
    migrated_at: str = spec_field("migratedAt", "When the operator moved this cluster from legacy.", default="",
                                  max_length=64)
    migrated_from: str = spec_field("migratedFrom", "The legacy key the cluster used before the migration.",
                                    default="", max_length=512)


@dataclass(frozen=True)
class PolicyStatus:
    """Everything the operator reports; every field is declared so none is pruned."""

    observed_generation: int = spec_field("observedGeneration", "metadata.generation last acted on.",
                                          default=0)
    phase: str = spec_field("phase", "Display phase (conditions are authoritative).", default="Pending",
                            enum=PHASES)
    message: str = spec_field("message", "What is happening now, in one line.", default="", max_length=4096)
    conditions: tuple[Condition, ...] = spec_field("conditions", "kstatus and domain conditions.", default=(),
                                                   max_items=16, list_map_keys=("type",))
    cluster: ObservedCluster = spec_field("cluster", "What AKS reports.", default_factory=ObservedCluster)
    keys: KeyLedger = spec_field("keys", "Current, previous and retirable keys.", default_factory=KeyLedger)
    plan: PlanStatus = spec_field("plan", "The plan being carried out.", default_factory=PlanStatus)
    operation: OperationStatus = spec_field("operation", "ARM write in flight.",
                                            default_factory=OperationStatus)
    rewrite: RewriteStatus = spec_field("rewrite", "Secret re-encryption progress.",
                                        default_factory=RewriteStatus)
    verification: VerificationStatus = spec_field(
        "verification", "Verification passes after the rewrite: encryptedWith moves only after one "
        "re-encrypted zero Secrets.", default_factory=VerificationStatus)
    managed: ManagedKeyStatus = spec_field("managed", "Key versions on the Managed experience.",
                                           default_factory=ManagedKeyStatus)
    encrypted_with: str = spec_field(
        "encryptedWith", "Every Secret is confirmed written under this key ('identity' when disabled): a "
        "verification pass re-encrypted none.",
        default="", max_length=512)
    warnings: tuple[str, ...] = spec_field("warnings", "Non-blocking findings (reason: fix).", default=(),
                                           max_items=16)
    last_handled_reconcile_at: str = spec_field(
        "lastHandledReconcileAt", "Echo of the reconcile.fluxcd.io/requestedAt annotation last handled.",
        default="", max_length=64)
