"""The previous key's expiry is watched like the current one's (issue 11).

AKS keeps the previous key loaded so the API server can read Secrets the re-encryption has not
reached yet. If it expires first, those reads fail; until a verification pass proves every Secret is
under the current key (``status.encryptedWith``), an expiring previous key is a KeyHealthy=False
``PreviousKeyExpiresSoon`` (the reconciler posts a Warning Event on that transition, and the chart
alerts on ``aks_kms_key_protects_secrets``). Once every Secret is under the current key, it is only
the usual ``KeyExpiresSoon`` note.
"""

from __future__ import annotations

import datetime as dt

from aks_kms_operator.api import v1alpha1 as api
from aks_kms_operator.model import ClusterState, KeyState
from aks_kms_operator.reconciler import PREVIOUS_KEY_EXPIRES_SOON, key_health, previous_key_protects_secrets

VAULT = "https://kv.vault.azure.net/keys/etcd"
V1, V2 = f"{VAULT}/{'1' * 32}", f"{VAULT}/{'2' * 32}"
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
WINDOW = dt.timedelta(days=30)


def cluster(key: str = V2) -> ClusterState:
    return ClusterState(kms_enabled=True, key_id=key, network_access="Public", vault_resource_id="",
                        provisioning_state="Succeeded", kubernetes_version="1.33.2", identity_type="UserAssigned")


def ledger() -> api.KeyLedger:
    return api.KeyLedger(current=api.KeyRecord(key_id=V2), previous=api.KeyRecord(key_id=V1))


def states(previous_expires: dt.datetime | None, current_expires: dt.datetime | None = None) -> list[KeyState]:
    return [KeyState(V1, expires_on=previous_expires), KeyState(V2, expires_on=current_expires)]


def test_expiring_previous_key_that_still_protects_secrets_is_unhealthy() -> None:
    healthy, reason, message = key_health(ledger(), states(NOW + dt.timedelta(days=3)), cluster(), NOW, WINDOW,
                                          encrypted_with=V1)
    assert (healthy, reason) == (False, PREVIOUS_KEY_EXPIRES_SOON)
    assert "previous key" in message and "az keyvault key set-attributes" in message and V1 in message


def test_expiring_previous_key_after_the_rewrite_is_only_a_note() -> None:
    healthy, reason, _ = key_health(ledger(), states(NOW + dt.timedelta(days=3)), cluster(), NOW, WINDOW,
                                    encrypted_with=V2)
    assert (healthy, reason) == (True, "KeyExpiresSoon")


def test_previous_key_far_from_expiry_is_healthy() -> None:
    healthy, reason, _ = key_health(ledger(), states(NOW + dt.timedelta(days=90)), cluster(), NOW, WINDOW,
                                    encrypted_with=V1)
    assert (healthy, reason) == (True, "KeysValid")


def test_expiring_current_key_stays_a_warning() -> None:
    healthy, reason, _ = key_health(ledger(), states(None, NOW + dt.timedelta(days=3)), cluster(), NOW, WINDOW,
                                    encrypted_with=V1)
    assert (healthy, reason) == (True, "KeyExpiresSoon")


def test_without_the_encryption_state_nothing_changes() -> None:
    healthy, reason, _ = key_health(ledger(), states(NOW + dt.timedelta(days=3)), cluster(), NOW, WINDOW)
    assert (healthy, reason) == (True, "KeyExpiresSoon")


def test_previous_key_protects_secrets_until_encrypted_with_the_current_key() -> None:
    assert previous_key_protects_secrets(ledger(), V1, cluster())
    assert previous_key_protects_secrets(ledger(), "", cluster())
    assert not previous_key_protects_secrets(ledger(), V2, cluster())
    assert not previous_key_protects_secrets(api.KeyLedger(current=api.KeyRecord(key_id=V2)), V1, cluster())
