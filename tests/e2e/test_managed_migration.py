"""e2e on the full lab (KMS v2 plugins, fake Azure, the lab's AKS), the Managed KMS experience (issue 12):
a legacy public-vault cluster migrates to a customer-managed key (Secrets verified before and after), the
lab's AKS follows a new Key Vault key version on its own (shortened detection interval), and a downgrade
and a migration from KMS v1 are refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from aks_kms_lab import lab
from aks_kms_lab.world import KEY_NAME, PUBLIC_VAULT, RESOURCE_GROUP, SUBSCRIPTION

from ..support import wait_for
from .conftest import LabHarness, condition
from .managed import VERSIONLESS, managed, managed_lab, patch_spec, puts, verified

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def legacy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHarness]:
    yield from managed_lab(tmp_path_factory.mktemp("managed-migrate") / "lab")



def test_migrate_legacy_public_to_customer_key(legacy_lab: LabHarness) -> None:
    h = legacy_lab
    v1, newest = h.world.key_versions[0], h.world.key_versions[-1]
    h.apply(key_id=v1)
    h.wait_encrypted_with(v1)
    verified(h, v1)  # before: every Secret under the legacy key
    before = len(puts(h))
    patch_spec(h, {"kms": {"experience": "Managed", "keyId": VERSIONLESS, "migration": "Allow"}})
    status = h.wait(managed, "Managed and Ready")
    assert len(puts(h)) == before + 1 and puts(h)[-1]["infrastructureEncryption"] == "Enabled"
    assert status["managed"]["migratedFrom"] == v1
    verified(h, newest)  # after: every Secret under the version AKS picked, rewritten by AKS, not by us


def test_key_vault_rotates_and_aks_follows(legacy_lab: LabHarness) -> None:
    h = legacy_lab
    before = len(puts(h))
    v_new = h.runtime.fake.new_key_version(PUBLIC_VAULT, KEY_NAME)

    def followed() -> bool:
        return lab.aks_current_key(h.root) == v_new and not h.runtime.kms.rolling  # type: ignore[union-attr]

    wait_for(followed, timeout=90, interval=1, what="the lab's AKS picks up the new key version")
    h.runtime.kms.wait_settled()  # type: ignore[union-attr]
    verified(h, v_new)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch_spec(h, {"verify": {"requestedAt": stamp}})
    status = h.wait(lambda s: (s.get("verification") or {}).get("requestedAt") == stamp, "verify on demand")
    assert status["managed"]["keyVersion"] == v_new and status["verification"]["lastPassReencrypted"] == 0
    assert len(puts(h)) == before  # no ARM write; the rewrite was AKS's


def test_downgrade_refused(legacy_lab: LabHarness) -> None:
    h = legacy_lab
    before = len(puts(h))
    patch_spec(h, {"kms": {"experience": "Legacy", "migration": "Forbid", "keyId": h.world.key_versions[0]}})
    status = h.wait(lambda s: condition(s, "Stalled").get("reason") == "ManagedIrreversible", "downgrade refused")
    assert "AKS forbids" in status["message"] and len(puts(h)) == before


def test_migration_from_kms_v1_refused(legacy_lab: LabHarness) -> None:
    h = legacy_lab
    h.runtime.fake.add_cluster(SUBSCRIPTION, RESOURCE_GROUP, "old-aks", kubernetes_version="1.26.3",
                               identity_id=h.world.identity_id,
                               kms={"enabled": True, "keyId": h.world.key_versions[0]})
    body = h.world.policy("v1", key_id=VERSIONLESS)
    body["spec"]["cluster"]["name"] = "old-aks"
    body["spec"]["kms"].update({"experience": "Managed", "migration": "Allow"})
    before = len(puts(h))
    h.cp.apply(body)

    def stalled() -> dict[str, Any] | None:
        code, obj = h.cp.request("GET", f"{lab.POLICIES}/v1")
        st = (obj or {}).get("status") or {} if code == 200 else {}
        return st if condition(st, "Stalled").get("reason") == "MigrationFromKmsV1" else None

    st = wait_for(stalled, timeout=60, interval=0.5, what="migration from KMS v1 refused")
    assert "KMS v2" in st["message"] and len(puts(h)) == before
