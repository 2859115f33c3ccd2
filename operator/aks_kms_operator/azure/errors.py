"""The few Azure failures the reconciler distinguishes, mapped from azure-core exceptions.

The planner and the kopf handlers never see an SDK exception: they need only to know whether to
read again (conflict), wait (throttled, transient), stop and tell a human (rejected), or treat a
thing as absent (not found). Keeping the mapping in one function means one place to fix when an
SDK changes its exception types.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from azure.core.exceptions import AzureError as _SdkError
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)


class AzureGatewayError(Exception):
    """Base of every error raised by the operator's Azure gateways."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", inner_code: str = "") -> None:
        super().__init__(f"({code}) {message}" if code else message)
        self.status = status
        self.code = code
        self.inner_code = inner_code
        self.message = message


class AzureConflict(AzureGatewayError):
    """409 or 412: someone else changed the resource or an operation is running. Read again."""


class AzureThrottled(AzureGatewayError):
    """429 (or a long Retry-After) the SDK did not absorb: requeue after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class AzureTransient(AzureGatewayError):
    """5xx or a network failure left after the SDK's own retries: try again later."""


class AzureRejected(AzureGatewayError):
    """A 4xx the request itself caused (validation, permission): a human must act."""


class AzureAuthFailed(AzureRejected):
    """401/403 or a credential that cannot get a token."""


class AzureNotFound(AzureGatewayError):
    """404: the resource does not exist."""


def retry_after_seconds(headers: Any, default: float = 0.0) -> float:
    """Parse ``retry-after-ms``/``x-ms-retry-after-ms``/``Retry-After`` (seconds or HTTP date)."""
    if headers is None:
        return default
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time())


def _code_and_message(exc: HttpResponseError) -> tuple[str, str, str]:
    code, message, inner = "", exc.message or str(exc), ""
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        code = str(error.code)
        message = str(getattr(error, "message", "") or message)
        innererror = getattr(error, "innererror", None) or {}
        if isinstance(innererror, dict):
            inner = str(innererror.get("code", ""))
    elif exc.response is not None:
        try:
            body = exc.response.json()
        except Exception:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = str(body["error"].get("code", ""))
            message = str(body["error"].get("message", message))
            inner = str((body["error"].get("innererror") or {}).get("code", ""))
    return code, message, inner


def translate(exc: BaseException) -> AzureGatewayError:
    """Map an azure-core exception to the operator's error types."""
    if isinstance(exc, AzureGatewayError):
        return exc
    if isinstance(exc, HttpResponseError) and exc.status_code:
        status = int(exc.status_code)
        code, message, inner = _code_and_message(exc)
        kwargs: dict[str, Any] = {"status": status, "code": code, "inner_code": inner}
        headers = exc.response.headers if exc.response is not None else None
        if status in (409, 412):
            return AzureConflict(message, **kwargs)
        if status == 429:
            return AzureThrottled(message, retry_after=retry_after_seconds(headers, 30.0), **kwargs)
        if status == 404:
            return AzureNotFound(message, **kwargs)
        if status in (401, 403) and inner not in ("KeyDisabled", "KeyExpired", "KeyNotYetValid"):
            return AzureAuthFailed(message, **kwargs)
        if status == 408 or status >= 500:
            return AzureTransient(message, **kwargs)
        return AzureRejected(message, **kwargs)
    if isinstance(exc, ClientAuthenticationError):
        return AzureAuthFailed(str(exc), status=401)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return AzureTransient(str(exc))
    if isinstance(exc, _SdkError):
        return AzureTransient(str(exc))
    return AzureTransient(repr(exc))
