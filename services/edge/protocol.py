"""The edge's HTTP/1.1 protocol: uvicorn's httptools protocol with Faregate's limits.

What the application cannot see, because it arrives before a request is handed to it, is
bounded here: the request line (414), the header lines together (431; counted on the raw
bytes as they arrive, since the parser only reports a header once it is whole) and the
time a client may take to send them (408). An idle connection, the first request's wait
included, is closed after the keep-alive timeout. The body's size and read time are the
application's to count (``services/edge/context.py``, ``read_body``), as it reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from faregate.errors import HeadersTooLarge, InvalidRequest, RequestTimeout, UriTooLong
from faregate.settings import EdgeSettings

_LINGER_SECONDS = 2.0
_REASONS = {408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True)
class HttpLimits:
    max_request_line_bytes: int
    max_header_bytes: int
    read_timeout: float

    @classmethod
    def of(cls, settings: EdgeSettings) -> HttpLimits:
        return cls(settings.max_request_line_bytes, settings.max_header_bytes, settings.read_timeout)


def protocol_class(limits: HttpLimits) -> type[HttpToolsProtocol]:
    """uvicorn's ``http=``: the limited protocol, bound to these limits."""
    return type("FaregateHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


class LimitedHttpProtocol(HttpToolsProtocol):
    limits: HttpLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._header_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # a connection that never sends a request is as idle as one between requests
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # a head still incomplete after this read is bounded by its raw size
        head_limit = self.limits.max_request_line_bytes + self.limits.max_header_bytes
        if self._in_head and not self._refused and self._head_bytes > head_limit:
            self._refuse(HeadersTooLarge(f"request headers are over {self.limits.max_header_bytes} bytes"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._header_bytes = 0
        self._head_timer = self.loop.call_later(self.limits.read_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_request_line_bytes:
            self._refuse(UriTooLong(f"request line is over {self.limits.max_request_line_bytes} bytes"))
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(HeadersTooLarge(f"request headers are over {self.limits.max_header_bytes} bytes"))
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a parser error raised by our own refusal is already answered
            super().send_400_response(msg)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self._refused:
            self._refuse(RequestTimeout(f"request headers did not arrive within {self.limits.read_timeout:g} s"))

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, error: InvalidRequest) -> None:
        """Answer OpenAI's error object and close: the rest of this connection is not read."""
        self._refused = True
        self._cancel_head_timer()
        body = orjson.dumps(error.body())
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (error.status, _REASONS.get(error.status, b"Bad Request"), len(body))
        )
        if not self.transport.is_closing():
            self.transport.write(head + body)
            # a lingering close: closing with the client's bytes unread would reset the
            # connection and could lose the answer, so the rest is read and dropped a while
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)


class _Refused(Exception):
    """Stops the parser inside a callback once the request has been refused."""
