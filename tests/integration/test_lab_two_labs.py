"""Two labs, one after the other, in one process (as the e2e and chaos suites run them).

Each lab's fake Azure is a new tenant behind the same vault host names. azure-keyvault caches every
vault's challenge (tenant included) process-wide, so without ``LabRuntime.start`` forgetting them the
second lab's KMS plugins ask for tokens of the first lab's tenant and stay unhealthy for good: the chaos
suite's second run stalled in KeySwitchTimeout that way.
"""

from __future__ import annotations

from pathlib import Path

from aks_kms_lab.kmsv2 import KeyVaultWrapper
from aks_kms_lab.lab import LabRuntime


def _wrap_once(runtime: LabRuntime) -> None:
    assert runtime.world is not None
    wrapper = KeyVaultWrapper.from_env(runtime.world.key_versions[0], runtime.env)
    try:
        assert wrapper.wrap(b"\x00" * 32).ciphertext
    finally:
        wrapper.close()


def test_second_lab_in_one_process_reaches_its_own_key_vault(tmp_path: Path) -> None:
    first = LabRuntime(tmp_path / "first").start()
    try:
        first_tenant = first.fake.tenant_id
        _wrap_once(first)  # the challenge naming the first lab's tenant is now cached
    finally:
        first.stop()
    second = LabRuntime(tmp_path / "second").start()
    try:
        assert second.fake.tenant_id != first_tenant
        _wrap_once(second)
    finally:
        second.stop()
