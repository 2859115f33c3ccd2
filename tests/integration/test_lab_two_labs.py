"""Two labs in one process, one after the other and both alive at once (as the e2e and chaos suites run them).

Every lab's fake Azure serves the same vault host names. azure-keyvault caches every vault's challenge
(tenant included) process-wide, so a lab whose plugins were handed another lab's challenge would ask for
tokens of a tenant its own Entra ID does not know, and stay unhealthy for good: the chaos suite's second
run stalled in KeySwitchTimeout that way, and so did the Managed e2e module, whose second lab started
while its first one's plugins were still probing their keys. Every lab is therefore the one tenant
``fake_azure.server.TENANT_ID`` (as a real vault host belongs to one tenant), and a new lab forgets the
challenges left by a fake given a tenant of its own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from aks_kms_lab.fake_azure import FakeAzure
from aks_kms_lab.kmsv2 import KeyVaultWrapper
from aks_kms_lab.lab import LabRuntime, forget_key_vault_challenges
from aks_kms_lab.world import operator_env, seed_azure


def _wrap_once(key_url: str, env: dict[str, str]) -> None:
    wrapper = KeyVaultWrapper.from_env(key_url, env)
    try:
        assert wrapper.wrap(b"\x00" * 32).ciphertext
    finally:
        wrapper.close()


def _wrap_with_lab(runtime: LabRuntime) -> None:
    assert runtime.world is not None
    _wrap_once(runtime.world.key_versions[0], runtime.env)


def test_second_lab_in_one_process_reaches_its_own_key_vault(tmp_path: Path) -> None:
    # A fake of a tenant of its own must forget the cached challenges first, as LabRuntime.start does:
    # an earlier test in this process (any fake) left the one lab tenant's challenge behind.
    forget_key_vault_challenges()
    other = FakeAzure(tmp_path / "bare", tenant_id=str(uuid.uuid4())).start()
    try:
        world = seed_azure(other)
        _wrap_once(world.key_versions[0], operator_env(other, tmp_path / "kubeconfig"))  # its challenge is cached
    finally:
        other.stop()
    lab = LabRuntime(tmp_path / "lab").start()
    try:
        assert lab.fake.tenant_id != other.tenant_id
        _wrap_with_lab(lab)
    finally:
        lab.stop()


def test_two_labs_alive_at_once_each_reach_their_own_key_vault(tmp_path: Path) -> None:
    first = LabRuntime(tmp_path / "first").start()
    try:
        second = LabRuntime(tmp_path / "second").start()
        try:
            for _ in range(2):  # each wrap refreshes the process-wide challenge for the other's host names
                _wrap_with_lab(first)
                _wrap_with_lab(second)
        finally:
            second.stop()
    finally:
        first.stop()
