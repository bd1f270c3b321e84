"""What every edge request can reach: settings and gRPC clients (built in the lifespan)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Request

from faregate.settings import EdgeSettings
from services.edge.clients import Clients


@dataclass(frozen=True)
class EdgeContext:
    settings: EdgeSettings
    clients: Clients
    admin_token: str


def edge(request: Request) -> EdgeContext:
    ctx: EdgeContext = request.state.edge
    return ctx


def new_request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
