"""Settings for every suite.

Under ``pytest -n N`` (pytest-xdist, as ``make test`` runs) each worker hands out lab ports from its own
range, so labs started by different workers at the same moment can never pick the same port
(see ``aks_kms_lab.controlplane.free_port``).
"""

from __future__ import annotations

import os
import re

PORTS_PER_WORKER = 1500
FIRST_PORT = 20000  # below the kernel's ephemeral range (32768-60999), so outgoing connections never take ours


def pytest_configure() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    match = re.fullmatch(r"gw(\d+)", worker)
    if match and not os.environ.get("AKS_KMS_LAB_PORTS"):
        lo = FIRST_PORT + int(match.group(1)) * PORTS_PER_WORKER
        if lo + PORTS_PER_WORKER > 32768:
            raise RuntimeError(f"too many pytest workers for the lab's port ranges ({worker})")
        os.environ["AKS_KMS_LAB_PORTS"] = f"{lo}-{lo + PORTS_PER_WORKER - 1}"
