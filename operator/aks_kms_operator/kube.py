"""A small async Kubernetes API client on aiohttp, for the traffic kopf does not do for us.

Why aiohttp and not the official client's generated API classes: they are synchronous and do not
handle 429 or ``Retry-After``. The rewrite engine needs exactly four calls (metadata-only LIST with
pagination, metadata-only PATCH, GET, POST) on one keep-alive connection pool, so we speak HTTP
directly.

Credentials, however, come from the official ``kubernetes`` package's loaders
(``kubernetes.config``): they are maintained against every way a cluster hands out credentials —
the in-cluster service account (whose projected token the kubelet rewrites about hourly and which
expires), and kubeconfig files including ``exec`` plugins (kubelogin on every Entra-ID AKS
cluster). ``CredentialSource`` wraps them: ``KubeClient`` asks it for the Authorization header on
every request (a clock comparison while the token is fresh), it re-runs the loader's refresh when
the token is due, and a 401 forces one full reload and one retry of that request. kopf's own login
(``handlers.login``) reads the same source, so both clients always hold the same identity.

Certificate and key material that a kubeconfig carries inline has to pass through files (Python's
``ssl`` loads only files); those files live in a private directory for the few milliseconds it
takes to build the SSL context, then the directory is removed. Nothing is left in /tmp.

Secret data never reaches this process through here: list and patch responses for Secrets are
requested as ``PartialObjectMetadata`` (see ``METADATA_ONLY``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    import kopf
    from kubernetes.client import Configuration

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MERGE_PATCH = "application/merge-patch+json"

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# How often KubeClient lets the source run the loader's refresh hook (which re-reads the token file
# or re-runs an exec plugin once the token is due). Between checks a request costs a clock read.
CHECK_INTERVAL_SECONDS = 1.0


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
    """One snapshot: where the API server is, how to verify it and who we are to it.

    ``namespace`` is the default namespace of that identity (the in-cluster namespace file, or the
    kubeconfig context's namespace): kopf posts Events about cluster-scoped objects there.
    """

    server: str
    ssl: ssl.SSLContext | bool
    headers: Mapping[str, str]
    namespace: str | None = None

    @classmethod
    def login(cls) -> Credentials:
        """A snapshot of what ``CredentialSource.discover()`` finds (tests, the lab, benchmarks).

        Long-running code should hand the ``CredentialSource`` itself to ``KubeClient``, which
        keeps the token fresh; a snapshot never changes.
        """
        return CredentialSource.discover().snapshot()


@dataclass
class _Loaded:
    """What one run of a loader produced: the official client's Configuration plus our TLS context."""

    config: Configuration | None
    credentials: Credentials
    tls_files: tuple[Any, ...] = ()
    # PEM text of material that existed only inline (kubeconfig *-data fields, exec plugin output):
    # kopf gets it as data, never as a path to a file that no longer exists.
    inline_pem: dict[str, str] = field(default_factory=dict)
    tmp: str = ""  # the private directory the loader writes inline material to (removed after use)


# A loader fills the official client's Configuration (writing inline TLS material, if any, into the
# directory it is given) and returns the identity's default namespace.
Loader = Callable[["Configuration", str], "str | None"]


class CredentialSource:
    """Live credentials from the official client's loaders; safe to share across threads and clients.

    ``snapshot()``/``current()`` are what a request uses: while the token is fresh they only read a
    clock; every ``CHECK_INTERVAL_SECONDS`` they let the loader's own refresh hook run (the
    in-cluster loader re-reads the token file once a minute, the kubeconfig loader re-runs an exec
    plugin when its ExecCredential is near expiry). ``reload()``/``refresh()`` run the whole loader
    again: for a 401, which means the token was revoked or rotated earlier than announced.
    """

    def __init__(self, loader: Loader | None, *, origin: str, fixed: Credentials | None = None,
                 check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self.origin = origin
        self._loader = loader
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None if fixed is None else _Loaded(None, fixed, ())
        self._checked_at = float("-inf")
        self.reloads = 0  # full loader runs so far (tests and logs)

    def __repr__(self) -> str:
        return f"CredentialSource({self.origin})"

    # ------------------------------------------------------------------ where credentials come from

    @classmethod
    def fixed(cls, credentials: Credentials) -> CredentialSource:
        """Credentials that never change (the lab's admin certificate); a 401 is final."""
        return cls(None, origin="fixed credentials", fixed=credentials)

    @classmethod
    def in_cluster(cls, directory: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR, *,
                   environ: Mapping[str, str] | None = None) -> CredentialSource:
        """The pod's projected service account token (``directory``: token, ca.crt, namespace).

        ``directory`` and ``environ`` exist so a test can stand in for the kubelet; in a pod the
        defaults are right.
        """
        from kubernetes.config.incluster_config import InClusterConfigLoader

        folder = Path(directory)

        def load(config: Configuration, _tmp: str) -> str | None:
            InClusterConfigLoader(token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt"),
                                  try_refresh_token=True,
                                  environ=os.environ if environ is None else environ).load_and_set(config)
            namespace = folder / "namespace"
            return (namespace.read_text().strip() or None) if namespace.is_file() else None

        return cls(load, origin=f"in-cluster service account ({folder})")

    @classmethod
    def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None, *,
                        context: str | None = None) -> CredentialSource:
        """A kubeconfig (``path``, else ``$KUBECONFIG``, else ~/.kube/config), any auth it supports."""
        from kubernetes.config import kube_config

        target = str(path) if path else os.environ.get("KUBECONFIG") or "~/.kube/config"

        def load(config: Configuration, tmp: str) -> str | None:
            kube_config.load_kube_config(config_file=target, context=context, client_configuration=config,
                                         persist_config=False, temp_file_path=tmp)
            contexts, current = kube_config.list_kube_config_contexts(target)
            chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
            return ((chosen or {}).get("context") or {}).get("namespace") or None

        return cls(load, origin=f"kubeconfig {target}")

    @classmethod
    def discover(cls) -> CredentialSource:
        """The in-cluster service account if this runs in a pod, else the kubeconfig."""
        import kopf

        if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").is_file():
            return cls.in_cluster()
        kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
        if any(Path(p).expanduser().is_file() for p in kubeconfig.split(os.pathsep) if p):
            return cls.from_kubeconfig(kubeconfig)
        raise kopf.LoginError("no in-cluster service account and no kubeconfig to log in with")

    # ------------------------------------------------------------------ what requests use

    @property
    def refreshable(self) -> bool:
        return self._loader is not None

    def snapshot(self) -> Credentials:
        """Current credentials; runs the loader's refresh hook when the last check is old enough."""
        with self._lock:
            if self._loaded is None:
                self._loaded = self._reload()
            elif self._loader is not None and time.monotonic() - self._checked_at >= self._check_interval:
                self._loaded = self._run_refresh_hook(self._loaded)
                self._checked_at = time.monotonic()
            return self._loaded.credentials

    async def current(self) -> Credentials:
        """``snapshot()`` for the event loop: no thread while fresh; the hook (which may run an exec
        plugin) off the loop when due."""
        loaded = self._loaded
        if loaded is not None and (self._loader is None
                                   or time.monotonic() - self._checked_at < self._check_interval):
            return loaded.credentials
        return await asyncio.to_thread(self.snapshot)

    def reload(self, stale: Credentials | None = None) -> Credentials:
        """Run the whole loader again, unless ``stale`` was already replaced (by a concurrent 401)."""
        with self._lock:
            if self._loader is None:
                assert self._loaded is not None
                return self._loaded.credentials
            if stale is not None and self._loaded is not None and self._loaded.credentials is not stale:
                return self._loaded.credentials
            self._loaded = self._reload()
            return self._loaded.credentials

    async def refresh(self, stale: Credentials | None = None) -> Credentials:
        return await asyncio.to_thread(self.reload, stale)

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same identity for kopf's own client, freshly loaded (kopf asks again after a 401).

        Inline TLS material goes to kopf as data (it builds its SSL context from memory and
        temporary files it deletes at once); file paths from the kubeconfig stay paths.
        """
        import kopf

        creds = self.reload()
        loaded = self._loaded
        if loaded is None or loaded.config is None:
            raise kopf.LoginError(f"{self.origin} cannot be handed to kopf")
        config = loaded.config
        inline = loaded.inline_pem
        scheme, _, token = str(creds.headers.get("Authorization", "")).partition(" ")
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=None if "ca" in inline else config.ssl_ca_cert or None,
            ca_data=inline.get("ca"),
            insecure=not config.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=None if "cert" in inline else config.cert_file or None,
            certificate_data=inline.get("cert"),
            private_key_path=None if "key" in inline else config.key_file or None,
            private_key_data=inline.get("key"),
            default_namespace=creds.namespace,
        )

    # ------------------------------------------------------------------ internals (under the lock)

    def _reload(self) -> _Loaded:
        from kubernetes.client import Configuration

        assert self._loader is not None
        config = Configuration()
        tmp = tempfile.mkdtemp(prefix="aks-kms-login-")
        try:
            namespace = self._loader(config, tmp)
            if not config.host:
                raise ValueError(f"{self.origin}: no API server address")
            ctx, inline = _ssl_context(config, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.reloads += 1
        self._checked_at = time.monotonic()
        creds = Credentials(server=config.host.rstrip("/"), ssl=ctx, headers=_authorization(config),
                            namespace=namespace)
        return _Loaded(config, creds, _tls_files(config), inline, tmp)

    def _run_refresh_hook(self, loaded: _Loaded) -> _Loaded:
        config = loaded.config
        if config is None or config.refresh_api_key_hook is None:
            return loaded
        try:
            config.refresh_api_key_hook(config)
            headers = _authorization(config)
            ctx, inline = loaded.credentials.ssl, loaded.inline_pem
            if _tls_files(config) != loaded.tls_files:  # an exec plugin handed out a new client certificate
                ctx, inline = _ssl_context(config, loaded.tmp)
        finally:
            shutil.rmtree(loaded.tmp, ignore_errors=True)  # the hook may have written inline material again
        if headers == loaded.credentials.headers and ctx is loaded.credentials.ssl:
            return loaded
        old = loaded.credentials
        creds = Credentials(server=old.server, ssl=ctx, headers=headers, namespace=old.namespace)
        return _Loaded(config, creds, _tls_files(config), inline, loaded.tmp)


def _authorization(config: Configuration) -> dict[str, str]:
    """The Authorization header the loader prepared (already with its scheme: Bearer or Basic).

    kubernetes >= 36 keeps it under ``BearerToken``, older releases under ``authorization``.
    """
    for key in ("BearerToken", "authorization"):
        value = config.api_key.get(key)
        if value:
            prefix = config.api_key_prefix.get(key)
            return {"Authorization": f"{prefix} {value}" if prefix else str(value)}
    return {}


def _tls_files(config: Configuration) -> tuple[Any, ...]:
    return (config.ssl_ca_cert, config.cert_file, config.key_file, config.verify_ssl)


def _ssl_context(config: Configuration, tmp: str) -> tuple[ssl.SSLContext, dict[str, str]]:
    """SSL context from the loader's files; inline material (files under ``tmp``) kept as PEM text."""
    ca, cert, key = config.ssl_ca_cert, config.cert_file, config.key_file
    ctx = ssl.create_default_context(cafile=ca if ca and config.verify_ssl else None)
    if not config.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key)
    root = os.path.realpath(tmp) + os.sep
    inline = {name: Path(path).read_text() for name, path in (("ca", ca), ("cert", cert), ("key", key))
              if path and os.path.realpath(path).startswith(root)}
    return ctx, inline


class KubeClient:
    """One aiohttp session with a bounded keep-alive pool. Use as an async context manager.

    ``credentials`` is a ``CredentialSource`` (long-running use: the token is kept fresh and a 401
    is retried once after a reload) or a fixed ``Credentials`` snapshot.
    """

    def __init__(self, credentials: Credentials | CredentialSource, *, pool_size: int = 64, timeout: float = 60,
                 trace_configs: Sequence[aiohttp.TraceConfig] = ()) -> None:
        """``trace_configs`` are handed to aiohttp (tests use them to see the raw response bytes)."""
        self.credentials = credentials
        self.source = (credentials if isinstance(credentials, CredentialSource)
                       else CredentialSource.fixed(credentials))
        self._pool_size = pool_size
        self._timeout = timeout
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        creds = await self.source.current()
        self._session = self._new_session(creds, aiohttp.TCPConnector(limit=self._pool_size, ssl=creds.ssl))
        return self

    def _new_session(self, creds: Credentials, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=creds.server,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            json_serialize=json.dumps,
            trace_configs=self._trace_configs or None,
        )

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._session, self._fresh_session):
            if session:
                await session.close()
        self._session = self._fresh_session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        fresh_connection: bool = False,
    ) -> dict[str, Any]:
        """Send one request; raise ``KubeError`` on any non-2xx answer (with Retry-After parsed).

        A 401 reloads the credentials and retries this request once: a rotated or revoked token is
        replaced at the first refusal instead of failing every call until the next scheduled check.
        ``fresh_connection``: open a new TCP connection for this request (and close it after), so that
        behind a load balancer it may reach another API server replica than the pooled ones.
        """
        assert self._session is not None, "use KubeClient as an async context manager"
        session = self._session
        if fresh_connection:
            if self._fresh_session is None:
                creds = await self.source.current()
                self._fresh_session = self._new_session(creds, aiohttp.TCPConnector(force_close=True))
            session = self._fresh_session
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        creds = await self.source.current()
        for attempt in (1, 2):
            headers = {"Accept": accept, **creds.headers}
            if data is not None:
                headers["Content-Type"] = content_type
            async with session.request(method, path, params=params, data=data, headers=headers,
                                       ssl=creds.ssl) as resp:
                raw = await resp.read()
                if resp.status == 401 and attempt == 1 and self.source.refreshable:
                    creds = await self.source.refresh(creds)
                    continue
                if resp.status >= 300:
                    raise _error(resp, raw)
                return json.loads(raw) if raw else {}
        raise AssertionError("unreachable")  # pragma: no cover

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


def _error(resp: aiohttp.ClientResponse, raw: bytes) -> KubeError:
    try:
        payload = json.loads(raw) if raw else {}
    except ValueError:  # 429 from priority-and-fairness is plain text
        payload = {"message": raw.decode(errors="replace")[:200]}
    if not isinstance(payload, dict):
        payload = {"message": str(payload)[:200]}
    return KubeError(resp.status, str(payload.get("reason") or resp.reason or ""), str(payload.get("message") or ""),
                     retry_after=_retry_after(resp.headers, payload), body=payload)
