"""Shared azure-core plumbing: the credential, the retry policy and the Key Vault transport.

Every gateway builds its SDK client from :func:`client_kwargs`, so TLS trust, timeouts and retry
behaviour are the same for ARM, Key Vault and the thin ARM reader.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from azure.core.credentials import TokenCredential
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import RetryPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ClientSecretCredential, DefaultAzureCredential, WorkloadIdentityCredential

from .. import metrics
from .config import AzureSettings

KEY_VAULT_SUFFIXES = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
    ".managedhsm.azure.net",
)
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class BoundedRetryPolicy(RetryPolicy):
    """azure-core's retry, minus the two behaviours a reconcile loop cannot afford.

    * A Retry-After longer than ``max_inline_retry_after`` is not slept on inside the call: the
      response goes back to the gateway, which raises ``AzureThrottled(retry_after)``, and the
      operator requeues. (ARM's write quota answers 429 with Retry-After of many minutes.)
    * 409 and other non-transient statuses are never retried, even when they carry Retry-After:
      a 409 ``OperationNotAllowed`` means "read again later", not "send the same PUT again".

    Retrying a PUT on 5xx is safe because every cluster PUT carries If-Match: if the first attempt
    was applied, the retry gets 412 and the operator re-reads.
    """

    def __init__(self, *, max_inline_retry_after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_inline_retry_after = max_inline_retry_after

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        if response.http_response.status_code not in _TRANSIENT_STATUS:
            return False
        retry_after = self.get_retry_after(response)
        if retry_after is not None and retry_after > self.max_inline_retry_after:
            return False
        return bool(super().is_retry(settings, response))


class MeteredTransport(RequestsTransport):
    """Counts and times every HTTP try to Azure (``aks_kms_operator.metrics``).

    The transport is the one place every request of every SDK client passes, once per try: retries
    and Key Vault's 401 challenge round trip included, which is what a throttling or latency panel
    must show. The operation label comes from the URL (a fixed vocabulary, never a resource name).
    """

    def __init__(self, *, service: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service

    def send(self, request: Any, **kwargs: Any) -> Any:
        operation = metrics.azure_operation(self.service, request.method, request.url)
        start, code = time.monotonic(), "error"
        try:
            response = super().send(request, **kwargs)
            code = str(response.status_code)
            return response
        finally:
            metrics.observe_azure(self.service, operation, code, time.monotonic() - start)


class KeyVaultRedirectTransport(MeteredTransport):
    """Sends Key Vault requests to another origin while keeping ``Host: <vault>.vault.azure.net``.

    The URL is rewritten only for the duration of the send and restored afterwards, because
    azure-keyvault-keys' challenge policy looks at the request URL after a 401 to verify the
    challenge resource: it must keep seeing the real vault host.
    """

    def __init__(self, endpoint: str, **kwargs: Any) -> None:
        super().__init__(service="keyvault", **kwargs)
        self._target = urlsplit(endpoint)

    def send(self, request: Any, **kwargs: Any) -> Any:
        original = request.url
        parts = urlsplit(original)
        host = (parts.hostname or "").lower()
        if not host.endswith(KEY_VAULT_SUFFIXES):
            return super().send(request, **kwargs)
        request.url = urlunsplit((self._target.scheme, self._target.netloc, parts.path, parts.query, ""))
        request.headers["Host"] = parts.netloc
        try:
            return super().send(request, **kwargs)
        finally:
            request.url = original
            request.headers.pop("Host", None)


def retry_policy(settings: AzureSettings) -> BoundedRetryPolicy:
    return BoundedRetryPolicy(
        max_inline_retry_after=settings.max_inline_retry_after,
        retry_total=settings.retry_total,
        retry_backoff_factor=settings.retry_backoff_factor,
        retry_backoff_max=settings.retry_backoff_max,
    )


def client_kwargs(settings: AzureSettings, *, key_vault: bool = False) -> dict[str, Any]:
    """Keyword arguments every SDK client of the operator gets."""
    transport_kwargs: dict[str, Any] = {
        "connection_verify": settings.connection_verify,
        "connection_timeout": settings.http_timeout,
        "read_timeout": settings.http_timeout,
    }
    transport: RequestsTransport
    if key_vault and settings.keyvault_endpoint:
        transport = KeyVaultRedirectTransport(settings.keyvault_endpoint, **transport_kwargs)
    else:
        transport = MeteredTransport(service="keyvault" if key_vault else "arm", **transport_kwargs)
    return {"transport": transport, "retry_policy": retry_policy(settings)}


def build_credential(settings: AzureSettings) -> TokenCredential:
    """The credential the operator authenticates with.

    * ``AZURE_CLIENT_SECRET`` set: ``ClientSecretCredential`` (lab and CI).
    * ``AZURE_FEDERATED_TOKEN_FILE`` set: ``WorkloadIdentityCredential`` built directly, so the
      authority and CA bundle from the settings apply (DefaultAzureCredential would read them from
      the environment only).
    * otherwise ``DefaultAzureCredential`` restricted to what can work unattended in a pod:
      environment, workload identity and managed identity. Developer, CLI, IDE, broker and
      interactive credentials are excluded: a pod has none, and probing them costs seconds per token.
    """
    common: dict[str, Any] = {"connection_verify": settings.connection_verify}
    if settings.client_secret:
        return ClientSecretCredential(
            settings.tenant_id,
            settings.client_id,
            settings.client_secret,
            authority=settings.authority_host,
            disable_instance_discovery=settings.disable_instance_discovery,
            **common,
        )
    if settings.federated_token_file:
        return WorkloadIdentityCredential(
            tenant_id=settings.tenant_id,
            client_id=settings.client_id,
            token_file_path=settings.federated_token_file,
            authority=settings.authority_host,
            **common,
        )
    return DefaultAzureCredential(
        authority=settings.authority_host,
        managed_identity_client_id=settings.client_id or None,
        exclude_interactive_browser_credential=True,
        exclude_broker_credential=True,
        exclude_cli_credential=True,
        exclude_developer_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
        **common,
    )
