"""The lab's Azure: one AKS cluster with a user-assigned identity, a public and a private vault,
a key with several versions, and the role assignments AKS's documentation asks for.

Shared by ``lab up`` and the integration tests so both rehearse the same, realistic setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .fake_azure import FakeAzure

SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
RESOURCE_GROUP = "lab-rg"
CLUSTER = "lab-aks"
PUBLIC_VAULT = "labvault"
PRIVATE_VAULT = "labprivatevault"
KEY_NAME = "etcd"
# The lab's stand-in for AKS's platform-managed key (Managed experience, PlatformManaged): AKS owns it,
# and nothing but the lab's AKS uses it.
PLATFORM_KEY_NAME = "aks-platform-kms"
OPERATOR_NAMESPACE = "aks-kms-system"


@dataclass
class LabWorld:
    """IDs of everything seeded, for policies, tests and the demo."""

    identity_id: str
    principal_id: str
    public_vault_id: str
    private_vault_id: str
    key_versions: list[str] = field(default_factory=list)  # public vault, oldest first
    private_key_versions: list[str] = field(default_factory=list)

    def policy(self, name: str = "default", *, key_id: str | None = None, enabled: bool = True,
               private: bool = False, **spec: object) -> dict:
        """A ClusterEncryptionPolicy for the lab cluster."""
        kms: dict[str, object] = {"enabled": enabled}
        if enabled:
            kms["keyId"] = key_id or (self.private_key_versions if private else self.key_versions)[0]
            kms["keyVaultNetworkAccess"] = "Private" if private else "Public"
            if private:
                kms["keyVaultResourceId"] = self.private_vault_id
        body = {"cluster": {"subscriptionId": SUBSCRIPTION, "resourceGroup": RESOURCE_GROUP, "name": CLUSTER},
                "kms": kms, **spec}
        return {"apiVersion": "aks-kms.dev/v1alpha1", "kind": "ClusterEncryptionPolicy",
                "metadata": {"name": name}, "spec": body}


def seed_azure(fake: FakeAzure, *, versions: int = 3) -> LabWorld:
    """Create the lab's cluster, identity, vaults, keys and role assignments in the fake."""
    rg = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    identity_id = f"{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{CLUSTER}-identity"
    ident = fake.add_identity(identity_id)
    fake.add_cluster(SUBSCRIPTION, RESOURCE_GROUP, CLUSTER, identity_id=identity_id,
                     api_server_vnet_integration=True)
    public_id = fake.add_vault(SUBSCRIPTION, RESOURCE_GROUP, PUBLIC_VAULT)
    private_id = fake.add_vault(SUBSCRIPTION, RESOURCE_GROUP, PRIVATE_VAULT, public_network_access="Disabled",
                                default_action="Deny")
    fake.grant_role(ident.principal_id, public_id, "Key Vault Crypto User")
    fake.grant_role(ident.principal_id, private_id, "Key Vault Crypto User")
    fake.grant_role(ident.principal_id, private_id, "Key Vault Contributor")
    # The Managed experience with a customer-managed key also needs Key Vault Reader (new versions).
    fake.grant_role(ident.principal_id, public_id, "Key Vault Reader")
    world = LabWorld(identity_id, ident.principal_id, public_id, private_id)
    world.key_versions.append(fake.create_key(PUBLIC_VAULT, KEY_NAME))
    for _ in range(versions - 1):
        world.key_versions.append(fake.new_key_version(PUBLIC_VAULT, KEY_NAME))
    world.private_key_versions.append(fake.create_key(PRIVATE_VAULT, KEY_NAME))
    return world


def operator_env(fake: FakeAzure, kubeconfig: Path, *, fast: bool = True) -> dict[str, str]:
    """Environment that points the operator at the lab's API server and fake Azure."""
    env = {
        "KUBECONFIG": str(kubeconfig),
        "AKS_KMS_ARM_ENDPOINT": fake.url,
        "AZURE_AUTHORITY_HOST": fake.authority,
        "AZURE_TENANT_ID": fake.tenant_id,
        "AZURE_CLIENT_ID": fake.client_id,
        "AZURE_CLIENT_SECRET": fake.client_secret,
        "AKS_KMS_CA_BUNDLE": str(fake.ca_pem_path),
        "AKS_KMS_KEYVAULT_ENDPOINT": fake.url,
        "AKS_KMS_NAMESPACE": OPERATOR_NAMESPACE,
    }
    if fast:  # the lab's "AKS" finishes an update in seconds, not minutes
        env.update({
            "AKS_KMS_LRO_POLLING_INTERVAL": "0.5",
            "AKS_KMS_BUSY_POLL_SECONDS": "1",
            "AKS_KMS_KEY_SWITCH_PROBES": "3",
            "AKS_KMS_KEY_SWITCH_INTERVAL_SECONDS": "0.5",
            "AKS_KMS_KEY_SWITCH_WINDOW_SECONDS": "3",
            "AKS_KMS_VERIFY_RETRY_SECONDS": "3",
            "AKS_KMS_KEY_SWITCH_TIMEOUT_SECONDS": "60",
            "AKS_KMS_ERROR_RETRY_SECONDS": "2",
        })
    return env


def platform_key(fake: FakeAzure) -> str:
    """AKS's platform-managed key in the lab (created on first use): its newest version."""
    url = f"https://{PUBLIC_VAULT}.vault.azure.net/keys/{PLATFORM_KEY_NAME}"
    return fake.newest_key_version(url) or fake.create_key(PUBLIC_VAULT, PLATFORM_KEY_NAME)
