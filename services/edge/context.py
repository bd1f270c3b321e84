"""What every edge request can reach, built in the lifespan: settings, the gateway core,
the gRPC clients (for the account and admin routes) and the edge's supervisor."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from starlette.types import ASGIApp

from faregate.errors import AuthenticationFailed, PayloadTooLarge, RateLimited, Reason, RequestTimeout
from faregate.runtime import Supervisor
from faregate.settings import EdgeSettings
from services.edge.callers import Credentials
from services.edge.clients import Clients
from services.edge.gateway import Gateway

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class EdgeContext:
    settings: EdgeSettings
    clients: Clients
    admin_token: str
    gateway: Gateway
    supervisor: Supervisor
    trusted_proxies: tuple[Network, ...] = ()
    admin_failures: FailureThrottle = field(default_factory=lambda: FailureThrottle(10))
    mcp: ASGIApp | None = None  # /v1/mcp… (services/edge/mcp.py)

    def credentials(self, request: Request) -> Credentials:
        return Credentials(bearer(request), self.client_ip(request))

    def forwarded_prefix(self, request: Request) -> str:
        """The path prefix a trusted proxy strips (``X-Forwarded-Prefix``), or ""."""
        prefix = request.headers.get("x-forwarded-prefix", "").strip().rstrip("/")
        if not prefix.startswith("/") or "//" in prefix or not self._from_trusted_proxy(request):
            return ""
        return prefix

    def _from_trusted_proxy(self, request: Request) -> bool:
        peer = request.client.host if request.client else ""
        try:
            return bool(peer) and any(ipaddress.ip_address(peer) in net for net in self.trusted_proxies)
        except ValueError:
            return False

    async def read_body(self, request: Request) -> bytes:
        """The body, counted as it arrives: 413 as soon as it passes the limit (at once when
        its Content-Length says it will), 408 when it takes longer than the read timeout.
        Nothing past the limit is kept; a client gone mid-body raises ClientDisconnect."""
        limit = self.settings.max_body_bytes
        too_large = PayloadTooLarge(f"request body is over {limit} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(f"request body did not arrive within {self.settings.read_timeout:g} s") from None
        return b"".join(chunks)

    def client_ip(self, request: Request) -> str:
        """The socket peer, or the first X-Forwarded-For hop when the peer is a trusted proxy."""
        peer = request.client.host if request.client else ""
        if self.trusted_proxies and peer:
            try:
                trusted = any(ipaddress.ip_address(peer) in net for net in self.trusted_proxies)
            except ValueError:
                trusted = False
            forwarded = request.headers.get("x-forwarded-for", "")
            if trusted and forwarded:
                # The right-most address not added by one of our proxies is the client.
                for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
                    try:
                        ip = ipaddress.ip_address(hop)
                    except ValueError:
                        break
                    if not any(ip in net for net in self.trusted_proxies):
                        return hop
        return peer


def parse_networks(text: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def edge(request: Request) -> EdgeContext:
    ctx: EdgeContext = request.state.edge
    return ctx


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def bearer(request: Request) -> str:
    """The presented key; empty only when no Authorization header was sent at all (a guest).

    Anything but a well-formed ``Bearer <key>`` (a bare key included) is refused here, 401,
    instead of treating the caller as a guest or the header as a key.
    """
    header = request.headers.get("authorization")
    if header is None:
        return ""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    raise AuthenticationFailed("the Authorization header must be 'Bearer <key>'", reason=Reason.KEY_UNKNOWN)


class FailureThrottle:
    """Wrong attempts per client address in fixed one-minute windows (wrong admin tokens):
    past ``per_minute`` in a window, the address is refused (429) until the window ends.
    Per edge process; the table is bounded by dropping ended windows."""

    WINDOW = 60.0
    MAX_ADDRESSES = 100_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def check(self, address: str) -> None:
        """Raise RateLimited while ``address`` is over its failures in this window."""
        start, count = self._windows.get(address, (0.0, 0))
        now = self._clock()
        if count >= self._per_minute and now < start + self.WINDOW:
            raise RateLimited("too many wrong admin tokens from this address", retry_after=start + self.WINDOW - now)

    def failed(self, address: str) -> None:
        now = self._clock()
        start, count = self._windows.get(address, (now, 0))
        if now >= start + self.WINDOW:
            start, count = now, 0
        if len(self._windows) >= self.MAX_ADDRESSES:
            self._windows = {a: w for a, w in self._windows.items() if now < w[0] + self.WINDOW}
        self._windows[address] = (start, count + 1)
