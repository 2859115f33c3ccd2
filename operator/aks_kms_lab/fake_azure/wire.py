"""Request and response values shared by the Entra, ARM and Key Vault handlers.

The handlers are plain functions from :class:`Request` to :class:`Response`, so the HTTP plumbing
(TLS, threads, fault injection) lives in one place (``server.py``) and each service module reads like
the API it imitates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string, percent-decoded
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    host: str  # Host header without the port, lower-case
    # True when the request reached the fake from the public network (the lab's proxy, what the Azure CLI
    # on the host uses); False on the fake's own address, which models the cluster's private link (the
    # KMS plugin and the in-cluster operator). Key Vault's network rules apply only to the former.
    public_network: bool = False

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body)


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-serialisable, or bytes sent as is
    headers: dict[str, str] = field(default_factory=dict)
    # What the write log records for an accepted write; None means "not a write".
    write_summary: dict[str, Any] | None = None
    # Set by an injected lost response: "drop" (close without answering) or "hang" (answer nothing
    # for a while, then close). The request was applied all the same.
    lost: str | None = None
    hold_seconds: float = 0.0

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


class ApiError(Exception):
    """Raised by handlers to answer with an Azure-shaped error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        inner_code: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.inner_code = inner_code

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return Response(self.status, {"error": error}, dict(self.headers))


def json_body(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "InvalidRequestContent", f"The request content was invalid: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return body
