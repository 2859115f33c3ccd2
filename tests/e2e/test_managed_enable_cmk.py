"""e2e on the full lab, the Managed KMS experience (issue 12): a cluster without KMS enables a
customer-managed key on a public vault directly (versionless key; AKS picks the newest version), then
moves to the platform-managed key. A lab of its own: the Managed experience cannot be left.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aks_kms_lab import lab

from .conftest import LabHarness
from .managed import VERSIONLESS, managed, managed_lab, patch_spec, puts, verified

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fresh_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHarness]:
    yield from managed_lab(tmp_path_factory.mktemp("managed-enable-cmk") / "lab")


def test_enable_customer_key_then_platform_key(fresh_lab: LabHarness) -> None:
    h = fresh_lab
    body = h.world.policy(enabled=True)
    body["spec"]["kms"] = {"enabled": True, "experience": "Managed", "keyManagement": "CustomerManaged",
                           "keyId": VERSIONLESS, "keyVaultNetworkAccess": "Public"}
    h.cp.apply(body)
    status = h.wait(lambda s: managed(s, "CustomerManaged"), "CMK on")
    newest = h.world.key_versions[-1]
    assert len(puts(h)) == 1 and puts(h)[0]["infrastructureEncryption"] == "Enabled"
    assert status["managed"]["keyVersion"] == newest and not status["managed"]["migratedFrom"]
    verified(h, newest)  # every Secret under the version AKS picked, rewritten by AKS
    patch_spec(h, {"kms": {"keyManagement": "PlatformManaged", "keyId": None, "keyVaultNetworkAccess": None}})
    status = h.wait(lambda s: managed(s, "PlatformManaged"), "PMK on")
    assert len(puts(h)) == 2
    platform = lab.aks_current_key(h.root)
    assert platform and "/keys/aks-platform-kms/" in platform
    verified(h, platform)
