"""The fake Key Vault's key lifecycle through the real azure-keyvault-keys client: new versions, rotation
policies (lifetimeActions Rotate) and rotations Key Vault makes by itself on a shortened clock."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient, KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction

from aks_kms_lab.fake_azure import FakeAzure
from aks_kms_operator.azure.config import AzureSettings
from aks_kms_operator.azure.keys import SdkKeyVault
from aks_kms_operator.model import KeyRef

pytestmark = pytest.mark.integration
SUB = "00000000-0000-0000-0000-0000000000bb"
VAULT = "kv-rotation"
DAY = 0.5  # real seconds per policy day


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzure]:
    with FakeAzure(tmp_path_factory.mktemp("fake-azure")) as f:
        f.add_vault(SUB, "rg", VAULT)
        f.set_rotation_day_seconds(DAY)
        yield f


@pytest.fixture(scope="module")
def gateway(fake: FakeAzure) -> Iterator[SdkKeyVault]:
    settings = AzureSettings(arm_endpoint=fake.url, authority_host=fake.url, tenant_id=fake.tenant_id,
                             client_id=fake.client_id, client_secret=fake.client_secret,
                             disable_instance_discovery=True, ca_bundle=str(fake.ca_pem_path),
                             keyvault_endpoint=fake.url, retry_total=0)
    gw = SdkKeyVault(settings)
    yield gw
    gw.close()


def client(gateway: SdkKeyVault, key_id: str) -> KeyClient:
    return gateway._client(KeyRef.parse(key_id))


def test_default_policy_and_manual_rotation_with_expiry(fake: FakeAzure, gateway: SdkKeyVault) -> None:
    first = fake.create_key(VAULT, "manual")
    kc = client(gateway, first)
    default = kc.get_key_rotation_policy("manual")
    assert [(a.action, a.time_before_expiry) for a in default.lifetime_actions] == [
        (KeyRotationPolicyAction.notify, "P30D")]
    kc.update_key_rotation_policy("manual", KeyRotationPolicy(expires_in="P10D", lifetime_actions=[]))
    rotated = kc.rotate_key("manual")
    assert rotated.id != first
    # the policy's expiryTime dates the new version's expiry: 10 policy days
    created, expires = rotated.properties.created_on, rotated.properties.expires_on
    assert created is not None and expires is not None
    assert abs((expires - created).total_seconds() - 10 * DAY) <= 1
    assert [s.key_id for s in gateway.list_versions(first)] == [first, rotated.id]


def test_key_vault_rotates_by_itself_when_the_policy_falls_due(fake: FakeAzure, gateway: SdkKeyVault) -> None:
    first = fake.create_key(VAULT, "auto")
    kc = client(gateway, first)
    policy = KeyRotationPolicy(lifetime_actions=[KeyRotationLifetimeAction(
        KeyRotationPolicyAction.rotate, time_after_create="P8D")])  # 8 policy days = 4 s here
    stored = kc.update_key_rotation_policy("auto", policy)
    assert [(a.action, a.time_after_create) for a in stored.lifetime_actions] == [
        (KeyRotationPolicyAction.rotate, "P8D")]
    assert [s.key_id for s in gateway.list_versions(first)] == [first]  # not due yet
    deadline = time.monotonic() + 30
    versions = gateway.list_versions(first)
    while len(versions) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        versions = gateway.list_versions(first)
    assert len(versions) >= 2, "Key Vault did not rotate by itself"
    new = versions[1]
    assert new.created_on is not None and versions[0].created_on is not None
    # dated when it fell due (8 policy days after the first version), not when someone looked
    age = (new.created_on - versions[0].created_on).total_seconds()
    assert abs(age - 8 * DAY) <= 1, age
    assert gateway.newest_usable_version(first, dt.datetime.now(dt.UTC)) is not None


def test_a_bad_policy_is_refused_with_key_vaults_error(gateway: SdkKeyVault, fake: FakeAzure) -> None:
    first = fake.create_key(VAULT, "refused")
    kc = client(gateway, first)
    with pytest.raises(HttpResponseError) as err:
        kc.update_key_rotation_policy("refused", KeyRotationPolicy(lifetime_actions=[KeyRotationLifetimeAction(
            KeyRotationPolicyAction.rotate, time_after_create="soon")]))
    assert err.value.status_code == 400 and "ISO 8601" in str(err.value)
