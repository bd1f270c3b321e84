"""The upstream HTTP client every HTTP adapter shares: one POST, one error mapping.

One pooled keep-alive ``aiohttp.ClientSession`` per router process carries every upstream
call (docs/adr/0003-upstream-http-client.md). :class:`UpstreamClient` binds it to one
provider's name and headers, and is where aiohttp's exceptions and the upstream's HTTP
statuses become Faregate errors::

    400 404 413 422            InvalidRequest (the request is wrong; another route would say the same)
    other statuses ≥ 300       UpstreamError, code ``upstream_<status>``, ``Retry-After`` kept
    unreachable, cut off       UpstreamError
    timed out                  UpstreamTimeout
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import orjson

from faregate.errors import ContextLengthExceeded, InvalidRequest, UpstreamError, UpstreamTimeout

_INVALID = frozenset({400, 404, 413, 422})


class UpstreamClient:
    """POSTs JSON to one provider's endpoints with its headers; raises only Faregate errors."""

    def __init__(self, name: str, session: aiohttp.ClientSession, headers: Mapping[str, str]) -> None:
        self.name = name
        self._session = session
        self._headers = {"Content-Type": "application/json", **headers}

    async def post(self, url: str, payload: dict[str, Any], *, stream: bool = False) -> aiohttp.ClientResponse:
        """An answered POST (status < 300); the caller reads and releases the response.

        A ``stream`` reads with a small buffer (STREAM_READ_BUFSIZE): its events are relayed
        as they arrive, so a router lagging behind thousands of streams lets the upstreams
        wait (TCP flow control) instead of holding their bytes; whole answers keep
        aiohttp's 64 KiB."""
        try:
            resp = await self._session.post(
                url,
                data=orjson.dumps(payload),
                headers=self._headers,
                read_bufsize=STREAM_READ_BUFSIZE if stream else None,
            )
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.name} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"provider {self.name} is unreachable") from exc
        if resp.status >= 300:
            await self._raise_for(resp)
        return resp

    async def post_json(self, url: str, payload: dict[str, Any]) -> tuple[bytes, Any]:
        """POST and read a whole JSON answer: (the bytes as sent, the parsed document)."""
        resp = await self.post(url, payload)
        try:
            data = await resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.name} timed out sending the answer") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"provider {self.name} dropped the answer") from exc
        finally:
            resp.release()
        try:
            return data, orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name} answered invalid JSON") from exc

    async def events(self, resp: aiohttp.ClientResponse) -> AsyncGenerator[list[bytes], None]:
        """The data payloads of a streamed answer's SSE events, stripped, in lists of those
        that arrived in the same network read; releases the response when closed.

        One read of whatever is buffered, not one per line: a burst of events costs one
        pass here and one message further on. Events without data (comments, keep-alives)
        are skipped; an event's several ``data:`` lines are joined with newlines.
        Use it under ``contextlib.aclosing``, so the connection goes back to the pool as soon as
        the caller stops reading.
        """
        buffer = b""
        content = resp.content
        try:
            while data := await content.readany():
                buffer += data
                if b"\r" in buffer:  # CRLF or CR line ends; a CR last may be half of a CRLF
                    head, tail = (buffer[:-1], b"\r") if buffer.endswith(b"\r") else (buffer, b"")
                    buffer = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
                *complete, buffer = buffer.split(b"\n\n")
                batch = [p for p in map(_event_data, complete) if p is not None]
                if batch:
                    yield batch
            last = _event_data(buffer.strip(b"\r\n"))  # an answer that ends without the blank line
            if last is not None:
                yield [last]
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.name} stalled mid-stream") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"provider {self.name} dropped the stream") from exc
        finally:
            resp.release()

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        try:
            doc = await resp.json(content_type=None)
            error = doc.get("error") if isinstance(doc, dict) else None
            detail = str(error.get("message") or "") if isinstance(error, dict) else ""
            code = str(error.get("code") or "") if isinstance(error, dict) else ""
        except (ValueError, aiohttp.ClientError, TimeoutError):
            detail = code = ""
        finally:
            resp.release()
        if resp.status in _INVALID and code == "context_length_exceeded":
            raise ContextLengthExceeded(f"provider {self.name} rejected the request: {detail or resp.reason}")
        if resp.status in _INVALID:
            raise InvalidRequest(f"provider {self.name} rejected the request: {detail or resp.reason}")
        raise UpstreamError(
            f"provider {self.name} answered HTTP {resp.status}",
            code=f"upstream_{resp.status}",
            retry_after=retry_after(resp.headers.get("Retry-After")),
        )


def _event_data(event: bytes) -> bytes | None:
    """An SSE event's data (its ``data:`` lines joined), stripped; None if it has none."""
    if event.startswith(b"data:") and b"\n" not in event:  # the usual event: one data line
        return event[5:].strip()
    parts = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(parts) if parts else None


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (HTTP dates are not used by LLM APIs and are ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


STREAM_READ_BUFSIZE = 4 * 1024  # a streamed answer's; aiohttp pauses reading past twice this


def make_session(pool_size: int, connect_timeout: float, total_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
