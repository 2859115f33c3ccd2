"""``KeyVault`` on azure-keyvault-keys' ``KeyClient`` (one client per vault host).

Key Vault refuses to read a disabled key version (403 ``KeyDisabled``), but still lists it with its
attributes. A disabled version is therefore reported from the version listing with
``enabled=False`` and an empty ``key_type`` (unknown without key material), never as an error: a
disabled key is a fact the planner must see, not a failure of the gateway.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from azure.keyvault.keys import KeyClient, KeyProperties, KeyVaultKey

from ..model import KeyRef, KeyState
from .config import AzureSettings
from .errors import AzureGatewayError, AzureNotFound, translate
from .pipeline import build_credential, client_kwargs


def _ops(key: KeyVaultKey) -> tuple[str, ...]:
    return tuple(str(getattr(op, "value", op)) for op in (key.key_operations or ()))


def _from_key(key: KeyVaultKey) -> KeyState:
    props = key.properties
    return KeyState(
        key_id=str(key.id),
        exists=True,
        enabled=bool(props.enabled),
        expires_on=props.expires_on,
        not_before=props.not_before,
        key_type=str(getattr(key.key_type, "value", key.key_type) or ""),
        key_ops=_ops(key),
        created_on=props.created_on,
    )


def _from_properties(props: KeyProperties) -> KeyState:
    return KeyState(
        key_id=str(props.id),
        exists=True,
        enabled=bool(props.enabled),
        expires_on=props.expires_on,
        not_before=props.not_before,
        key_type="",
        key_ops=(),
        created_on=props.created_on,
    )


class SdkKeyVault:
    """KeyVault gateway. Key IDs stay Azure's real URLs; a lab redirect happens in the transport."""

    def __init__(self, settings: AzureSettings, credential: Any | None = None) -> None:
        self._settings = settings
        self._credential = credential or build_credential(settings)
        self._clients: dict[str, KeyClient] = {}

    def _client(self, ref: KeyRef) -> KeyClient:
        client = self._clients.get(ref.vault_url)
        if client is None:
            client = KeyClient(
                ref.vault_url,
                self._credential,
                verify_challenge_resource=self._settings.keyvault_verify_challenge_resource,
                **client_kwargs(self._settings, key_vault=True),
            )
            self._clients[ref.vault_url] = client
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _versions(self, ref: KeyRef) -> list[KeyProperties]:
        try:
            versions = list(self._client(ref).list_properties_of_key_versions(ref.name))
        except Exception as exc:
            raise translate(exc) from exc
        epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
        return sorted(versions, key=lambda p: p.created_on or epoch)

    def key_state(self, key_id: str) -> KeyState:
        ref = KeyRef.parse(key_id)
        try:
            return _from_key(self._client(ref).get_key(ref.name, ref.version or None))
        except Exception as exc:
            err: AzureGatewayError = translate(exc)
            if isinstance(err, AzureNotFound):
                return KeyState(key_id=ref.key_id, exists=False, enabled=False)
            if err.inner_code != "KeyDisabled":
                raise err from exc
        # Disabled: read its attributes from the listing (no key material there).
        versions = self._versions(ref)
        wanted = [p for p in versions if KeyRef.parse(str(p.id)).version == ref.version] if ref.version else versions
        if not wanted:
            return KeyState(key_id=ref.key_id, exists=False, enabled=False)
        return _from_properties(wanted[-1])

    def list_versions(self, key_id: str) -> tuple[KeyState, ...]:
        ref = KeyRef.parse(key_id)
        try:
            return tuple(_from_properties(p) for p in self._versions(ref))
        except AzureNotFound:
            return ()

    def newest_usable_version(self, key_id: str, now: dt.datetime) -> KeyState | None:
        for state in reversed(self.list_versions(key_id)):
            if state.enabled and not state.expired(now) and not state.not_yet_valid(now):
                return self.key_state(state.key_id)
        return None
