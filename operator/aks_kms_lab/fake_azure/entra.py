"""Entra ID (v2.0 endpoints): OpenID discovery and the token endpoint; a little of Microsoft Graph.

Application flows served, both ``grant_type=client_credentials``:

* client secret (``ClientSecretCredential`` through MSAL): the app registered as
  ``fake.client_id``/``fake.client_secret``. A wrong secret gets Entra's ``invalid_client`` /
  AADSTS7000215, an unknown client ``unauthorized_client`` / AADSTS700016.
* workload identity (``WorkloadIdentityCredential``): ``client_assertion`` of type jwt-bearer for the
  app or for any user-assigned identity's client ID (on AKS the pod federates to the UAMI). The
  assertion must look like a JWT; its signature is not checked (the lab's token file is not signed
  by a real issuer), but an ``aud`` other than ``api://AzureADTokenExchange`` is refused.

User flows, through the Azure CLI's public client only: ``password`` (``az login -u -p``) for the
lab's users (``FakeAzure.user_name``/``user_password``; a wrong password gets AADSTS50126) and
``refresh_token``; the tenants ``organizations`` and ``common`` stand for the lab's one tenant.

Tokens are opaque random strings remembered with their audience, so ARM accepts only ARM tokens
and Key Vault only Key Vault tokens, as the real services do.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qs

from .state import FakeState, Token, b64url, b64url_decode, now_utc
from .wire import Request, Response

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = dt.timedelta(hours=1)


def _aad_error(status: int, error: str, code: int, description: str) -> Response:
    trace = uuid.uuid4()
    stamp = now_utc().strftime("%Y-%m-%d %H:%M:%SZ")
    return Response(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": str(trace),
            "correlation_id": str(uuid.uuid4()),
        },
    )


def discovery(base_url: str, tenant: str) -> Response:
    return Response(
        200,
        {
            "token_endpoint": f"{base_url}/{tenant}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base_url}/{tenant}/oauth2/v2.0/authorize",
            "issuer": f"{base_url}/{tenant}/v2.0",
            "jwks_uri": f"{base_url}/{tenant}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "token"],
            "tenant_region_scope": "EU",
        },
    )


def _scope_audience(scope: str) -> str:
    first = scope.split()[0] if scope.split() else ""
    return first.removesuffix("/.default").rstrip("/")


def _assertion_problem(assertion: str) -> str | None:
    parts = assertion.strip().split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return "JWT token is invalid or malformed."
    try:
        payload = json.loads(b64url_decode(parts[1]))
    except ValueError:
        return "JWT token is invalid or malformed."
    aud = payload.get("aud") if isinstance(payload, dict) else None
    auds = aud if isinstance(aud, list) else [aud]
    if aud is not None and "api://AzureADTokenExchange" not in auds:
        return "Invalid audience in client assertion: expected api://AzureADTokenExchange."
    return None


def token(state: FakeState, tenant: str, request: Request) -> Response:
    form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
    user_flow = form.get("grant_type") in ("password", "refresh_token")
    if user_flow and tenant.lower() in ("organizations", "common"):
        tenant = state.tenant_id  # a user's home tenant: the lab has one
    if tenant.lower() != state.tenant_id.lower():
        return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
    if user_flow:
        return _user_token(state, form)
    if form.get("grant_type") != "client_credentials":
        return _aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
    client_id = form.get("client_id", "")
    scope = form.get("scope", "")
    if not scope:
        return _aad_error(400, "invalid_request", 900144, "The request body must contain the parameter: 'scope'.")
    known = state.clients.get(client_id)
    identity = next((i for i in state.identities.values() if i.client_id == client_id), None)
    if known is None and identity is None:
        return _aad_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
        )
    if "client_assertion" in form:
        if form.get("client_assertion_type") != JWT_BEARER:
            return _aad_error(400, "invalid_request", 50027, "Invalid client assertion type.")
        problem = _assertion_problem(form["client_assertion"])
        if problem:
            return _aad_error(400, "invalid_client", 50027, problem)
    elif "client_secret" in form:
        expected = known[1] if known else None
        if expected is None or not secrets.compare_digest(form["client_secret"], expected):
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{client_id}'.",
            )
    else:
        return _aad_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    principal = known[0] if known else identity.principal_id  # type: ignore[union-attr]
    access = secrets.token_urlsafe(32)
    state.tokens[access] = Token(client_id, principal, _scope_audience(scope), now_utc() + TOKEN_LIFETIME)
    seconds = int(TOKEN_LIFETIME.total_seconds())
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": seconds,
        "ext_expires_in": seconds,
        "access_token": access,
    }
    return Response(200, body)


# The Azure CLI's own public client (first-party; every tenant knows it).
PUBLIC_CLIENTS = {"04b07795-8ddb-461a-bbee-02f9e1bf7b46": "Microsoft Azure CLI"}
_OIDC_SCOPES = frozenset({"openid", "profile", "offline_access"})


def _unsigned_jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return b64url(json.dumps(obj).encode())

    return f"{part({'typ': 'JWT', 'alg': 'RS256', 'kid': 'lab'})}.{part(claims)}.{b64url(b'lab-unsigned')}"


def _user_token(state: FakeState, form: dict[str, str]) -> Response:
    """Password (ROPC) and refresh-token grants for the lab's users through a public client.

    This is what ``az login --username --password`` and every later token of that login use. The answer
    carries what MSAL keeps: a refresh token, an ID token (unsigned: MSAL does not validate it, and the
    fake is no identity provider) and ``client_info`` (the account's home object and tenant IDs).
    """
    client_id = form.get("client_id", "")
    if client_id not in PUBLIC_CLIENTS:
        return _aad_error(400, "unauthorized_client", 700016, f"Application with identifier '{client_id}' was "
                                                              f"not found in the directory '{state.tenant_id}'.")
    if form["grant_type"] == "password":
        user = state.users.get(form.get("username", "").lower())
        if user is None or not secrets.compare_digest(form.get("password", ""), user.password):
            return _aad_error(400, "invalid_grant", 50126,
                              "Error validating credentials due to invalid username or password.")
    else:
        upn = state.refresh_tokens.get(form.get("refresh_token", ""))
        user = state.users.get(upn or "")
        if user is None:
            return _aad_error(400, "invalid_grant", 70008, "The provided authorization code or refresh token has "
                                                           "expired due to inactivity. Send a new interactive "
                                                           "authorization request for this user and resource.")
    scopes = form.get("scope", "").split()
    resource = [sc for sc in scopes if sc not in _OIDC_SCOPES]
    if not resource:
        return _aad_error(400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not "
                                                       "valid: name one resource (e.g. https://management.core."
                                                       "windows.net//.default).")
    now = now_utc()
    access = secrets.token_urlsafe(32)
    state.tokens[access] = Token(client_id, user.object_id, _scope_audience(resource[0]), now + TOKEN_LIFETIME)
    refresh = secrets.token_urlsafe(48)
    state.refresh_tokens[refresh] = user.user_principal_name.lower()
    seconds = int(TOKEN_LIFETIME.total_seconds())
    id_token = _unsigned_jwt({
        "aud": client_id, "iss": f"https://login.microsoftonline.com/{state.tenant_id}/v2.0",
        "iat": int(now.timestamp()), "nbf": int(now.timestamp()), "exp": int((now + TOKEN_LIFETIME).timestamp()),
        "name": user.display_name, "oid": user.object_id, "preferred_username": user.user_principal_name,
        "sub": user.object_id, "tid": state.tenant_id, "ver": "2.0",
    })
    client_info = b64url(json.dumps({"uid": user.object_id, "utid": state.tenant_id}).encode())
    return Response(200, {
        "token_type": "Bearer", "scope": " ".join(scopes), "expires_in": seconds, "ext_expires_in": seconds,
        "access_token": access, "refresh_token": refresh, "id_token": id_token, "client_info": client_info,
    })


def bearer(state: FakeState, request: Request) -> Token | None:
    """The valid token of a request, or None (missing, unknown or expired)."""
    header = request.header("authorization")
    if not header.lower().startswith("bearer "):
        return None
    tok = state.tokens.get(header[7:].strip())
    if tok is None or tok.expires <= now_utc():
        return None
    return tok


# ------------------------------------------------------------------------------- Microsoft Graph

GRAPH_HOST = "graph.microsoft.com"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
_ME_ONLY_DELEGATED = "/me request is only valid with delegated authentication flow."


def _graph_error(status: int, code: str, message: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message,
                                       "innerError": {"date": now_utc().isoformat(), "request-id": str(uuid.uuid4())}}})


def _principals(state: FakeState) -> dict[str, dict[str, Any]]:
    """Object ID → Graph service principal stub: the lab's app and every user-assigned identity."""
    out: dict[str, dict[str, Any]] = {}
    for client_id, (principal_id, _secret) in state.clients.items():
        out[principal_id] = {"id": principal_id, "appId": client_id, "displayName": "aks-kms-lab",
                             "servicePrincipalType": "Application", "servicePrincipalNames": [client_id]}
    for ident in state.identities.values():
        name = ident.resource_id.rsplit("/", 1)[-1]
        out[ident.principal_id] = {"id": ident.principal_id, "appId": ident.client_id, "displayName": name,
                                   "servicePrincipalType": "ManagedIdentity",
                                   "servicePrincipalNames": [ident.client_id, ident.resource_id]}
    found = {oid: {"@odata.type": "#microsoft.graph.servicePrincipal", **sp} for oid, sp in out.items()}
    found.update({u.object_id: u.graph() for u in state.users.values()})
    return found


def graph(state: FakeState, request: Request) -> Response:
    """The few Microsoft Graph calls the Azure CLI makes around role assignments and vaults.

    ``GET /v1.0/me`` answers a service principal's token as Graph does (400: only valid with delegated
    authentication), since the lab signs in service principals only; ``POST
    /v1.0/directoryObjects/getByIds`` and ``GET /v1.0/servicePrincipals[/{id}|?$filter=…]`` resolve the
    lab's app and its user-assigned identities. Anything else is 404.
    """
    tok = bearer(state, request)
    if tok is None or tok.audience.rstrip("/") != GRAPH_AUDIENCE:
        return _graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.")
    path = request.path.rstrip("/")
    principals = _principals(state)
    if path == "/v1.0/me" and request.method == "GET":
        user = next((u for u in state.users.values() if u.object_id == tok.principal_id), None)
        if user is None:  # an application's token: Graph has no "me" for it
            return _graph_error(400, "BadRequest", _ME_ONLY_DELEGATED)
        return Response(200, {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                              **{k: v for k, v in user.graph().items() if k != "@odata.type"}})
    if path == "/v1.0/directoryObjects/getByIds" and request.method == "POST":
        try:
            ids = json.loads(request.body or b"{}").get("ids") or []
        except ValueError:
            return _graph_error(400, "BadRequest", "Invalid JSON body.")
        return Response(200, {"value": [principals[i] for i in ids if i in principals]})
    if path == "/v1.0/servicePrincipals" and request.method == "GET":
        wanted = request.query.get("$filter", "")
        found = [sp for sp in principals.values() if "servicePrincipalNames" in sp and (
            not wanted or any(f"'{n}'".lower() in wanted.lower() for n in sp["servicePrincipalNames"]))]
        return Response(200, {"value": found})
    if path.startswith("/v1.0/servicePrincipals/") and request.method == "GET":
        sp = principals.get(path.rsplit("/", 1)[-1])
        if sp is None:
            return _graph_error(404, "Request_ResourceNotFound", f"Resource '{path.rsplit('/', 1)[-1]}' does not "
                                                                 "exist or one of its queried reference-property "
                                                                 "objects are not present.")
        return Response(200, sp)
    return _graph_error(404, "UnknownError", f"{request.method} {request.path} is not served by the lab's Graph.")


def other(base_url: str, request: Request) -> Response:
    """Any other path on login.microsoftonline.com: Entra's 404, naming the path."""
    return _aad_error(404, "invalid_request", 90002, f"{request.method} {request.path} is not served by the lab "
                                                      f"({base_url}).")
