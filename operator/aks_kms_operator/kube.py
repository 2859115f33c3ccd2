"""A small async Kubernetes API client on aiohttp, for the traffic kopf does not do for us.

Why not the official ``kubernetes`` package: it would be the largest import of the process (kopf's
own docs attribute most of an operator's memory to it), it is synchronous, and it does not handle
429 or ``Retry-After``. The rewrite engine needs exactly four calls (metadata-only LIST with
pagination, metadata-only PATCH, GET, POST) on one keep-alive connection pool, so we speak HTTP
directly. Credentials come from kopf's own login helpers, so the operator authenticates the same
way kopf does: in-cluster service account first, then ``KUBECONFIG``.

Secret data never reaches this process through here: list and patch responses for Secrets are
requested as ``PartialObjectMetadata`` (see ``METADATA_ONLY``).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MERGE_PATCH = "application/merge-patch+json"


class KubeError(Exception):
    """A non-2xx answer from the API server, with what a caller needs to decide what to do."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.body = body or {}


def _retry_after(headers: Mapping[str, str], body: Mapping[str, Any]) -> float | None:
    raw = headers.get("Retry-After")
    if raw:
        try:
            return float(raw)
        except ValueError:
            return None
    seconds = (body.get("details") or {}).get("retryAfterSeconds")
    return float(seconds) if seconds else None


@dataclass(frozen=True)
class Credentials:
    """Where and how to reach the API server; built from kopf's ConnectionInfo."""

    server: str
    ssl: ssl.SSLContext | bool
    headers: Mapping[str, str]

    @classmethod
    def login(cls) -> Credentials:
        """In-cluster service account if present, else the kubeconfig (``KUBECONFIG``)."""
        settings = kopf.OperatorSettings()
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
        if info is None:
            raise kopf.LoginError("no in-cluster service account and no KUBECONFIG to log in with")
        return cls.from_connection_info(info)

    @classmethod
    def from_connection_info(cls, info: kopf.ConnectionInfo) -> Credentials:
        ctx: ssl.SSLContext | bool
        if info.insecure:
            ctx = False
        else:
            ctx = ssl.create_default_context()
            if info.ca_path:
                ctx.load_verify_locations(cafile=str(info.ca_path))
            elif info.ca_data:
                data = info.ca_data if isinstance(info.ca_data, str) else info.ca_data.decode()
                ctx.load_verify_locations(cadata=_maybe_b64(data))
            cert, key = info.certificate_path, info.private_key_path
            if info.certificate_data and info.private_key_data:
                cert, key = _temp_pem(info.certificate_data), _temp_pem(info.private_key_data)
            if cert and key:
                ctx.load_cert_chain(str(cert), str(key))
        headers: dict[str, str] = {}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            pair = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        return cls(server=info.server.rstrip("/"), ssl=ctx, headers=headers)


def _maybe_b64(data: str) -> str:
    return data if "-----BEGIN" in data else base64.b64decode(data).decode()


def _temp_pem(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data.decode()
    f = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)  # noqa: SIM115
    with f:
        f.write(_maybe_b64(text))
    return f.name


class KubeClient:
    """One aiohttp session with a bounded keep-alive pool. Use as an async context manager."""

    def __init__(self, credentials: Credentials, *, pool_size: int = 64, timeout: float = 60,
                 trace_configs: Sequence[aiohttp.TraceConfig] = ()) -> None:
        """``trace_configs`` are handed to aiohttp (tests use them to see the raw response bytes)."""
        self.credentials = credentials
        self._pool_size = pool_size
        self._timeout = timeout
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=self.credentials.ssl)
        self._session = aiohttp.ClientSession(
            base_url=self.credentials.server,
            connector=connector,
            headers=dict(self.credentials.headers),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            json_serialize=json.dumps,
            trace_configs=self._trace_configs or None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; raise ``KubeError`` on any non-2xx answer (with Retry-After parsed)."""
        assert self._session is not None, "use KubeClient as an async context manager"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Accept": accept}
        if data is not None:
            headers["Content-Type"] = content_type
        async with self._session.request(method, path, params=params, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                try:
                    payload = json.loads(raw) if raw else {}
                except ValueError:  # 429 from priority-and-fairness is plain text
                    payload = {"message": raw.decode(errors="replace")[:200]}
                if not isinstance(payload, dict):
                    payload = {"message": str(payload)[:200]}
                raise KubeError(
                    resp.status,
                    str(payload.get("reason") or resp.reason or ""),
                    str(payload.get("message") or ""),
                    retry_after=_retry_after(resp.headers, payload),
                    body=payload,
                )
            return json.loads(raw) if raw else {}

    async def list_pages(
        self, path: str, *, limit: int, metadata_only: bool = True, params: Mapping[str, str] | None = None,
        on_error: Callable[[Exception, int], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield list pages; on 410 Gone (continue token expired) carry on from the fresh token.

        The fresh token from the 410's Status continues from the latest state: an inconsistent list,
        which is fine for re-encryption (anything written since is already under the current key).

        ``on_error(error, attempt)`` (optional) is awaited when a page request fails for any other
        reason (``KubeError``, ``aiohttp.ClientError``, ``TimeoutError``); if it returns True the same
        page is requested again (the callback sleeps and bounds the attempts), else the error is raised.
        """
        token = ""
        attempt = 0
        while True:
            query = {"limit": str(limit), **(params or {})}
            if token:
                query["continue"] = token
            try:
                page = await self.request("GET", path, params=query,
                                          accept=METADATA_LIST if metadata_only else "application/json")
            except (KubeError, aiohttp.ClientError, TimeoutError) as err:
                fresh = (err.body.get("metadata") or {}).get("continue") if isinstance(err, KubeError) else None
                if isinstance(err, KubeError) and err.status == 410 and fresh:
                    token = fresh
                    continue
                attempt += 1
                if on_error is not None and await on_error(err, attempt):
                    continue
                raise
            attempt = 0
            yield page
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return
