"""spec.rotation.followLatestVersion end to end: Key Vault rotates the key by itself, the operator follows.

The lab's Key Vault gets a rotation policy (lifetimeActions Rotate, on a clock where a policy day lasts
one second) and creates a new version by itself. Within spec.rotation.checkInterval the operator sees
it, updates AKS, proves the key switch, re-encrypts and verifies; the version before becomes AKS's
previous key. A second rotation in Key Vault while that re-encryption runs waits for it: AKS is moved
to the third version only once every Secret is under the second (AKS holds two keys, never three),
and the first version then becomes retirable.

The timeline is printed (run with -s to see it) and asserted only against the policy's own promise
(checkInterval) with a generous margin for a shared CPU.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.keyvault.keys import KeyClient, KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction

from aks_kms_lab import lab
from aks_kms_operator import planning
from aks_kms_operator.azure.config import AzureSettings
from aks_kms_operator.azure.keys import SdkKeyVault
from aks_kms_operator.model import KeyRef

from ..support import wait_for
from .conftest import SECRETS, LabHarness, condition

pytestmark = pytest.mark.e2e
CHECK_INTERVAL = 5.0  # seconds: spec.rotation.checkInterval below
DAY = 1.0  # real seconds per rotation-policy day in this lab
MARGIN = 60.0  # for preflight reads, a reconcile in flight and a shared, loaded CPU


@pytest.fixture(scope="module")
def vault(lab_env: LabHarness) -> Iterator[SdkKeyVault]:
    fake = lab_env.runtime.fake
    fake.set_rotation_day_seconds(DAY)
    gw = SdkKeyVault(AzureSettings(arm_endpoint=fake.url, authority_host=fake.url, tenant_id=fake.tenant_id,
                                   client_id=fake.client_id, client_secret=fake.client_secret,
                                   disable_instance_discovery=True, ca_bundle=str(fake.ca_pem_path),
                                   keyvault_endpoint=fake.url, retry_total=2))
    yield gw
    gw.close()


def key_client(vault: SdkKeyVault, key_id: str) -> KeyClient:
    return vault._client(KeyRef.parse(key_id))


class Timeline:
    """Wall-clock marks, printed as seconds from the first."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, dt.datetime]] = []

    def mark(self, what: str, at: dt.datetime | None = None) -> dt.datetime:
        at = at or dt.datetime.now(dt.UTC)
        self.marks.append((what, at))
        return at

    def render(self) -> str:
        t0 = min(at for _, at in self.marks)
        return "\n".join(f"  +{(at - t0).total_seconds():7.1f}s  {what}" for what, at in sorted(
            self.marks, key=lambda m: m[1]))


def put_time(h: LabHarness, key_id: str) -> dt.datetime | None:
    """When the fake ARM accepted the operator's cluster PUT naming ``key_id``."""
    for w in h.runtime.fake.writes:
        if w.method == "PUT" and "managedclusters" in w.path.lower() and key_id.lower() in str(w.summary).lower():
            return w.time
    return None


def test_follows_key_vault_rotations_one_at_a_time(lab_env: LabHarness, vault: SdkKeyVault) -> None:
    h = lab_env
    versions = h.world.key_versions
    ref = KeyRef.parse(versions[0])
    unversioned = f"{ref.vault_url}/keys/{ref.name}"
    # the seed makes its versions within a second (Key Vault dates them to the second): the newest is the
    # planner's pick among equal dates
    newest = planning.newest_version(unversioned, vault.list_versions(unversioned))
    assert newest is not None
    timeline = Timeline()

    # AKS applying a KMS change: what status.encryptedWith said at that moment (the hook runs in the fake)
    applied: dict[str, tuple[dt.datetime, Any]] = {}
    original = h.runtime.fake.on_kms_change

    def watch(cluster: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        key, seen = str(new.get("keyId") or ""), None
        for _ in range(5):  # never raise here: the fake would fail AKS's operation
            try:
                _, obj = h.cp.request("GET", f"{lab.POLICIES}/default")
                seen = (obj.get("status") or {}).get("encryptedWith")
                break
            except Exception:
                time.sleep(0.2)
        applied.setdefault(key, (dt.datetime.now(dt.UTC), seen))
        original(cluster, old, new)

    h.runtime.fake.on_kms_change = watch
    try:
        h.apply(key_id=unversioned, rotation={"followLatestVersion": True, "checkInterval": f"{CHECK_INTERVAL:g}s"})
        h.wait_encrypted_with(newest, timeout=240)
        timeline.mark(f"enabled: every Secret under {newest[-8:]} (the newest version when the policy came)")

        # Key Vault rotates by itself: a Rotate action due a few policy days from now
        kc = key_client(vault, unversioned)
        created = vault.key_state(newest).created_on
        assert created is not None
        age_days = (dt.datetime.now(dt.UTC) - created).total_seconds() / DAY
        kc.update_key_rotation_policy(ref.name, KeyRotationPolicy(lifetime_actions=[KeyRotationLifetimeAction(
            KeyRotationPolicyAction.rotate, time_after_create=f"P{math.ceil(age_days) + 8}D")]))
        timeline.mark("rotation policy set in Key Vault (Rotate, timeAfterCreate)")
        v4 = wait_for(lambda: next((s for s in vault.list_versions(unversioned) if s.key_id not in versions), None),
                      timeout=60, interval=0.5, what="Key Vault to rotate by itself")
        # no further automatic rotation: the second one below is made by hand, mid-re-encryption
        kc.update_key_rotation_policy(ref.name, KeyRotationPolicy(lifetime_actions=[]))
        assert v4.created_on is not None
        t_rotated = timeline.mark(f"Key Vault rotated by itself: {v4.key_id[-8:]}", v4.created_on)

        t_put = wait_for(lambda: put_time(h, v4.key_id), timeout=CHECK_INTERVAL + MARGIN + 60, interval=0.2,
                         what=f"the operator's AKS update to {v4.key_id[-8:]}")
        timeline.mark(f"operator's PUT to AKS with {v4.key_id[-8:]} accepted", t_put)
        assert (t_put - t_rotated).total_seconds() <= CHECK_INTERVAL + MARGIN, timeline.render()

        # a second rotation while the re-encryption toward v4 has not finished
        v5_id = str(kc.rotate_key(ref.name).id)
        timeline.mark(f"second rotation in Key Vault (by hand): {v5_id[-8:]}")
        st = h.status() or {}
        assert st.get("encryptedWith") != v4.key_id, "the re-encryption toward v4 finished before the 2nd rotation"

        # not Ready in between: the newer version is already waiting to be followed
        st = h.wait(lambda s: s.get("encryptedWith") == v4.key_id, f"encryptedWith {v4.key_id[-8:]}", timeout=240)
        timeline.mark(f"every Secret under {v4.key_id[-8:]} (verified)")
        assert (st["keys"]["current"]["keyId"], st["keys"]["previous"]["keyId"]) == (v4.key_id, newest)
        applied_at, encrypted_then = applied[v4.key_id]
        timeline.mark(f"AKS applied {v4.key_id[-8:]}", applied_at)
        assert encrypted_then == newest

        st = h.wait_encrypted_with(v5_id, timeout=240)
        timeline.mark(f"every Secret under {v5_id[-8:]} (verified)")
        applied_at, encrypted_then = applied[v5_id]
        timeline.mark(f"AKS applied {v5_id[-8:]}", applied_at)
        put5 = put_time(h, v5_id)
        assert put5 is not None
        timeline.mark(f"operator's PUT to AKS with {v5_id[-8:]} accepted", put5)
        print("\nfollowLatestVersion timeline:\n" + timeline.render())
        # the second rotation waited: when AKS took v5, every Secret was already under v4 (never three keys)
        assert encrypted_then == v4.key_id, timeline.render()
        assert (st["keys"]["current"]["keyId"], st["keys"]["previous"]["keyId"]) == (v5_id, v4.key_id)
        assert newest in [r["keyId"] for r in st["keys"].get("retirable") or []]
        assert condition(st, "Ready")["status"] == "True"
    finally:
        h.runtime.fake.on_kms_change = original

    slots = lab.status(h.root)["kms"]
    assert (slots["current"], slots["previous"]) == (v5_id, v4.key_id)
    result = lab.verify_lab(h.root, expect=v5_id)
    assert result.report.unreadable == 0 and result.report.all_under(v5_id), result.render()
    assert result.content is not None and result.content.checked == SECRETS and result.content.ok
    puts = [w for w in h.runtime.fake.writes if w.method == "PUT" and "managedclusters" in w.path.lower()]
    assert len(puts) == 3, [w.summary for w in puts]  # enable, v4, v5: one write each
