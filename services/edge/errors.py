"""The edge's error boundary: every failure leaves as OpenAI's error object.

Faregate errors keep their status and type; FastAPI's own validation and routing errors
are mapped to their leaves (``InvalidRequest``, ``NotFound``, ``MethodNotAllowed``,
``PayloadTooLarge``); anything else is a bug, logged with the
request id and answered as ``internal_error`` without a trace.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from faregate.errors import (
    FaregateError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)

log = logging.getLogger(__name__)


# refused with the rest of their body unread: the connection is closed after the answer
_UNREAD_BODY = (PayloadTooLarge, RequestTimeout)


def error_response(exc: FaregateError, request_id: str | None = None) -> Response:
    headers = exc.headers()
    if request_id:
        headers["X-Request-Id"] = request_id
    if isinstance(exc, _UNREAD_BODY):
        headers["Connection"] = "close"
    return Response(orjson.dumps(exc.body()), status_code=exc.status, headers=headers, media_type="application/json")


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def failure_response(request: Request, exc: Exception) -> Response:
    """The answer to a request that raised: its FaregateError, or (a bug) a bare 500. A
    client gone mid-body is no failure of ours; its answer goes nowhere."""
    if isinstance(exc, ClientDisconnect):
        log.info("request %s: the client went away before its body was read", _request_id(request))
        return Response(status_code=400)
    if isinstance(exc, FaregateError):
        if exc.status >= 500:
            log.warning("request %s failed: %s %s", _request_id(request), exc.type, exc.message)
        return error_response(exc, _request_id(request))
    log.exception("unhandled error in request %s", _request_id(request), exc_info=exc)
    return error_response(FaregateError("internal error"), _request_id(request))


def install(app: FastAPI) -> None:
    @app.exception_handler(FaregateError)
    async def faregate_error(request: Request, exc: FaregateError) -> Response:
        return failure_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        return error_response(InvalidRequest(msg, param=".".join(loc) or None), _request_id(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        err: FaregateError
        if exc.status_code == 404:
            err = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            err = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        elif exc.status_code == 413:
            err = PayloadTooLarge(str(exc.detail))
        else:
            err = InvalidRequest(str(exc.detail))
        response = error_response(err, _request_id(request))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return failure_response(request, exc)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> Response:
        return failure_response(request, exc)
