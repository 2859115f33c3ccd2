"""The API server's EncryptionConfiguration for a list of KMS v2 plugin instances.

AKS loads one plugin per key version: the current key first (it writes), the previous key second
(it still reads), ``identity`` last so plaintext written before KMS stays readable; with KMS
disabled, ``identity`` comes first and the KMS providers stay behind it to read what they wrote.
How AKS names its providers is not public: the lab uses ``akv-<first 8 hex of the key ID>``, stable
per key version, so each version keeps its provider name (and etcd prefix) across config changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .wrappers import key_id_for


def provider_name(key_url: str) -> str:
    return f"akv-{key_id_for(key_url)[:8]}"


def encryption_configuration(kms: Sequence[tuple[str, str]], *, identity_first: bool = False,
                             timeout: str = "3s") -> dict[str, Any]:
    """``kms`` is ``[(key_url, endpoint), ...]`` in AKS order (current first)."""
    providers: list[dict[str, Any]] = [
        {"kms": {"apiVersion": "v2", "name": provider_name(url), "endpoint": endpoint, "timeout": timeout}}
        for url, endpoint in kms
    ]
    identity: dict[str, Any] = {"identity": {}}
    providers = [identity, *providers] if identity_first else [*providers, identity]
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{"resources": ["secrets"], "providers": providers}],
    }


def write_encryption_configuration(path: Path, kms: Sequence[tuple[str, str]], *, identity_first: bool = False,
                                   timeout: str = "3s") -> Path:
    """Write atomically (the API server's automatic reload may read the file at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(encryption_configuration(kms, identity_first=identity_first, timeout=timeout),
                                  sort_keys=False))
    tmp.replace(path)
    return path
