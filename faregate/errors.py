"""The one error tree of Faregate, mapped once at each boundary.

::

    FaregateError                 500 internal_error         INTERNAL
    ├── InvalidRequest            400 invalid_request        INVALID_ARGUMENT
    │   └── PayloadTooLarge       413 invalid_request        INVALID_ARGUMENT
    ├── AuthenticationFailed      401 invalid_auth           UNAUTHENTICATED
    ├── InsufficientBalance       402 insufficient_balance   FAILED_PRECONDITION
    ├── Forbidden                 403 content_policy …       PERMISSION_DENIED
    ├── NotFound                  404 not_found              NOT_FOUND
    ├── RateLimited               429 rate_limited           RESOURCE_EXHAUSTED  (Retry-After)
    ├── UpstreamError             502 backend_unavailable    UNAVAILABLE
    │   └── UpstreamTimeout       502 backend_unavailable    DEADLINE_EXCEEDED
    └── ServiceUnavailable        503 draining | maintenance | providers_unavailable  UNAVAILABLE

A gRPC servicer raises these; ``faregate.grpc.ErrorInterceptor`` turns them into a status
code plus trailing metadata (``fg-http``, ``fg-type``, ``fg-code``, ``fg-param``,
``retry-after``); the edge rebuilds the error with :func:`from_metadata` and answers
OpenAI's error object with :meth:`FaregateError.body`. Nothing else maps errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import grpc

log = logging.getLogger(__name__)


class FaregateError(Exception):
    http_status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        error_type: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.error_type = error_type or self.type
        self.status = http_status or self.http_status

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": self.error_type,
                "message": self.message,
                "code": self.code,
                "param": self.param,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}

    def metadata(self) -> tuple[tuple[str, str], ...]:
        md = [("fg-http", str(self.status)), ("fg-type", self.error_type)]
        if self.code:
            md.append(("fg-code", self.code))
        if self.param:
            md.append(("fg-param", self.param))
        if self.retry_after is not None:
            md.append(("retry-after", f"{self.retry_after:g}"))
        return tuple(md)


class InvalidRequest(FaregateError):
    http_status = 400
    type = "invalid_request"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class PayloadTooLarge(InvalidRequest):
    http_status = 413


class AuthenticationFailed(FaregateError):
    http_status = 401
    type = "invalid_auth"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class InsufficientBalance(FaregateError):
    http_status = 402
    type = "insufficient_balance"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Forbidden(FaregateError):
    http_status = 403
    type = "content_policy"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(FaregateError):
    http_status = 404
    type = "not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND


class RateLimited(FaregateError):
    http_status = 429
    type = "rate_limited"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UpstreamError(FaregateError):
    http_status = 502
    type = "backend_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimeout(UpstreamError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ServiceUnavailable(FaregateError):
    http_status = 503
    type = "providers_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE


_BY_STATUS: dict[int, type[FaregateError]] = {
    cls.http_status: cls
    for cls in (
        InvalidRequest,
        AuthenticationFailed,
        InsufficientBalance,
        Forbidden,
        NotFound,
        RateLimited,
        UpstreamError,
        ServiceUnavailable,
    )
}
_BY_STATUS[413] = PayloadTooLarge


def from_metadata(
    message: str, metadata: Iterable[tuple[str, str | bytes]], *, fallback: grpc.StatusCode
) -> FaregateError:
    """Rebuild the error a servicer raised from a gRPC status and its trailing metadata."""
    md = {k: v.decode() if isinstance(v, bytes) else v for k, v in metadata}
    if "fg-http" not in md:
        return _from_bare_status(message, fallback)
    status = int(md["fg-http"])
    cls = _BY_STATUS.get(status, FaregateError)
    retry = md.get("retry-after")
    return cls(
        message,
        code=md.get("fg-code"),
        param=md.get("fg-param"),
        retry_after=float(retry) if retry else None,
        error_type=md.get("fg-type"),
        http_status=status,
    )


def _from_bare_status(message: str, code: grpc.StatusCode) -> FaregateError:
    """A status with no Faregate metadata: the peer is down, overloaded or crashed."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        # down, too slow, or (CANCELLED) shedding a burst it could not take in: try again
        return ServiceUnavailable(
            "a Faregate service is unavailable or overloaded, try again shortly",
            error_type="maintenance",
            retry_after=1,
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PayloadTooLarge(message)
    log.warning("a gRPC call failed with %s without Faregate's metadata: %s", code.name, message[:300])
    return FaregateError("internal error")
