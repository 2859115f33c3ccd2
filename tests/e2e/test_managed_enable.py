"""e2e on the full lab, the Managed KMS experience (issue 12): a cluster without KMS enables the
platform-managed key, then moves to a customer-managed key on a public vault (the other order:
test_managed_enable_cmk.py). A lab of its own: the Managed experience cannot be left.
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
    yield from managed_lab(tmp_path_factory.mktemp("managed-enable") / "lab")


def test_enable_platform_key_then_customer_key(fresh_lab: LabHarness) -> None:
    h = fresh_lab
    body = h.world.policy(enabled=True)
    body["spec"]["kms"] = {"enabled": True, "experience": "Managed", "keyManagement": "PlatformManaged"}
    h.cp.apply(body)
    status = h.wait(managed, "PMK on")
    assert status["cluster"]["keyManagement"] == "PlatformManaged" and len(puts(h)) == 1
    platform = lab.aks_current_key(h.root)
    assert platform and "/keys/aks-platform-kms/" in platform
    verified(h, platform)
    patch_spec(h, {"kms": {"keyManagement": "CustomerManaged", "keyId": VERSIONLESS,
                           "keyVaultNetworkAccess": "Public"}})
    status = h.wait(lambda s: managed(s, "CustomerManaged"), "CMK on")
    assert len(puts(h)) == 2
    verified(h, h.world.key_versions[-1])
