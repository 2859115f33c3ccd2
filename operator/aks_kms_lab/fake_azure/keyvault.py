"""Key Vault keys data plane: challenge auth, keys and versions, attributes, real RSA crypto.

Routing: every vault is served on the fake's one port, selected by the **Host header**
``<vault>.vault.azure.net``. Clients keep real-looking vault URLs (``https://<vault>.vault.azure.net``),
so key IDs, the ``kid`` of responses and the SHA-256 that AKS's plugin derives from them are the same
as in Azure, and azure-keyvault-keys' challenge-resource check (``resource="https://vault.azure.net"``
must be a parent of the vault host) passes unchanged. Only the TCP connection is redirected: the
operator's ``KeyVaultRedirectTransport`` (configured by ``AKS_KMS_KEYVAULT_ENDPOINT``) sends to
``https://127.0.0.1:PORT`` while keeping ``Host: <vault>.vault.azure.net``; TLS is verified against
127.0.0.1, which is what the fake's certificate names. A plain client can do the same with
``curl --resolve`` or by setting the Host header.

Served (any api-version): ``POST /keys/{n}/create``, ``POST /keys/{n}/rotate``,
``GET|PUT /keys/{n}/rotationpolicy``, ``GET /keys``,
``GET /keys/{n}[/]`` (latest), ``GET /keys/{n}/versions``, ``GET|PATCH /keys/{n}/{v}``,
``POST /keys/{n}/{v}/encrypt|decrypt|wrapkey|unwrapkey`` with RSA-OAEP-256, RSA-OAEP and RSA1_5.

Refusals use Key Vault's shapes: no token → 401 plus the ``WWW-Authenticate`` challenge; unknown key
→ 404 ``KeyNotFound``; reading a disabled version → 403 ``Forbidden``/``KeyDisabled``; crypto on a
disabled, expired or not-yet-valid version → 403 ``Forbidden`` with inner ``KeyDisabled``,
``KeyExpired`` (message "Operation encrypt is not allowed on an expired key.") or ``KeyNotYetValid``.
Listing versions works on disabled keys (it carries no key material), as in Azure.

Rotation policies behave as Key Vault's: a ``Rotate`` lifetime action triggered ``timeAfterCreate``
(age of the newest version) or ``timeBeforeExpiry`` creates a new version by itself, dated when it
fell due, and ``attributes.expiryTime`` dates the expiry of every version a rotation creates (manual
or automatic). Key Vault acts on its own clock; the fake does so whenever it serves a request
(:func:`rotate_due`), which no client can tell apart. ``FakeState.rotation_day_seconds`` is the length
of a policy day (86400 unless a lab shortens it).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from . import entra
from .state import KV_SUFFIX, FakeState, KeyVersion, Token, Vault, b64url, b64url_decode, epoch, now_utc
from .wire import ApiError, Request, Response, json_body

KV_AUDIENCE = "https://vault.azure.net"
RSA_OPS = ("encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify")
EC_OPS = ("sign", "verify")
_CRYPTO_OPS = {"encrypt": "encrypt", "decrypt": "decrypt", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
_NAME = r"[A-Za-z0-9-]{1,127}"
_VERSION = r"[0-9A-Fa-f]{32}"


def vault_name_of(host: str) -> str | None:
    host = host.lower()
    suffix = "." + KV_SUFFIX
    return host[: -len(suffix)] if host.endswith(suffix) and "." not in host[: -len(suffix)] else None


def generate_key(kty: str, size: int = 2048) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kty.startswith("RSA"):
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if kty.startswith("EC"):
        return ec.generate_private_key(ec.SECP256R1())
    raise ApiError(400, "BadParameter", f"Key type {kty!r} is not supported by this fake (RSA, EC).")


def new_version(
    vault: Vault,
    name: str,
    *,
    kty: str = "RSA",
    ops: tuple[str, ...] | None = None,
    size: int = 2048,
    enabled: bool = True,
    expires_on: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> KeyVersion:
    base = "RSA" if kty.startswith("RSA") else "EC"
    key = KeyVersion(
        vault=vault.name.lower(),
        name=name,
        version=uuid.uuid4().hex,
        kty=base,
        ops=tuple(ops) if ops else (RSA_OPS if base == "RSA" else EC_OPS),
        private_key=generate_key(base, size),
        enabled=enabled,
        expires_on=expires_on,
        not_before=not_before,
    )
    vault.keys.setdefault(name.lower(), []).append(key)
    return key


def _time(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(int(value), dt.UTC)


def apply_attributes(key: KeyVersion, attrs: dict[str, Any]) -> None:
    if "enabled" in attrs and attrs["enabled"] is not None:
        key.enabled = bool(attrs["enabled"])
    if "exp" in attrs:
        key.expires_on = _time(attrs["exp"])
    if "nbf" in attrs:
        key.not_before = _time(attrs["nbf"])
    key.updated = now_utc()


def challenge_header(base_url: str, tenant_id: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer authorization="{base_url}/{tenant_id}", resource="{KV_AUDIENCE}"'}


def _not_found(name: str, version: str = "") -> ApiError:
    ident = f"{name}/{version}" if version else name
    return ApiError(
        404,
        "KeyNotFound",
        f"A key with (name/id) {ident} was not found in this key vault. If you recently deleted this key you "
        "may be able to recover it using the correct recovery command. For help resolving this issue, please "
        "see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def refusal(key: KeyVersion, operation: str, now: dt.datetime) -> ApiError | None:
    """Key Vault's answer to an operation on a key that is not usable now, or None."""
    if not key.enabled:
        return ApiError(
            403, "Forbidden", f"Operation {operation} is not allowed on a disabled key.", inner_code="KeyDisabled"
        )
    if key.expires_on is not None and key.expires_on <= now:
        return ApiError(
            403, "Forbidden", f"Operation {operation} is not allowed on an expired key.", inner_code="KeyExpired"
        )
    if key.not_before is not None and key.not_before > now:
        return ApiError(
            403,
            "Forbidden",
            f"Operation {operation} is not allowed before the key's activation date.",
            inner_code="KeyNotYetValid",
        )
    return None


def network_refusal(vault: Vault, token: Token, tenant_id: str) -> ApiError | None:
    """Key Vault's 403 to a caller on the public network when the vault's network rules shut it out.

    Public network access Disabled admits only approved private links (``ForbiddenByConnection``); a
    firewall with default action Deny admits only listed addresses and, with the AzureServices bypass,
    trusted Microsoft services, neither of which a client on the host is (``ForbiddenByFirewall``).
    The lab's private link is the fake's own address, where the KMS plugin and the operator connect.
    """
    caller = f"appid={token.client_id};oid={token.principal_id};iss=https://sts.windows.net/{tenant_id}/"
    where = f"Vault: {vault.name};location={vault.location}"
    if vault.public_network_access == "Disabled":
        return ApiError(
            403,
            "Forbidden",
            "Public network access is disabled and request is not from a trusted service nor via an approved "
            f"private link.\r\nCaller: {caller}\r\n{where}",
            inner_code="ForbiddenByConnection",
        )
    if vault.default_action == "Deny":
        return ApiError(
            403,
            "Forbidden",
            "Client address is not authorized and caller is not a trusted service.\r\nClient address: 127.0.0.1"
            f"\r\nCaller: {caller}\r\n{where}",
            inner_code="ForbiddenByFirewall",
        )
    return None


def _padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA-OAEP-256":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    if alg == "RSA-OAEP":
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    raise ApiError(400, "BadParameter", f"Invalid algorithm {alg!r}; expected RSA-OAEP-256, RSA-OAEP or RSA1_5.")


def crypto(key: KeyVersion, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """Real RSA: encrypt/wrap with the public key, decrypt/unwrap with the private key."""
    if key.kty != "RSA" or not isinstance(key.private_key, rsa.RSAPrivateKey):
        raise ApiError(400, "BadParameter", f"Operation {operation} is not supported for key type {key.kty}.")
    if operation not in key.ops:
        raise ApiError(
            403,
            "Forbidden",
            f"Operation {operation} is not permitted for this key.",
            inner_code="KeyOperationForbidden",
        )
    pad = _padding(str(body.get("alg", "")))
    try:
        value = b64url_decode(str(body.get("value", "")))
    except ValueError:
        raise ApiError(400, "BadParameter", "value must be base64url encoded.") from None
    if operation in ("encrypt", "wrapKey"):
        out = key.private_key.public_key().encrypt(value, pad)
    else:
        try:
            out = key.private_key.decrypt(value, pad)
        except ValueError:
            raise ApiError(400, "BadParameter", "Unable to decrypt the value with this key.") from None
    return {"kid": key.kid, "value": b64url(out)}


_ISO_DURATION = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")


def policy_duration(text: str, day_seconds: float) -> dt.timedelta:
    """An ISO 8601 duration of a rotation policy (``P90D``, ``P1Y``, ``P2M``, ``PT12H``) in real time,
    a policy day lasting ``day_seconds`` (Key Vault counts a year as 365 days, a month as 30)."""
    m = _ISO_DURATION.fullmatch(str(text or ""))
    if not m or text in ("P", "PT") or not any(m.groups()):
        raise ApiError(400, "BadParameter", f"Invalid ISO 8601 duration {text!r} in the rotation policy.")
    y, mo, w, d, h, mi, sec = (int(g or 0) for g in m.groups())
    days = y * 365 + mo * 30 + w * 7 + d + (h * 3600 + mi * 60 + sec) / 86400
    return dt.timedelta(seconds=days * day_seconds)


def _policy_body(vault: Vault, name: str, stored: dict[str, Any] | None) -> dict[str, Any]:
    """GET rotationpolicy: the stored policy, or Key Vault's default (notify 30 days before expiry)."""
    ident = f"https://{vault.name.lower()}.{KV_SUFFIX}/keys/{name}/rotationpolicy"
    if stored is None:
        return {"id": ident, "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"},
                                                  "action": {"type": "Notify"}}],
                "attributes": {"created": None, "updated": None}}
    return {"id": ident, **stored}


def _put_policy(state: FakeState, vault: Vault, name: str, body: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    actions = body.get("lifetimeActions") or []
    for action in actions:
        kind = str((action.get("action") or {}).get("type", "")).lower()
        trigger = action.get("trigger") or {}
        if kind not in ("rotate", "notify"):
            raise ApiError(400, "BadParameter", f"Unknown lifetime action type {kind!r} (Rotate, Notify).")
        given = [k for k in ("timeAfterCreate", "timeBeforeExpiry") if trigger.get(k)]
        if len(given) != 1:
            raise ApiError(400, "BadParameter", "A lifetime action's trigger needs exactly one of timeAfterCreate "
                                                "and timeBeforeExpiry.")
        policy_duration(trigger[given[0]], state.rotation_day_seconds)
    attrs = dict(body.get("attributes") or {})
    if attrs.get("expiryTime"):
        policy_duration(attrs["expiryTime"], state.rotation_day_seconds)
    old = vault.rotation_policies.get(name.lower())
    created = (old or {}).get("attributes", {}).get("created") or epoch(now)
    stored = {"lifetimeActions": actions,
              "attributes": {**({"expiryTime": attrs["expiryTime"]} if attrs.get("expiryTime") else {}),
                             "created": created, "updated": epoch(now)}}
    vault.rotation_policies[name.lower()] = stored
    return stored


def _rotate(state: FakeState, vault: Vault, name: str, current: KeyVersion, at: dt.datetime) -> KeyVersion:
    """A new version like ``current``, created ``at``; the policy's expiryTime dates its expiry."""
    key = new_version(vault, name, kty=current.kty, ops=current.ops)
    key.created = key.updated = at
    expiry = ((vault.rotation_policies.get(name.lower()) or {}).get("attributes") or {}).get("expiryTime")
    if expiry:
        key.expires_on = at + policy_duration(expiry, state.rotation_day_seconds)
    return key


def _due(state: FakeState, policy: dict[str, Any], latest: KeyVersion) -> dt.datetime | None:
    """When the policy's Rotate action falls due for the newest version ``latest`` (earliest trigger)."""
    times: list[dt.datetime] = []
    for action in policy.get("lifetimeActions") or []:
        if str((action.get("action") or {}).get("type", "")).lower() != "rotate":
            continue
        trigger = action.get("trigger") or {}
        if trigger.get("timeAfterCreate"):
            times.append(latest.created + policy_duration(trigger["timeAfterCreate"], state.rotation_day_seconds))
        elif trigger.get("timeBeforeExpiry") and latest.expires_on is not None:
            times.append(latest.expires_on - policy_duration(trigger["timeBeforeExpiry"], state.rotation_day_seconds))
    return min(times) if times else None


def rotate_due(state: FakeState, now: dt.datetime | None = None, *, limit: int = 50) -> list[str]:
    """Every rotation Key Vault's own clock would have made by ``now``; returns the new key IDs.

    Each new version is dated when it fell due, so a version that falls due again later (a short
    timeAfterCreate) rotates again, as Key Vault would have. Call with ``state.lock`` held."""
    now = now or now_utc()
    made: list[str] = []
    for vault in state.vaults.values():
        for name, policy in vault.rotation_policies.items():
            versions = vault.keys.get(name)
            while versions and len(made) < limit:
                latest = versions[-1]
                due = _due(state, policy, latest)
                if due is None or due > now:
                    break
                made.append(_rotate(state, vault, latest.name, latest, max(due, latest.created)).kid)
    return made


def handle(state: FakeState, base_url: str, vault_name: str, request: Request) -> Response:
    """Serve one Key Vault request for ``vault_name``. Call with ``state.lock`` held."""
    challenge = challenge_header(base_url, state.tenant_id)
    token = entra.bearer(state, request)
    if request.header("authorization") == "":
        return Response(
            401,
            {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}},
            challenge,
        )
    if token is None or token.audience.rstrip("/") != KV_AUDIENCE:
        raise ApiError(401, "Unauthorized", "AKV10022: Invalid audience or expired token.", headers=challenge)
    vault = state.vault(vault_name)
    if vault is None:
        # A vault that does not exist has no DNS name in Azure; the closest HTTP answer is 404.
        raise ApiError(404, "VaultNotFound", f"The vault {vault_name} does not exist.")
    if request.public_network:
        blocked = network_refusal(vault, token, state.tenant_id)
        if blocked is not None:
            raise blocked
    path, method, now = request.path.rstrip("/"), request.method, now_utc()
    rotate_due(state, now)

    if method == "GET" and path == "/keys":
        latest = [versions[-1] for versions in vault.keys.values() if versions]
        items = [{"kid": k.kid.rsplit("/", 1)[0], "attributes": k.attributes(), "tags": {}} for k in latest]
        return Response(200, {"value": items, "nextLink": None})

    if m := re.fullmatch(rf"/keys/({_NAME})/create", path):
        if method != "POST":
            raise ApiError(405, "MethodNotAllowed", "Use POST.")
        body = json_body(request)
        attrs = body.get("attributes") or {}
        key = new_version(
            vault,
            m[1],
            kty=str(body.get("kty", "RSA")),
            ops=tuple(body["key_ops"]) if body.get("key_ops") else None,
            size=int(body.get("key_size") or 2048),
        )
        apply_attributes(key, attrs)
        return Response(200, key.bundle(), write_summary={"op": "create", "kid": key.kid, "kty": key.kty})

    if (m := re.fullmatch(rf"/keys/({_NAME})/rotate", path)) and method == "POST":
        current = state.find_key(vault.name, m[1])
        if current is None:
            raise _not_found(m[1])
        key = _rotate(state, vault, current.name, current, now)
        return Response(200, key.bundle(), write_summary={"op": "rotate", "kid": key.kid})

    if m := re.fullmatch(rf"/keys/({_NAME})/rotationpolicy", path):
        if state.find_key(vault.name, m[1]) is None:
            raise _not_found(m[1])
        if method == "GET":
            return Response(200, _policy_body(vault, m[1], vault.rotation_policies.get(m[1].lower())))
        if method == "PUT":
            stored = _put_policy(state, vault, m[1], json_body(request), now)
            return Response(200, _policy_body(vault, m[1], stored),
                            write_summary={"op": "rotationpolicy", "key": m[1],
                                           "lifetimeActions": stored["lifetimeActions"]})
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a rotation policy.")

    if (m := re.fullmatch(rf"/keys/({_NAME})/versions", path)) and method == "GET":
        versions = state.key_versions(vault.name, m[1])
        if not versions:
            raise _not_found(m[1])
        return Response(200, {"value": [k.item() for k in versions], "nextLink": None})

    if m := re.fullmatch(rf"/keys/({_NAME})(?:/({_VERSION}))?", path):
        name, version = m[1], (m[2] or "")
        key = state.find_key(vault.name, name, version)
        if key is None:
            raise _not_found(name, version)
        if method == "GET":
            if not key.enabled:
                raise ApiError(
                    403, "Forbidden", "Operation get is not allowed on a disabled key.", inner_code="KeyDisabled"
                )
            return Response(200, key.bundle())
        if method == "PATCH":
            body = json_body(request)
            if body.get("key_ops"):
                key.ops = tuple(body["key_ops"])
            apply_attributes(key, body.get("attributes") or {})
            summary = {"op": "update", "kid": key.kid, "attributes": body.get("attributes") or {}}
            return Response(200, key.bundle(), write_summary=summary)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a key.")

    if (m := re.fullmatch(rf"/keys/({_NAME})/({_VERSION})/(encrypt|decrypt|wrapkey|unwrapkey)", path.lower())) and (
        method == "POST"
    ):
        operation = _CRYPTO_OPS[m[3]]
        key = state.find_key(vault.name, m[1], m[2])
        if key is None:
            raise _not_found(m[1], m[2])
        problem = refusal(key, operation, now)
        if problem is not None:
            raise problem
        return Response(200, crypto(key, operation, json_body(request)))

    raise ApiError(404, "NotFound", f"No Key Vault route for {method} {request.path}.")


__all__ = ["KV_AUDIENCE", "handle", "new_version", "policy_duration", "refusal", "rotate_due", "vault_name_of"]
