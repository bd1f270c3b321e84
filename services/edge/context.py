"""What every edge request can reach, built in the lifespan: settings, the gateway core,
the gRPC clients (for the account and admin routes) and the edge's supervisor."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from fastapi import Request
from starlette.types import ASGIApp

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

    A header that is not a well-formed ``Bearer <key>`` is passed on as it is, so auth
    refuses it (401) instead of treating the caller as a guest.
    """
    header = request.headers.get("authorization")
    if header is None:
        return ""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return header or "(empty)"
