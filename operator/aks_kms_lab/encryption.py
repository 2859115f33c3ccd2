"""How the lab plays AKS's side of a KMS change: which keys the API server loads, in which order.

AKS runs one KMS plugin per loaded key version and keeps two slots: the key it writes with
(current) and the key it still reads (previous). After a change, the API server's
EncryptionConfiguration lists, in order:

* enable with key A (from disabled):   ``[kms A, identity]``
* rotate A → B:                        ``[kms B, kms A, identity]``
* rotate B → C:                        ``[kms C, kms B, identity]`` — A is gone: any Secret still
  under A can no longer be read. This is the "rotate twice before rewriting" failure.
* disable (current B):                 ``[identity, kms B]`` — plaintext writes, B still read.

``identity`` stays last so Secrets written before KMS was ever enabled remain readable, as on AKS.
The first provider writes; every provider is tried for reads (reference/reencryption.md §13).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def key_id_hash(key_url: str) -> str:
    """The KMS v2 key ID the plugin reports: hex SHA-256 of the versioned key URL (as AKS's plugin)."""
    return hashlib.sha256(key_url.encode()).hexdigest()


def provider_name(key_url: str) -> str:
    """A stable provider name per key version; it is part of every stored value's prefix."""
    return f"akv-{key_id_hash(key_url)[:12]}"


@dataclass
class KeySlots:
    """AKS's two KMS slots plus whether KMS is on. ``None`` means an empty slot."""

    enabled: bool = False
    current: str | None = None
    previous: str | None = None
    history: list[str] = field(default_factory=list)

    def apply(self, enabled: bool, key_url: str) -> KeySlots:
        """The slots after AKS accepts a KMS change."""
        if not enabled:
            # Disable: plaintext writes; the last key stays loaded for reads until rotated away.
            return KeySlots(False, None, self.current or self.previous, self.history)
        if self.current == key_url:
            return KeySlots(True, self.current, self.previous, self.history)
        prior = self.current or self.previous
        previous = prior if prior != key_url else None
        history = [*self.history, key_url] if key_url not in self.history else self.history
        return KeySlots(True, key_url, previous, history)

    def loaded(self) -> list[str]:
        return [k for k in (self.current, self.previous) if k]

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "current": self.current, "previous": self.previous,
                "history": list(self.history)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeySlots:
        return cls(bool(data.get("enabled")), data.get("current"), data.get("previous"),
                   list(data.get("history") or []))


ProviderFor = Callable[[str], dict[str, Any]]


def kms_v2_provider(socket_for: Callable[[str], Path], timeout: str = "5s") -> ProviderFor:
    """Providers as on AKS: one KMS v2 plugin per key version, on its own Unix socket."""

    def provider(key_url: str) -> dict[str, Any]:
        return {"kms": {"apiVersion": "v2", "name": provider_name(key_url),
                        "endpoint": f"unix://{socket_for(key_url)}", "timeout": timeout}}

    return provider


def aescbc_provider(key_url: str) -> dict[str, Any]:
    """A stand-in for a KMS key in integration tests: an aescbc key derived from the key URL.

    Same slots, same ordering, same stale-on-key-change behaviour of the API server, without the
    plugin processes; the stored prefix names the key as ``k8s:enc:aescbc:v1:<provider name>:``.
    """
    secret = base64.b64encode(hashlib.sha256(b"aks-kms-lab:" + key_url.encode()).digest()).decode()
    return {"aescbc": {"keys": [{"name": provider_name(key_url), "secret": secret}]}}


def encryption_configuration(slots: KeySlots, kms: ProviderFor) -> dict[str, Any]:
    """The EncryptionConfiguration AKS would give its API server for these slots."""
    providers: list[dict[str, Any]] = []
    if slots.enabled and slots.current:
        providers.append(kms(slots.current))
        if slots.previous:
            providers.append(kms(slots.previous))
        providers.append({"identity": {}})
    else:
        providers.append({"identity": {}})
        if slots.previous:
            providers.append(kms(slots.previous))
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    }


def write_configuration(path: Path, config: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.replace(path)
