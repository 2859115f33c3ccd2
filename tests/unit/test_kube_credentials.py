"""The parts of ``kube.CredentialSource`` that need no API server (the rest: tests/integration/test_credentials.py)."""

from __future__ import annotations

import asyncio
import ssl

from kubernetes.client import Configuration

from aks_kms_operator.kube import Credentials, CredentialSource, _authorization


def test_authorization_header_from_either_key_the_client_versions_use() -> None:
    """kubernetes >= 36 stores the header under ``BearerToken``; older releases under
    ``authorization``, sometimes with a separate prefix. Basic auth arrives already encoded."""
    new = Configuration()
    new.api_key["BearerToken"] = "Bearer abc"
    old = Configuration()
    old.api_key["authorization"] = "abc"
    old.api_key_prefix["authorization"] = "Bearer"
    basic = Configuration()
    basic.api_key["BearerToken"] = "Basic dTpw"
    assert _authorization(new) == _authorization(old) == {"Authorization": "Bearer abc"}
    assert _authorization(basic) == {"Authorization": "Basic dTpw"}
    assert _authorization(Configuration()) == {}


def test_fixed_credentials_never_reload() -> None:
    creds = Credentials(server="https://127.0.0.1:1", ssl=ssl.create_default_context(), headers={})
    source = CredentialSource.fixed(creds)
    assert not source.refreshable
    assert source.snapshot() is creds and source.reload(creds) is creds
    assert asyncio.run(source.current()) is creds and asyncio.run(source.refresh(creds)) is creds
    assert source.reloads == 0
