"""AKS's control-plane side of a KMS change, played on the lab's real API server.

When the fake ARM accepts a KMS change it calls ``on_kms_change`` while the operation is still
Updating. Like AKS, this:

1. shifts the two key slots (``encryption.KeySlots``),
2. makes sure a provider exists for every loaded key (a KMS v2 plugin per key version in the lab,
   or a derived aescbc key in the integration tests),
3. writes the EncryptionConfiguration (current key first, previous second; identity first when
   disabled) and rolls the API server, waiting until it is ready,

and only then lets the fake complete the long-running operation.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane
from .encryption import KeySlots, ProviderFor, encryption_configuration, write_configuration

log = logging.getLogger(__name__)


class ApiServerKms:
    """Keeps the API server's encryption in step with the fake AKS cluster's KMS block."""

    def __init__(
        self,
        control_plane: ControlPlane,
        config_path: Path,
        provider: ProviderFor,
        *,
        load_key: Callable[[str], None] = lambda key_url: None,
        state_path: Path | None = None,
    ) -> None:
        self.cp = control_plane
        self.config_path = config_path
        self.provider = provider
        self.load_key = load_key  # start the plugin for a key version before the API server needs it
        self.state_path = state_path
        self._lock = threading.Lock()
        self.slots = KeySlots()
        if state_path and state_path.exists():
            self.slots = KeySlots.from_json(json.loads(state_path.read_text()))
        self.changes = 0

    def write_config(self) -> None:
        for key in self.slots.loaded():
            self.load_key(key)
        write_configuration(self.config_path, encryption_configuration(self.slots, self.provider))
        if self.state_path:
            self.state_path.write_text(json.dumps(self.slots.to_json()))

    def on_kms_change(self, cluster_key: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """The fake ARM's hook: runs while the operation is Updating; raising fails the operation."""
        with self._lock:
            enabled = bool(new.get("enabled"))
            self.slots = self.slots.apply(enabled, str(new.get("keyId") or ""))
            log.info("cluster %s: KMS %s; API server loads %s", cluster_key, "on" if enabled else "off",
                     self.slots.loaded())
            self.write_config()
            self.cp.restart_apiserver(self.config_path)
            self.changes += 1
