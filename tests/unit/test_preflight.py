"""Preflight: every reason code triggered and not triggered, severities, RBAC scopes and wildcards."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import pytest

from aks_kms_operator.model import (
    AccessPolicy,
    ClusterState,
    IdentityState,
    KeyState,
    PreflightFacts,
    RoleGrant,
    VaultState,
)
from aks_kms_operator.preflight import (
    DECRYPT_DATA_ACTION,
    ENCRYPT_DATA_ACTION,
    Finding,
    Reason,
    Severity,
    action_matches,
    any_blocking,
    blocking,
    ordered,
    run_preflight,
    scope_covers,
    waiting,
    warnings,
)

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
TENANT = "11111111-1111-1111-1111-111111111111"
SUB = "/subscriptions/00000000-0000-0000-0000-000000000000"
RG = f"{SUB}/resourceGroups/rg"
VAULT_ID = f"{RG}/providers/Microsoft.KeyVault/vaults/kv1"
KEY_SCOPE = f"{VAULT_ID}/keys/etcd"
KB = "https://kv1.vault.azure.net/keys/etcd/" + "b" * 32
KA = "https://kv1.vault.azure.net/keys/etcd/" + "a" * 32
PID = "22222222-2222-2222-2222-222222222222"
CRYPTO_USER = RoleGrant(VAULT_ID, "Key Vault Crypto User", data_actions=(ENCRYPT_DATA_ACTION, DECRYPT_DATA_ACTION,
                                                                          "Microsoft.KeyVault/vaults/keys/read"))
KV_CONTRIBUTOR = RoleGrant(VAULT_ID, "Key Vault Contributor", actions=("Microsoft.KeyVault/*",))


def facts(**changes: object) -> PreflightFacts:
    """Facts for an Update to KB that passes every check; ``changes`` break one thing."""
    base = PreflightFacts(
        cluster=ClusterState(kms_enabled=True, key_id=KA, network_access="Public", vault_resource_id="",
                             provisioning_state="Succeeded", kubernetes_version="1.30.4",
                             identity_type="UserAssigned", api_server_vnet_integration=True),
        target_key=KeyState(KB, expires_on=NOW + dt.timedelta(days=365)),
        previous_key=KeyState(KA, expires_on=NOW + dt.timedelta(days=365)),
        vault=VaultState(resource_id=VAULT_ID, tenant_id=TENANT),
        identity=IdentityState(resource_id=f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id",
                               principal_id=PID, client_id="c", tenant_id=TENANT),
        grants=(CRYPTO_USER,),
        subscription_tenant_id=TENANT,
        now=NOW,
        cluster_resource_group="rg",
        cluster_name="aks",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def cluster(**changes: object) -> ClusterState:
    return dataclasses.replace(facts().cluster, **changes)  # type: ignore[arg-type]


def target(**changes: object) -> KeyState:
    return dataclasses.replace(facts().target_key, **changes)  # type: ignore[arg-type]


def previous(**changes: object) -> KeyState:
    return dataclasses.replace(facts().previous_key, **changes)  # type: ignore[arg-type]


def vault(**changes: object) -> VaultState:
    return dataclasses.replace(facts().vault, **changes)  # type: ignore[arg-type]


def reasons(f: PreflightFacts) -> list[str]:
    return [x.reason for x in run_preflight(f)]


def only(f: PreflightFacts) -> Finding:
    found = run_preflight(f)
    assert len(found) == 1, found
    return found[0]


def private(**changes: object) -> PreflightFacts:
    """A Private setup that passes: firewall closed, Key Vault Contributor granted."""
    base: dict[str, object] = {"network_access": "Private", "grants": (CRYPTO_USER, KV_CONTRIBUTOR),
                               "vault": vault(public_network_access="Disabled", network_default_action="Deny")}
    return facts(**{**base, **changes})


def test_everything_in_order_gives_no_findings() -> None:
    assert run_preflight(facts()) == []
    assert run_preflight(private()) == []
    assert not any_blocking([])


# --------------------------------------------------------------------- each reason, triggered


TRIGGERED: list[tuple[str, Callable[[], PreflightFacts], Severity, str]] = [
    ("Conflict", lambda: facts(conflicting_policies=("other",)), Severity.BLOCK,
     "kubectl delete clusterencryptionpolicy other"),
    ("ClusterBusy", lambda: facts(cluster=cluster(provisioning_state="Updating")), Severity.WAIT,
     "az aks show -g rg -n aks"),
    ("IdentityNotUserAssigned", lambda: facts(cluster=cluster(identity_type="SystemAssigned")), Severity.BLOCK,
     "az aks update -g rg -n aks --enable-managed-identity --assign-identity"),
    ("KeyVaultInOtherTenant", lambda: facts(vault=vault(tenant_id="99999999-0000-0000-0000-000000000000")),
     Severity.BLOCK, "tenant"),
    ("KeyNotFound", lambda: facts(target_key=target(exists=False)), Severity.BLOCK, f"az keyvault key show --id {KB}"),
    ("KeyDisabled", lambda: facts(target_key=target(enabled=False)), Severity.BLOCK,
     f"az keyvault key set-attributes --id {KB} --enabled true"),
    ("KeyExpired", lambda: facts(target_key=target(expires_on=NOW)), Severity.BLOCK,
     f"az keyvault key set-attributes --id {KB} --expires"),
    ("KeyNotYetValid", lambda: facts(target_key=target(not_before=NOW + dt.timedelta(hours=1))), Severity.BLOCK,
     "--not-before"),
    ("KeyNotRSA", lambda: facts(target_key=target(key_type="EC")), Severity.BLOCK,
     "az keyvault key create --vault-name kv1 -n <name> --kty RSA"),
    ("KeyOperationsMissing", lambda: facts(target_key=target(key_ops=("wrapKey", "unwrapKey", "encrypt"))),
     Severity.BLOCK, f"az keyvault key set-attributes --id {KB} --ops decrypt encrypt unwrapKey wrapKey"),
    ("IdentityLacksKeyPermission", lambda: facts(grants=()), Severity.BLOCK,
     f'az role assignment create --role "Key Vault Crypto User" --assignee-object-id {PID} '
     f"--assignee-principal-type ServicePrincipal --scope {VAULT_ID}"),
    ("IdentityLacksPrivateLinkPermission", lambda: private(grants=(CRYPTO_USER,)), Severity.BLOCK,
     f'az role assignment create --role "Key Vault Contributor" --assignee-object-id {PID}'),
    ("KeyVaultFirewallBlocksPlugin", lambda: facts(vault=vault(public_network_access="Disabled")), Severity.BLOCK,
     "az keyvault update -n kv1 --public-network-access Enabled --default-action Allow"),
    ("PrivateVaultNeedsVnetIntegration", lambda: private(cluster=cluster(api_server_vnet_integration=False)),
     Severity.BLOCK, "az aks update -g rg -n aks --enable-apiserver-vnet-integration"),
    ("PreviousKeyInvalid", lambda: facts(previous_key=previous(enabled=False)), Severity.BLOCK,
     f"az keyvault key set-attributes --id {KA} --enabled true"),
    ("KmsV1SecretLimit", lambda: facts(cluster=cluster(kubernetes_version="1.26.6"), secret_count=2001),
     Severity.BLOCK, "az aks upgrade -g rg -n aks"),
    ("KeyVaultRecoveryDisabled", lambda: facts(vault=vault(purge_protection=False)), Severity.WARN,
     "az keyvault update -n kv1 --enable-purge-protection true"),
    ("KeyExpiresSoon", lambda: facts(target_key=target(expires_on=NOW + dt.timedelta(days=10))), Severity.WARN,
     "--expires"),
    ("VaultNotObserved", lambda: facts(vault=None), Severity.WARN, "Reader"),
]


@pytest.mark.parametrize(("reason", "make", "severity", "fix"), TRIGGERED, ids=[t[0] for t in TRIGGERED])
def test_reason_is_triggered_alone_with_its_severity_and_fix(
    reason: str, make: Callable[[], PreflightFacts], severity: Severity, fix: str
) -> None:
    f = only(make())
    assert (f.reason, f.severity) == (reason, severity)
    assert fix in f.fix
    assert f.message and f.summary().startswith(f"{reason}: ")
    assert f.blocks is (severity is Severity.BLOCK) and f.waits is (severity is Severity.WAIT)


def test_every_reason_code_is_covered() -> None:
    from .test_managed_experience import MANAGED_TRIGGERED

    covered = {t[0] for t in TRIGGERED} | {t[0] for t in MANAGED_TRIGGERED}
    assert {r.value for r in Reason} - covered == {"KmsV1"}  # KmsV1 is the planner's report


# ------------------------------------------------------------------ and not triggered nearby


@pytest.mark.parametrize("state", ["Succeeded", "Failed", "Canceled"])
def test_terminal_states_are_not_busy(state: str) -> None:
    assert run_preflight(facts(cluster=cluster(provisioning_state=state))) == []


@pytest.mark.parametrize("kty", ["RSA", "RSA-HSM"])
def test_rsa_key_types_pass(kty: str) -> None:
    assert run_preflight(facts(target_key=target(key_type=kty))) == []


def test_encrypt_and_decrypt_are_enough_wrap_key_is_not_needed() -> None:
    assert run_preflight(facts(target_key=target(key_ops=("Encrypt", "DECRYPT")))) == []


def test_key_not_found_hides_the_other_key_checks() -> None:
    assert reasons(facts(target_key=KeyState(KB, exists=False, enabled=False, key_type="EC"))) == ["KeyNotFound"]


def test_a_disabled_key_read_from_the_listing_is_only_disabled() -> None:
    """Key Vault refuses to read a disabled version; the gateway reports it from the version listing with an
    empty key type and no operations (unknown, not wrong). Found by ``plan``: it printed KeyNotRSA ("is ;")
    and KeyOperationsMissing next to KeyDisabled."""
    assert reasons(facts(target_key=target(enabled=False, key_type="", key_ops=()))) == ["KeyDisabled"]


def test_key_without_expiry_and_valid_now_passes() -> None:
    assert run_preflight(facts(target_key=target(expires_on=None, not_before=NOW))) == []


def test_expiry_just_outside_the_window_passes() -> None:
    assert run_preflight(facts(target_key=target(expires_on=NOW + dt.timedelta(days=31)))) == []


@pytest.mark.parametrize(("version", "count", "hit"), [("1.26.6", 2000, False), ("1.26.6", 2001, True),
                                                        ("1.27.0", 50000, False), ("", 50000, False)])
def test_kms_v1_secret_limit(version: str, count: int, hit: bool) -> None:
    got = reasons(facts(cluster=cluster(kubernetes_version=version), secret_count=count))
    assert got == (["KmsV1SecretLimit"] if hit else [])


def test_firewall_checks_only_public_mode() -> None:
    assert reasons(facts(vault=vault(network_default_action="Deny"))) == ["KeyVaultFirewallBlocksPlugin"]
    assert run_preflight(private()) == []  # the same firewall is what Private expects


def test_same_tenant_any_case_passes_and_identity_tenant_is_the_fallback() -> None:
    assert run_preflight(facts(vault=vault(tenant_id=TENANT.upper()))) == []
    other = vault(tenant_id="99999999-0000-0000-0000-000000000000")
    assert reasons(facts(vault=other, subscription_tenant_id="")) == ["KeyVaultInOtherTenant"]


def test_soft_delete_off_is_a_warning_naming_it() -> None:
    f = only(facts(vault=vault(soft_delete=False)))
    assert f.reason == "KeyVaultRecoveryDisabled" and "soft delete" in f.message and not f.blocks


# --------------------------------------------------------------------------- previous key


@pytest.mark.parametrize(
    ("prev", "severity"),
    [
        (KeyState(KA, exists=False), Severity.BLOCK),
        (KeyState(KA, enabled=False), Severity.BLOCK),
        (KeyState(KA, expires_on=NOW - dt.timedelta(seconds=1)), Severity.BLOCK),
        (KeyState(KA, expires_on=NOW + dt.timedelta(days=5)), Severity.WARN),
        (KeyState(KA), None),
    ],
)
def test_previous_key(prev: KeyState, severity: Severity | None) -> None:
    found = run_preflight(facts(previous_key=prev))
    if severity is None:
        assert found == []
    else:
        assert [(f.reason, f.severity) for f in found] == [("PreviousKeyInvalid", severity)]


def test_no_previous_key_when_enabling_from_disabled() -> None:
    assert run_preflight(facts(previous_key=None)) == []


# ------------------------------------------------------------------------------- disabling


def test_disable_checks_only_what_reading_the_old_key_needs() -> None:
    f = facts(target_key=None, grants=(), vault=None, cluster=cluster(identity_type="SystemAssigned",
                                                                      kubernetes_version="1.26.0"),
              secret_count=9999)
    assert run_preflight(f) == []
    broken = dataclasses.replace(f, previous_key=previous(enabled=False), conflicting_policies=("b", "a"),
                                 cluster=cluster(provisioning_state="Updating"))
    assert reasons(broken) == ["Conflict", "ClusterBusy", "PreviousKeyInvalid"]
    assert "clusterencryptionpolicy a" in run_preflight(broken)[0].fix


# ----------------------------------------------------------------------------------- RBAC


@pytest.mark.parametrize("scope", [VAULT_ID, KEY_SCOPE, RG, SUB, "/", VAULT_ID.upper(), VAULT_ID + "/",
                                   "/providers/Microsoft.Management/managementGroups/platform"])
def test_rbac_scope_inheritance(scope: str) -> None:
    grant = dataclasses.replace(CRYPTO_USER, scope=scope)
    assert run_preflight(facts(grants=(grant,))) == []


@pytest.mark.parametrize("scope", [VAULT_ID + "0", VAULT_ID[:-1] + "2", f"{VAULT_ID}/keys/other",
                                   f"{SUB}/resourceGroups/rg2", "/subscriptions/ffffffff-0000-0000-0000-000000000000"])
def test_rbac_scope_elsewhere_does_not_count(scope: str) -> None:
    grant = dataclasses.replace(CRYPTO_USER, scope=scope)
    assert reasons(facts(grants=(grant,))) == ["IdentityLacksKeyPermission"]


@pytest.mark.parametrize("data_actions", [
    ("*",),
    ("Microsoft.KeyVault/*",),
    ("Microsoft.KeyVault/vaults/keys/*",),
    ("Microsoft.KeyVault/vaults/keys/*/action",),
    ("microsoft.keyvault/vaults/keys/encrypt/action", "MICROSOFT.KEYVAULT/VAULTS/KEYS/DECRYPT/ACTION"),
])
def test_wildcard_and_case_insensitive_data_actions_count(data_actions: tuple[str, ...]) -> None:
    grant = RoleGrant(VAULT_ID, "custom", data_actions=data_actions)
    assert run_preflight(facts(grants=(grant,))) == []


@pytest.mark.parametrize("data_actions", [
    (ENCRYPT_DATA_ACTION,),
    (DECRYPT_DATA_ACTION,),
    ("Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/secrets/*"),
    ("Microsoft.KeyVault/vaults/keys/wrap/action", "Microsoft.KeyVault/vaults/keys/unwrap/action"),
])
def test_insufficient_data_actions(data_actions: tuple[str, ...]) -> None:
    grant = RoleGrant(VAULT_ID, "custom", data_actions=data_actions)
    assert reasons(facts(grants=(grant,))) == ["IdentityLacksKeyPermission"]


def test_permissions_may_come_from_two_roles() -> None:
    grants = (RoleGrant(RG, "enc", data_actions=(ENCRYPT_DATA_ACTION,)),
              RoleGrant(KEY_SCOPE, "dec", data_actions=(DECRYPT_DATA_ACTION,)))
    assert run_preflight(facts(grants=grants)) == []


def test_not_data_actions_subtract_within_the_role() -> None:
    denied = RoleGrant(VAULT_ID, "custom", data_actions=("*",), not_data_actions=("*/decrypt/action",))
    assert reasons(facts(grants=(denied,))) == ["IdentityLacksKeyPermission"]
    # ...but another role may still grant it.
    assert run_preflight(facts(grants=(denied, CRYPTO_USER))) == []


def test_management_plane_actions_do_not_give_data_access() -> None:
    owner = RoleGrant(SUB, "Owner", actions=("*",))
    assert reasons(facts(grants=(owner,))) == ["IdentityLacksKeyPermission"]


@pytest.mark.parametrize("grant", [
    KV_CONTRIBUTOR,
    RoleGrant(SUB, "Contributor", actions=("*",)),
    RoleGrant(RG, "custom", actions=("Microsoft.KeyVault/vaults/write",)),
])
def test_private_link_permission_sources(grant: RoleGrant) -> None:
    assert run_preflight(private(grants=(CRYPTO_USER, grant))) == []


def test_private_link_permission_respects_not_actions_and_scope() -> None:
    denied = RoleGrant(SUB, "Contributor", actions=("*",), not_actions=("Microsoft.KeyVault/vaults/write",))
    elsewhere = dataclasses.replace(KV_CONTRIBUTOR, scope=VAULT_ID[:-1] + "2")
    for grant in (denied, elsewhere):
        assert reasons(private(grants=(CRYPTO_USER, grant))) == ["IdentityLacksPrivateLinkPermission"]


def test_private_link_permission_is_not_needed_for_public() -> None:
    assert run_preflight(facts(grants=(CRYPTO_USER,))) == []


def test_action_matching() -> None:
    assert action_matches("Microsoft.KeyVault/vaults/*/action", ENCRYPT_DATA_ACTION)
    assert action_matches("*", "anything/at/all")
    assert not action_matches("Microsoft.KeyVault/vaults/keys/encrypt", ENCRYPT_DATA_ACTION)
    assert not action_matches("Microsoft.KeyVault/vaults/keys/encrypt/action.", ENCRYPT_DATA_ACTION)
    assert not action_matches("Microsoft.KeyVault/vaults/keys/en?rypt/action", ENCRYPT_DATA_ACTION)


def test_scope_covers() -> None:
    assert scope_covers(RG, KEY_SCOPE) and scope_covers("", VAULT_ID)
    assert not scope_covers(KEY_SCOPE, VAULT_ID)  # a key-scoped grant does not cover the vault


# ------------------------------------------------------------------------- access policies


@pytest.mark.parametrize("perms", [("encrypt", "decrypt"), ("Get", "Encrypt", "Decrypt"), ("all",), ("All",)])
def test_access_policy_grants(perms: tuple[str, ...]) -> None:
    v = vault(rbac_authorization=False, access_policies=(AccessPolicy(PID, perms),))
    assert run_preflight(facts(vault=v, grants=())) == []


@pytest.mark.parametrize("policies", [
    (),
    (AccessPolicy(PID, ("encrypt",)),),
    (AccessPolicy(PID, ("get", "wrapKey", "unwrapKey")),),
    (AccessPolicy("33333333-3333-3333-3333-333333333333", ("encrypt", "decrypt")),),
])
def test_access_policy_missing(policies: tuple[AccessPolicy, ...]) -> None:
    v = vault(rbac_authorization=False, access_policies=policies)
    f = only(facts(vault=v, grants=(CRYPTO_USER,)))  # RBAC roles do not count on an access-policy vault
    assert f.reason == "IdentityLacksKeyPermission"
    assert f.fix == f"az keyvault set-policy -n kv1 --object-id {PID} --key-permissions encrypt decrypt"


def test_access_policies_split_across_entries_for_the_same_identity() -> None:
    v = vault(rbac_authorization=False, access_policies=(AccessPolicy(PID.upper(), ("encrypt",)),
                                                         AccessPolicy(PID, ("decrypt",))))
    assert run_preflight(facts(vault=v, grants=())) == []


def test_access_policies_do_not_count_on_an_rbac_vault() -> None:
    v = vault(access_policies=(AccessPolicy(PID, ("all",)),))
    assert reasons(facts(vault=v, grants=())) == ["IdentityLacksKeyPermission"]


# ------------------------------------------------------------------------- order and helpers


def everything_wrong() -> PreflightFacts:
    return facts(
        conflicting_policies=("z",),
        cluster=cluster(provisioning_state="Upgrading", identity_type="SystemAssigned",
                        kubernetes_version="1.26.0", api_server_vnet_integration=False),
        target_key=target(enabled=False, expires_on=NOW, key_type="oct", key_ops=()),
        previous_key=previous(enabled=False),
        vault=vault(tenant_id="99999999-0000-0000-0000-000000000000", soft_delete=False),
        grants=(),
        network_access="Private",
        secret_count=3000,
    )


def test_findings_come_in_the_declared_order() -> None:
    got = reasons(everything_wrong())
    assert got == [
        "Conflict", "ClusterBusy", "IdentityNotUserAssigned", "KeyVaultInOtherTenant", "KeyDisabled", "KeyExpired",
        "KeyNotRSA", "KeyOperationsMissing", "IdentityLacksKeyPermission", "IdentityLacksPrivateLinkPermission",
        "PrivateVaultNeedsVnetIntegration", "PreviousKeyInvalid", "KmsV1SecretLimit", "KeyVaultRecoveryDisabled",
    ]
    order = list(Reason)
    assert [order.index(Reason(r)) for r in got] == sorted(order.index(Reason(r)) for r in got)


def test_order_is_stable_under_input_order() -> None:
    f = everything_wrong()
    grants = (RoleGrant(RG, "a", data_actions=(ENCRYPT_DATA_ACTION,)), RoleGrant(SUB, "b", actions=("x",)))
    assert run_preflight(dataclasses.replace(f, grants=grants)) == \
        run_preflight(dataclasses.replace(f, grants=grants[::-1]))
    shuffled = run_preflight(f)[::-1]
    assert ordered(shuffled) == run_preflight(f)
    assert ordered([Finding("SomethingNew", Severity.WARN, "x"), Finding("Conflict", Severity.BLOCK, "y")])[0] \
        .reason == "Conflict"


def test_helpers_split_blocks_waits_and_warnings() -> None:
    found = run_preflight(facts(cluster=cluster(provisioning_state="Updating"), vault=vault(soft_delete=False),
                                target_key=target(enabled=False)))
    assert [f.reason for f in blocking(found)] == ["KeyDisabled"]
    assert [f.reason for f in waiting(found)] == ["ClusterBusy"]
    assert [f.reason for f in warnings(found)] == ["KeyVaultRecoveryDisabled"]
    assert any_blocking(found)
    assert not any_blocking(waiting(found) + warnings(found))
