"""The fake Azure server: HTTPS on 127.0.0.1 playing Entra ID, ARM, Key Vault and a little of Graph.

Two listeners serve the same state. :attr:`FakeAzure.url` (the fake's own address) is where the
operator and the lab's KMS plugins connect, with endpoint overrides; the lab models it as the inside of
the cluster's private link. :attr:`FakeAzure.public_port` is the public network: the lab's CONNECT proxy
(``aks_kms_lab.proxy``) tunnels Azure's own host names there, so the real Azure CLI works unchanged,
and Key Vault applies its network rules to what arrives there (``Request.public_network``). The
certificate names 127.0.0.1, localhost and :data:`AZURE_HOSTS`.

Routing, by order:

1. Host ``<vault>.vault.azure.net`` → Key Vault for that vault (see ``keyvault.py`` for why routing
   by Host header keeps real key IDs and the SDK's challenge check intact).
2. Host ``graph.microsoft.com`` → the few Graph calls the Azure CLI makes (``entra.graph``).
3. ``/{tenant}/v2.0/.well-known/openid-configuration`` and ``/{tenant}/oauth2/v2.0/token`` → Entra.
4. Any other path on ``login.microsoftonline.com`` → Entra's 404.
5. Everything else → ARM (bearer token of the fake required, except ``/metadata/endpoints``).

Links in answers (discovery's token endpoint, ``Azure-AsyncOperation``, the Key Vault challenge's
authority) name the host the client used: Azure's names on the public listener, the fake's address on
its own.

Faults injected with :meth:`FakeAzure.inject` (and :meth:`FakeAzure.inject_storm`) are answered before
routing and authentication, the way a gateway in front of the real service answers 429/503.
:meth:`FakeAzure.inject_lost_response` is the ambiguous kind: the request IS applied (a PUT launches
its operation and changes the eTag), but its response is lost on the way back (a gateway 504, a
connection closed without an answer, or no answer until the client gives up), so the client cannot
tell whether it was applied and its retry of the same ``If-Match`` PUT gets 412. ``set_lro(...,
fail_after_apply=True)`` is the other ambiguity: the KMS change reaches the API servers and the
operation still ends Failed. Accepted writes (2xx ARM PUTs and Key Vault
create/rotate/update) go to :attr:`FakeAzure.writes` and, when a state directory is given, to
``writes.jsonl`` there.

Threads: a ``ThreadingHTTPServer`` thread per connection, one serving thread, and one worker per
long-running operation. :meth:`FakeAzure.stop` stops the workers, shuts down open keep-alive
connections and joins every thread, so nothing is left behind. Request logging to stderr is off
unless ``AKS_KMS_FAKE_AZURE_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import trustme

from . import arm, entra, keyvault, roles
from .state import FakeState, Identity, RoleAssignment, User, Vault, cluster_key, new_etag, now_utc
from .wire import ApiError, Request, Response

log = logging.getLogger(__name__)

KmsHook = Callable[[str, dict[str, Any], dict[str, Any]], None]
DEBUG_ENV = "AKS_KMS_FAKE_AZURE_DEBUG"
LOGIN_HOST = "login.microsoftonline.com"
ARM_HOST = "management.azure.com"
# The fake's directory tenant, the same for every fake: a real vault host name belongs to exactly one
# tenant, and azure-keyvault caches each host's challenge (which names the tenant) for the whole process,
# so fakes of different tenants alive in one process (two labs, a test beside a lab) would send each
# other's Key Vault clients to a tenant their Entra ID does not know. Pass ``tenant_id`` for another one.
TENANT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
# The public host names the fake answers for (its certificate names them): Entra ID, ARM, Microsoft
# Graph and every vault. The lab's proxy (``aks_kms_lab.proxy``) lets CONNECT through to these only.
AZURE_HOSTS = (LOGIN_HOST, ARM_HOST, entra.GRAPH_HOST, "*.vault.azure.net")
_ENTRA_DISCOVERY = re.compile(r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration")
_ENTRA_TOKEN = re.compile(r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token")
_DEFAULT_FAULT_CODES = {
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass(frozen=True)
class WriteRecord:
    """One accepted write, as ARM or Key Vault would log it."""

    method: str
    host: str
    path: str
    status: int
    summary: dict[str, Any]
    time: dt.datetime


@dataclass(frozen=True)
class RequestRecord:
    method: str
    host: str
    path: str
    status: int
    injected: bool


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    retry_after: float | None
    body: Any
    hits: int = 0


@dataclass
class _LostResponse:
    method: str
    path: re.Pattern[str]
    mode: str  # "504" | "drop" | "hang"
    times: int
    hold_seconds: float
    hits: int = 0


LOST_RESPONSE_MODES = ("504", "drop", "hang")


@dataclass
class _Lro:
    thread: threading.Thread
    done: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, fake: FakeAzure, ssl_context: ssl.SSLContext, *, public_network: bool = False) -> None:
        self.fake = fake
        self.ssl_context = ssl_context
        self.public_network = public_network
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, addr = self.socket.accept()
        # Handshake in the connection's own thread so a slow client never stalls accept().
        tls = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self.sockets_lock:
            self.open_sockets.add(tls)
        return tls, addr

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if os.environ.get(DEBUG_ENV):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60  # an idle keep-alive connection holds a thread at most this long

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLError, OSError):
            self.close_connection = True
            raise

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get(DEBUG_ENV):
            sys.stderr.write(f"fake-azure: {format % args}\n")

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        request = Request(
            method=self.command,
            path=unquote(parts.path) or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            host=host,
            public_network=self.server.public_network,
        )
        response = self.server.fake._dispatch(request)
        if response.lost is not None:
            # Applied, but the client never hears back: hold (if asked), then close without a byte.
            if response.lost == "hang":
                self.server.fake._stopping.wait(response.hold_seconds)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = response.encoded()
        self.send_response(response.status)
        headers = {"Content-Type": "application/json; charset=utf-8", **response.headers}
        headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _serve


class FakeAzure:
    """Entra ID, ARM (AKS, Key Vault, identities, RBAC) and Key Vault keys on one HTTPS port.

    ``state_dir`` receives ``ca.pem`` and ``writes.jsonl`` (a temporary directory, removed on
    :meth:`stop`, when None). ``tenant_id`` is the directory's tenant (:data:`TENANT_ID` when None).
    All helper methods are thread-safe and may be called while serving.
    """

    def __init__(self, state_dir: Path | None = None, *, tenant_id: str | None = None) -> None:
        self._owns_dir = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="fake-azure-")) if state_dir is None else Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.tenant_id = tenant_id or TENANT_ID
        self.client_id = str(uuid.uuid4())
        self.client_secret = f"fake~{uuid.uuid4().hex}"
        self.principal_id = str(uuid.uuid4())  # the app's service principal object ID
        self._state = FakeState(self.tenant_id)
        self._state.clients[self.client_id] = (self.principal_id, self.client_secret)
        # A directory user for `az login --username --password` (the Azure docs' "signed-in user").
        self.user_name = "labuser@akskmslab.onmicrosoft.com"
        self.user_password = f"Lab~{uuid.uuid4().hex}"
        self.user_object_id = str(uuid.uuid4())
        self._state.users[self.user_name] = User(self.user_name, self.user_object_id, self.user_password)
        self._ca = trustme.CA()
        self.ca_pem_path = self.state_dir / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem_path))
        self._writes: list[WriteRecord] = []
        self._requests: list[RequestRecord] = []
        self._faults: list[_Fault] = []
        self._lost: list[_LostResponse] = []
        self._lros: list[_Lro] = []
        self._stopping = threading.Event()
        self._server: _Server | None = None  # the fake's own address: the cluster's side of a private link
        self._public: _Server | None = None  # the public network side, reached through the lab's proxy
        self._threads: list[threading.Thread] = []
        self.on_kms_change: KmsHook | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeAzure:
        if self._server is not None:
            return self
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost", *AZURE_HOSTS).configure_cert(ctx)
        self._stopping.clear()
        self._server = _Server(self, ctx)
        self._public = _Server(self, ctx, public_network=True)
        for server, name in ((self._server, "fake-azure"), (self._public, "fake-azure-public")):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for lro in list(self._lros):
            lro.thread.join(timeout=30)
        for server in (self._server, self._public):
            if server is not None:
                server.shutdown()
                server.close_open_connections()
                server.server_close()  # joins the connection threads
        self._server = self._public = None
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._owns_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> FakeAzure:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeAzure is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def public_port(self) -> int:
        """The listener that plays the public network: what the lab's proxy connects the Azure CLI to.

        Requests on it carry ``public_network`` (Key Vault applies its network rules); requests on
        :attr:`port` come from inside the cluster's private link (the KMS plugin, the operator).
        """
        if self._public is None:
            raise RuntimeError("FakeAzure is not started")
        return int(self._public.server_address[1])

    @property
    def authority(self) -> str:
        """Value for ``AZURE_AUTHORITY_HOST`` / ``authority=``."""
        return self.url

    # ------------------------------------------------------------------ seeding

    def add_identity(
        self,
        resource_id: str,
        principal_id: str | None = None,
        client_id: str | None = None,
        *,
        location: str = "westeurope",
    ) -> Identity:
        group = re.match(r"/subscriptions/([^/]+)/resourcegroups/([^/]+)/", resource_id, re.I)
        ident = Identity(
            resource_id=resource_id,
            principal_id=principal_id or str(uuid.uuid4()),
            client_id=client_id or str(uuid.uuid4()),
            tenant_id=self.tenant_id,
            location=location,
        )
        with self._state.lock:
            if group:
                self._state.ensure_group(group[1], group[2], location)
            self._state.identities[resource_id.lower()] = ident
        return ident

    def add_cluster(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        kubernetes_version: str = "1.35.4",
        identity_type: str = "UserAssigned",
        identity_id: str | None = None,
        api_server_vnet_integration: bool = False,
        location: str = "westeurope",
        kms: dict[str, Any] | None = None,
        infrastructure_encryption: str = "",
    ) -> dict[str, Any]:
        """Seed a managed cluster in state Succeeded. A missing user-assigned identity is created.
        ``infrastructure_encryption="Enabled"`` seeds it on the Managed KMS experience."""
        with self._state.lock:
            self._state.ensure_group(subscription_id, resource_group, location)
            if identity_type == "UserAssigned":
                identity_id = identity_id or (
                    f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
                    f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}-identity"
                )
                if identity_id.lower() not in self._state.identities:
                    self.add_identity(identity_id, location=location)
            obj = arm.make_cluster(
                self._state,
                subscription_id,
                resource_group,
                name,
                kubernetes_version=kubernetes_version,
                identity_type=identity_type,
                identity_id=identity_id or "",
                api_server_vnet_integration=api_server_vnet_integration,
                location=location,
            )
            if kms is not None:
                obj["properties"]["securityProfile"]["azureKeyVaultKms"] = {**arm.KMS_DEFAULTS, **kms}
            if infrastructure_encryption:
                obj["properties"]["securityProfile"]["kubernetesResourceObjectEncryptionProfile"] = {
                    "infrastructureEncryption": infrastructure_encryption}
            self._state.clusters[cluster_key(subscription_id, resource_group, name)] = obj
            return json.loads(json.dumps(obj))

    def add_vault(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        public_network_access: str = "Enabled",
        default_action: str = "Allow",
        bypass: str = "AzureServices",
        rbac: bool = True,
        soft_delete: bool = True,
        purge_protection: bool = True,
        tenant_id: str | None = None,
        access_policies: Iterable[tuple[str, Iterable[str]]] = (),
        location: str = "westeurope",
    ) -> str:
        """Seed a vault; returns its ARM resource ID. ``access_policies``: (object ID, key permissions)."""
        vault = Vault(
            subscription_id=subscription_id,
            resource_group=resource_group,
            name=name,
            location=location,
            tenant_id=tenant_id or self.tenant_id,
            public_network_access=public_network_access,
            default_action=default_action,
            bypass=bypass,
            rbac=rbac,
            soft_delete=soft_delete,
            purge_protection=purge_protection,
            access_policies=[(oid, tuple(perms)) for oid, perms in access_policies],
        )
        with self._state.lock:
            self._state.ensure_group(subscription_id, resource_group, location)
            self._state.vaults[name.lower()] = vault
        return vault.resource_id

    def grant_role(self, principal_id: str, scope: str, role_name: str) -> str:
        """Assign a built-in role; returns the role assignment's ARM ID."""
        role = roles.role_by_name(role_name)
        sub = re.match(r"/subscriptions/([^/]+)", scope, re.I)
        assignment = RoleAssignment(str(uuid.uuid4()), principal_id, scope, role, sub[1] if sub else "")
        with self._state.lock:
            self._state.assignments.append(assignment)
        return str(assignment.arm()["id"])

    def revoke_roles(self, principal_id: str) -> None:
        with self._state.lock:
            self._state.assignments = [a for a in self._state.assignments if a.principal_id != principal_id]

    def _vault_or_raise(self, vault_name: str) -> Vault:
        vault = self._state.vault(vault_name)
        if vault is None:
            raise KeyError(f"no vault {vault_name!r}; add it with add_vault first")
        return vault

    def create_key(
        self,
        vault_name: str,
        key_name: str,
        *,
        kty: str = "RSA",
        ops: Iterable[str] | None = None,
        expires_on: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
        enabled: bool = True,
        size: int = 2048,
    ) -> str:
        """Create a key (or a new version of it); returns the versioned key ID."""
        with self._state.lock:
            key = keyvault.new_version(
                self._vault_or_raise(vault_name),
                key_name,
                kty=kty,
                ops=tuple(ops) if ops is not None else None,
                size=size,
                enabled=enabled,
                expires_on=expires_on,
                not_before=not_before,
            )
            return key.kid

    def newest_key_version(self, key_url: str) -> str | None:
        """The newest enabled, valid version of the key a (versionless) URL names: the one AKS's Managed
        experience encrypts with once it has detected it. None when there is none."""
        m = re.fullmatch(r"https://([^./]+)\.[^/]+/keys/([A-Za-z0-9-]+)(?:/[0-9A-Fa-f]{32})?/?", key_url.strip())
        if not m:
            return None
        now = now_utc()
        with self._state.lock:
            usable = [k for k in self._state.key_versions(m[1], m[2])
                      if k.enabled and (k.expires_on is None or k.expires_on > now)
                      and (k.not_before is None or k.not_before <= now)]
            return usable[-1].kid if usable else None

    def new_key_version(self, vault_name: str, key_name: str, **kwargs: Any) -> str:
        """A new version with the same type and operations as the latest one, unless given."""
        with self._state.lock:
            latest = self._state.find_key(vault_name, key_name)
            if latest is None:
                raise KeyError(f"no key {key_name!r} in vault {vault_name!r}")
            kwargs.setdefault("kty", latest.kty)
            kwargs.setdefault("ops", latest.ops)
            return self.create_key(vault_name, key_name, **kwargs)

    _UNSET: Any = object()

    def set_key_attributes(
        self,
        kid: str,
        *,
        enabled: bool | None = None,
        expires_on: dt.datetime | Any | None = _UNSET,
        not_before: dt.datetime | Any | None = _UNSET,
    ) -> None:
        """Change a key version's attributes directly (``None`` clears a date)."""
        parts = urlsplit(kid)
        vault_name = keyvault.vault_name_of(parts.hostname or "") or ""
        segments = parts.path.strip("/").split("/")
        with self._state.lock:
            key = self._state.find_key(vault_name, segments[1], segments[2] if len(segments) > 2 else "")
            if key is None:
                raise KeyError(f"no key {kid}")
            if enabled is not None:
                key.enabled = enabled
            if expires_on is not self._UNSET:
                key.expires_on = expires_on
            if not_before is not self._UNSET:
                key.not_before = not_before
            key.updated = now_utc()

    def set_cluster(self, subscription_id: str, resource_group: str, name: str, **properties: Any) -> None:
        """Overwrite cluster ``properties`` fields (e.g. provisioningState) and bump the eTag."""
        with self._state.lock:
            obj = self._state.clusters[cluster_key(subscription_id, resource_group, name)]
            obj["properties"].update(json.loads(json.dumps(properties)))
            obj["eTag"] = new_etag()

    # ------------------------------------------------------------------ inspection

    def cluster(self, subscription_id: str, resource_group: str, name: str) -> dict[str, Any] | None:
        with self._state.lock:
            return self._state.snapshot_cluster(cluster_key(subscription_id, resource_group, name))

    @property
    def writes(self) -> list[WriteRecord]:
        with self._state.lock:
            return list(self._writes)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._state.lock:
            return list(self._requests)

    def clear_logs(self) -> None:
        with self._state.lock:
            self._writes.clear()
            self._requests.clear()

    def operation(self, operation_id: str) -> dict[str, Any] | None:
        with self._state.lock:
            op = self._state.operations.get(operation_id)
            return None if op is None else op.arm()

    # ------------------------------------------------------------------ behaviour control

    def inject(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next ``times`` requests matching method and path (``re.search``) with ``status``."""
        fault = _Fault(method.upper(), re.compile(path_regex), status, times, retry_after, body)
        with self._state.lock:
            self._faults.append(fault)

    def inject_storm(
        self,
        method: str,
        path_regex: str,
        status: int = 429,
        *,
        times: int = 5,
        retry_after: float | None = 1.0,
    ) -> None:
        """``times`` answers in a row of 429 (ARM throttling) or 409 (AKS: another operation is in
        progress), each with ``Retry-After``, before requests reach the service again."""
        if status == 409:
            body: Any = {"error": {"code": "OperationNotAllowed", "message": (
                "Operation is not allowed: Another operation (Updating) is in progress, please wait for it to "
                "finish before starting a new operation. See https://aka.ms/aks-pending-operation for more details")}}
        elif status == 429:
            body = {"error": {"code": "TooManyRequests", "message": (
                "The request is being throttled as the limit has been reached for operation type - Write_"
                "ObservationWindow_00:01:00. For more information, see - https://aka.ms/throttling")}}
        else:
            raise ValueError("a storm is of 409s or 429s")
        self.inject(method, path_regex, status, times=times, retry_after=retry_after, body=body)

    def inject_lost_response(
        self,
        method: str,
        path_regex: str,
        mode: str = "504",
        *,
        times: int = 1,
        hold_seconds: float = 30.0,
    ) -> None:
        """Apply the next ``times`` successful requests matching method and path (``re.search``), then
        lose their response: ``"504"`` answers 504 GatewayTimeout instead, ``"drop"`` closes the
        connection without answering, ``"hang"`` answers nothing for ``hold_seconds`` (longer than
        the client's read timeout) and then closes. The write log records the write (it happened),
        with ``responseLost`` in its summary."""
        if mode not in LOST_RESPONSE_MODES:
            raise ValueError(f"mode must be one of {LOST_RESPONSE_MODES}")
        lost = _LostResponse(method.upper(), re.compile(path_regex), mode, times, hold_seconds)
        with self._state.lock:
            self._lost.append(lost)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._faults.clear()
            self._lost.clear()

    def set_rotation_day_seconds(self, seconds: float) -> None:
        """Length in real seconds of one day of a Key Vault rotation policy (``P30D``…): the lab shortens
        Key Vault's clock so a test sees it rotate a key by itself (keyvault.rotate_due)."""
        with self._state.lock:
            self._state.rotation_day_seconds = float(seconds)

    def set_lro(
        self,
        seconds: float | None = None,
        fail_with: tuple[str, str] | None = None,
        *,
        fail_times: int = 1,
        fail_after_apply: bool = False,
    ) -> None:
        """``seconds``: duration of every following operation (kept). ``fail_with=(code, message)``:
        the next ``fail_times`` accepted operations end Failed with that error, before touching the
        API servers; with ``fail_after_apply`` they end Failed only after the KMS change was applied
        (AKS-sim rolled), ``fail_with`` defaulting to an internal error."""
        if fail_after_apply and fail_with is None:
            fail_with = ("InternalOperationError", "Reconciling the control plane failed after the update was "
                                                   "applied; retry the operation.")
        with self._state.lock:
            if seconds is not None:
                self._state.lro.seconds = seconds
            self._state.lro.fail_with = fail_with
            self._state.lro.fail_times = fail_times if fail_with is not None else 0
            self._state.lro.fail_after_apply = fail_after_apply and fail_with is not None

    def wait_idle(self, timeout: float = 30) -> None:
        """Block until every long-running operation has finished."""
        deadline = now_utc() + dt.timedelta(seconds=timeout)
        for lro in list(self._lros):
            remaining = (deadline - now_utc()).total_seconds()
            if not lro.done.wait(max(0.0, remaining)):
                raise TimeoutError("long-running operations still running")

    # ------------------------------------------------------------------ serving

    def _take_fault(self, request: Request) -> Response | None:
        for fault in self._faults:
            if fault.times <= 0 or fault.method not in (request.method, "*"):
                continue
            if not fault.path.search(request.path):
                continue
            fault.times -= 1
            fault.hits += 1
            body = fault.body
            if body is None:
                code = _DEFAULT_FAULT_CODES.get(fault.status, "InjectedFault")
                body = {"error": {"code": code, "message": f"Injected fault {fault.status} for {request.path}."}}
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return Response(fault.status, body, headers)
        return None

    def _take_lost(self, request: Request, response: Response) -> _LostResponse | None:
        if not 200 <= response.status < 300:
            return None
        for lost in self._lost:
            if lost.times > 0 and lost.method in (request.method, "*") and lost.path.search(request.path):
                lost.times -= 1
                lost.hits += 1
                return lost
        return None

    def _dispatch(self, request: Request) -> Response:
        with self._state.lock:
            injected = self._take_fault(request)
            if injected is not None:
                response = injected
            else:
                try:
                    response = self._route(request)
                except ApiError as err:
                    response = err.response()
                except Exception as exc:  # a bug in the fake must still answer like a server
                    response = ApiError(500, "InternalServerError", f"fake-azure error: {exc!r}").response()
            lost = self._take_lost(request, response) if injected is None else None
            seen = response.status if lost is None else (504 if lost.mode == "504" else 0)
            was_injected = injected is not None or lost is not None
            self._requests.append(RequestRecord(request.method, request.host, request.path, seen, was_injected))
            if response.write_summary is not None and 200 <= response.status < 300:
                summary = response.write_summary if lost is None else {**response.write_summary,
                                                                        "responseLost": lost.mode}
                record = WriteRecord(request.method, request.host, request.path, response.status, summary, now_utc())
                self._writes.append(record)
                self._persist(record)
            if lost is not None:
                if lost.mode == "504":
                    return Response(504, {"error": {"code": "GatewayTimeout", "message": (
                        "The gateway did not receive a response from 'Microsoft.ContainerService' within the "
                        "specified time period.")}})
                return Response(0, lost=lost.mode, hold_seconds=lost.hold_seconds)
            return response

    def _persist(self, record: WriteRecord) -> None:
        line = {**record.__dict__, "time": record.time.isoformat()}
        with (self.state_dir / "writes.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def _route(self, request: Request) -> Response:
        # Links in answers (token endpoint, operation URL, challenge authority) name the host the client
        # used: Azure's own names through the proxy, the fake's address otherwise.
        base = f"https://{request.host}" if request.public_network else self.url
        login = f"https://{LOGIN_HOST}" if request.public_network else self.url
        vault_name = keyvault.vault_name_of(request.host)
        if vault_name is not None:
            return keyvault.handle(self._state, login, vault_name, request)
        if request.host == entra.GRAPH_HOST:
            return entra.graph(self._state, request)
        if m := _ENTRA_DISCOVERY.fullmatch(request.path):
            return entra.discovery(base, m["tenant"])
        if (m := _ENTRA_TOKEN.fullmatch(request.path)) and request.method == "POST":
            return entra.token(self._state, m["tenant"], request)
        if request.public_network and request.host == LOGIN_HOST:
            return entra.other(base, request)
        return arm.handle(self._state, base, request, self._launch)

    # ------------------------------------------------------------------ long-running operations

    def _launch(self, plan: arm.LroPlan) -> None:
        lro = _Lro(thread=threading.Thread(target=lambda: None))
        lro.thread = threading.Thread(
            target=self._run_operation, args=(plan, lro), name=f"fake-azure-lro-{plan.operation.id[:8]}", daemon=True
        )
        self._lros = [x for x in self._lros if not x.done.is_set()] + [lro]
        lro.thread.start()

    def _run_operation(self, plan: arm.LroPlan, lro: _Lro) -> None:
        try:
            with self._state.lock:
                seconds = self._state.lro.seconds
            self._stopping.wait(seconds)
            failure = plan.failure
            hook = self.on_kms_change
            if failure is None and hook is not None and plan.old_kms != plan.new_kms and not self._stopping.is_set():
                try:
                    hook(plan.operation.cluster_key, dict(plan.old_kms), dict(plan.new_kms))
                except Exception as exc:
                    log.warning("cluster %s: the KMS change failed on the control plane", plan.operation.cluster_key,
                                exc_info=True)
                    failure = ("InternalOperationError", f"Reconciling KMS on the control plane failed: {exc}")
            if failure is None:
                failure = plan.failure_after_apply  # applied, and Failed all the same
            self._finish(plan, failure)
        finally:
            lro.done.set()

    def _finish(self, plan: arm.LroPlan, failure: tuple[str, str] | None) -> None:
        op = plan.operation
        with self._state.lock:
            op.status = "Failed" if failure else "Succeeded"
            if failure:  # ARM clients read it from the operation; the lab's log keeps it for people
                log.warning("cluster %s: operation %s ended Failed: %s: %s", op.cluster_key, op.id, *failure)
            op.error = {"code": failure[0], "message": failure[1]} if failure else None
            op.ended = now_utc()
            obj = self._state.clusters.get(op.cluster_key)
            if obj is not None:
                obj["properties"]["provisioningState"] = op.status
                obj["eTag"] = new_etag()
            if self._state.busy.get(op.cluster_key) == op.id:
                del self._state.busy[op.cluster_key]
