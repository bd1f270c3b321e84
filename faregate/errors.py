"""The one error tree of Faregate, and the one mapper that carries it across gRPC.

::

    leaf                            HTTP type                   gRPC                code / Retry-After
    FaregateError                   500  internal_error         INTERNAL
    ├── InvalidRequest              400  invalid_request        INVALID_ARGUMENT
    │   ├── ContextLengthExceeded   400  invalid_request        INVALID_ARGUMENT    context_length_exceeded
    │   ├── PayloadTooLarge         413  invalid_request        INVALID_ARGUMENT
    │   ├── MethodNotAllowed        405  invalid_request        UNIMPLEMENTED
    │   ├── RequestTimeout          408  invalid_request        INVALID_ARGUMENT    (the edge's HTTP layer)
    │   ├── UriTooLong              414  invalid_request        INVALID_ARGUMENT    (the edge's HTTP layer)
    │   └── HeadersTooLarge         431  invalid_request        INVALID_ARGUMENT    (the edge's HTTP layer)
    ├── AuthenticationFailed        401  invalid_auth           UNAUTHENTICATED
    ├── InsufficientBalance         402  insufficient_balance   FAILED_PRECONDITION insufficient_balance
    ├── Forbidden                   403  content_policy         PERMISSION_DENIED
    │   ├── ContentPolicy           403  content_policy         PERMISSION_DENIED
    │   └── UnsupportedRegion       403  unsupported_region     PERMISSION_DENIED
    ├── NotFound                    404  not_found              NOT_FOUND
    │   └── ModelNotFound           404  not_found              NOT_FOUND           model_not_found
    ├── RateLimited                 429  rate_limited           RESOURCE_EXHAUSTED  Retry-After, X-RateLimit-*
    ├── UpstreamError               502  backend_unavailable    UNAVAILABLE
    │   └── UpstreamTimeout         502  backend_unavailable    DEADLINE_EXCEEDED
    └── ServiceUnavailable          503  providers_unavailable  UNAVAILABLE         Retry-After
        ├── Draining                503  draining               UNAVAILABLE         Retry-After
        ├── Maintenance             503  maintenance            UNAVAILABLE         Retry-After
        └── ProvidersUnavailable    503  providers_unavailable  UNAVAILABLE         Retry-After

Each class is its own value of ``faregate.rpc.v1.ErrorKind``. A refusal another service
decides on carries a :class:`Reason` (``faregate.rpc.v1.Reason``); the reason also names the
OpenAI-facing ``code`` unless one is given.

The mapper: :func:`status_of` turns what a servicer raised into a :class:`Status` (gRPC
code, message and an ``ErrorDetail``; anything but a FaregateError is a bug, logged and
answered as a bare INTERNAL); :func:`error_of` rebuilds the very same leaf from it.
``faregate.grpc`` carries a Status in a unary call's status and trailing metadata,
``faregate.callstream`` in a streamed call's ``CallError``; the edge answers OpenAI's error
object with :meth:`FaregateError.body`. Nothing else maps errors.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from faregate.pb.rpc.v1 import errors_pb2

log = logging.getLogger(__name__)

DETAIL_KEY = "fg-error-bin"  # the trailing metadata holding a unary call's ErrorDetail


class Reason(enum.IntEnum):
    """Why a service refused (``faregate.rpc.v1.Reason``, same numbers)."""

    UNSPECIFIED = 0
    KEY_MISSING = 1
    KEY_UNKNOWN = 2
    KEY_REVOKED = 3
    KEY_EXPIRED = 4
    AUTH_FAILURES = 5
    RPM_EXCEEDED = 6
    DAILY_REQUESTS_EXCEEDED = 7
    DAILY_TOKENS_EXCEEDED = 8
    CONCURRENCY_EXCEEDED = 9
    INSUFFICIENT_FUNDS = 10
    GUEST_MODEL_NOT_ALLOWED = 11
    TEST_KEY_LIVE_MODEL = 12

    @property
    def code(self) -> str | None:
        """The OpenAI-facing ``code`` clients see for this reason."""
        return _REASON_CODES.get(self)


_REASON_CODES = {
    Reason.KEY_MISSING: "missing_api_key",
    Reason.KEY_UNKNOWN: "invalid_api_key",
    Reason.KEY_REVOKED: "revoked_api_key",
    Reason.KEY_EXPIRED: "expired_api_key",
    Reason.AUTH_FAILURES: "auth_failures",
    Reason.RPM_EXCEEDED: "rpm_exceeded",
    Reason.DAILY_REQUESTS_EXCEEDED: "daily_requests_exceeded",
    Reason.DAILY_TOKENS_EXCEEDED: "daily_tokens_exceeded",
    Reason.CONCURRENCY_EXCEEDED: "concurrency_exceeded",
    Reason.INSUFFICIENT_FUNDS: "insufficient_balance",
    Reason.GUEST_MODEL_NOT_ALLOWED: "guest_model_not_allowed",
    Reason.TEST_KEY_LIVE_MODEL: "test_key_live_model",
}


class FaregateError(Exception):
    """A failure with its place in the tree above; the class decides status, type and kind."""

    http_status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    kind: ClassVar[int] = errors_pb2.ERROR_KIND_UNSPECIFIED
    default_code: ClassVar[str | None] = None
    default_reason: ClassVar[Reason] = Reason.UNSPECIFIED
    default_retry_after: ClassVar[float | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
        reason: Reason = Reason.UNSPECIFIED,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason = reason or self.default_reason
        self.code = code or reason.code or self.default_code
        self.param = param
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after

    @property
    def status(self) -> int:
        return self.http_status

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "code": self.code, "param": self.param}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}


class InvalidRequest(FaregateError):
    http_status = 400
    type = "invalid_request"
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = errors_pb2.ERROR_KIND_INVALID_REQUEST


class ContextLengthExceeded(InvalidRequest):
    kind = errors_pb2.ERROR_KIND_CONTEXT_LENGTH_EXCEEDED
    default_code = "context_length_exceeded"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    kind = errors_pb2.ERROR_KIND_PAYLOAD_TOO_LARGE


class MethodNotAllowed(InvalidRequest):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    kind = errors_pb2.ERROR_KIND_METHOD_NOT_ALLOWED


class RequestTimeout(InvalidRequest):
    """A request whose body did not arrive within the read timeout."""

    http_status = 408
    kind = errors_pb2.ERROR_KIND_REQUEST_TIMEOUT


class UriTooLong(InvalidRequest):
    http_status = 414
    kind = errors_pb2.ERROR_KIND_URI_TOO_LONG


class HeadersTooLarge(InvalidRequest):
    http_status = 431
    kind = errors_pb2.ERROR_KIND_HEADERS_TOO_LARGE


class AuthenticationFailed(FaregateError):
    http_status = 401
    type = "invalid_auth"
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    kind = errors_pb2.ERROR_KIND_AUTHENTICATION_FAILED


class InsufficientBalance(FaregateError):
    http_status = 402
    type = "insufficient_balance"
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    kind = errors_pb2.ERROR_KIND_INSUFFICIENT_BALANCE
    default_reason = Reason.INSUFFICIENT_FUNDS


class Forbidden(FaregateError):
    http_status = 403
    type = "content_policy"
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    kind = errors_pb2.ERROR_KIND_FORBIDDEN


class ContentPolicy(Forbidden):
    kind = errors_pb2.ERROR_KIND_CONTENT_POLICY


class UnsupportedRegion(Forbidden):
    type = "unsupported_region"
    kind = errors_pb2.ERROR_KIND_UNSUPPORTED_REGION


class NotFound(FaregateError):
    http_status = 404
    type = "not_found"
    grpc_code = grpc.StatusCode.NOT_FOUND
    kind = errors_pb2.ERROR_KIND_NOT_FOUND


class ModelNotFound(NotFound):
    kind = errors_pb2.ERROR_KIND_MODEL_NOT_FOUND
    default_code = "model_not_found"


@dataclass(frozen=True, slots=True)
class RateWindow:
    """The window a 429 is about, shown as its X-RateLimit-* headers."""

    limit: int
    remaining: int
    reset_at: int  # Unix seconds


class RateLimited(FaregateError):
    http_status = 429
    type = "rate_limited"
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = errors_pb2.ERROR_KIND_RATE_LIMITED
    default_retry_after = 1.0

    def __init__(self, message: str, *, window: RateWindow | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.window = window

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if (w := self.window) is not None:
            headers["X-RateLimit-Limit"] = str(w.limit)
            headers["X-RateLimit-Remaining"] = str(w.remaining)
            headers["X-RateLimit-Reset"] = str(w.reset_at)
        return headers


class UpstreamError(FaregateError):
    http_status = 502
    type = "backend_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = errors_pb2.ERROR_KIND_UPSTREAM_ERROR


class UpstreamTimeout(UpstreamError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = errors_pb2.ERROR_KIND_UPSTREAM_TIMEOUT


class ServiceUnavailable(FaregateError):
    http_status = 503
    type = "providers_unavailable"
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = errors_pb2.ERROR_KIND_SERVICE_UNAVAILABLE
    default_retry_after = 1.0


class Draining(ServiceUnavailable):
    type = "draining"
    kind = errors_pb2.ERROR_KIND_DRAINING


class Maintenance(ServiceUnavailable):
    type = "maintenance"
    kind = errors_pb2.ERROR_KIND_MAINTENANCE


class ProvidersUnavailable(ServiceUnavailable):
    kind = errors_pb2.ERROR_KIND_PROVIDERS_UNAVAILABLE


def _tree(root: type[FaregateError]) -> list[type[FaregateError]]:
    return [root, *(c for sub in root.__subclasses__() for c in _tree(sub))]


LEAVES: tuple[type[FaregateError], ...] = tuple(_tree(FaregateError))  # every class of the tree above
_BY_KIND: dict[int, type[FaregateError]] = {cls.kind: cls for cls in LEAVES}
assert len(_BY_KIND) == len(LEAVES), "every class of the tree has its own ErrorKind"


# -- the one mapper -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """An error as it crosses gRPC: status code, message, and (for a FaregateError) detail."""

    code: grpc.StatusCode
    message: str
    detail: errors_pb2.ErrorDetail | None = None

    def metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The trailing metadata of a unary call ending with this status."""
        return () if self.detail is None else ((DETAIL_KEY, self.detail.SerializeToString()),)

    @classmethod
    def from_metadata(cls, code: grpc.StatusCode, message: str, metadata: Iterable[tuple[str, str | bytes]]) -> Status:
        for key, value in metadata:
            if key == DETAIL_KEY and isinstance(value, bytes):
                return cls(code, message, errors_pb2.ErrorDetail.FromString(value))
        return cls(code, message)


def status_of(exc: BaseException, where: str = "a call") -> Status:
    """What a servicer raised, as its gRPC status; anything else is a bug: logged, INTERNAL."""
    if not isinstance(exc, FaregateError):
        log.error("unhandled error in %s", where, exc_info=exc)
        return Status(grpc.StatusCode.INTERNAL, "internal error")
    detail = errors_pb2.ErrorDetail(
        kind=exc.kind,  # type: ignore[arg-type]  # protobuf enums are ints
        code=exc.code or "",
        param=exc.param or "",
        reason=exc.reason.value,  # type: ignore[arg-type]
    )
    if exc.retry_after is not None:
        detail.retry_after_s = exc.retry_after
    if isinstance(exc, RateLimited) and (w := exc.window) is not None:
        window = detail.rate_limit
        window.limit, window.remaining, window.reset_at = w.limit, w.remaining, w.reset_at
    return Status(exc.grpc_code, exc.message, detail)


def error_of(status: Status) -> FaregateError:
    """The FaregateError a peer raised, rebuilt on the calling side: the same class."""
    detail = status.detail
    if detail is None:
        return _from_bare_status(status.message, status.code)
    cls = _BY_KIND.get(detail.kind, FaregateError)
    try:
        reason = Reason(detail.reason)
    except ValueError:  # a newer peer's reason: the code it sent still says it to the client
        reason = Reason.UNSPECIFIED
    extra: dict[str, Any] = {}
    if issubclass(cls, RateLimited) and detail.HasField("rate_limit"):
        w = detail.rate_limit
        extra["window"] = RateWindow(w.limit, w.remaining, w.reset_at)
    return cls(
        status.message,
        code=detail.code or None,
        param=detail.param or None,
        retry_after=detail.retry_after_s if detail.HasField("retry_after_s") else None,
        reason=reason,
        **extra,
    )


def _from_bare_status(message: str, code: grpc.StatusCode) -> FaregateError:
    """A status with no Faregate detail: the peer is down, overloaded or crashed."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        # down, too slow, or (CANCELLED) shedding a burst it could not take in: try again
        return Maintenance("a Faregate service is unavailable or overloaded, try again shortly", retry_after=1)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's own message size limit
        return PayloadTooLarge(message)
    log.warning("a gRPC call failed with %s without Faregate's detail: %s", code.name, message[:300])
    return FaregateError("internal error")
