"""Providers: which are configured (GET /v1/chat/status), their circuit breakers
(GET /v1/providers/health) and a reset (POST /admin/providers/reset)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import Field

from faregate.pb.router.v1 import router_pb2
from services.edge.clients import unary
from services.edge.context import edge
from services.edge.routes.admin import Body, parse, require_admin
from services.edge.routes.responses import json_response

router = APIRouter()


class Reset(Body):
    provider: str | None = Field(default=None, min_length=1, max_length=100)


def health_json(reply: router_pb2.ProviderHealthResponse) -> dict[str, Any]:
    return {
        "object": "providers.health",
        "timestamp": reply.timestamp,
        "providers": {
            p.provider: {
                "status": p.status,
                "consecutive_failures": p.consecutive_failures,
                "last_failure": p.last_failure or None,
                "configured": p.configured,
                "retry_after_until": p.retry_after_until or None,
            }
            for p in reply.providers
        },
    }


@router.get("/v1/chat/status")
async def chat_status(request: Request) -> Response:
    """Which providers can take requests (their key is set) and which need configuring."""
    reply = await unary(edge(request).clients.router.ProviderHealth, router_pb2.ProviderHealthRequest())
    providers = [
        {
            "id": p.provider,
            "kind": p.kind,
            "configured": p.configured,
            "api_key_env": p.api_key_env or None,
            "missing_env": list(p.missing_env),
            "status": p.status,
        }
        for p in reply.providers
    ]
    return json_response(
        {
            "object": "chat.status",
            "timestamp": reply.timestamp,
            "configured": [p["id"] for p in providers if p["configured"]],
            "unconfigured": [p["id"] for p in providers if not p["configured"]],
            "providers": providers,
        }
    )


@router.get("/v1/providers/health")
async def providers_health(request: Request) -> Response:
    reply = await unary(edge(request).clients.router.ProviderHealth, router_pb2.ProviderHealthRequest())
    return json_response(health_json(reply))


@router.post("/admin/providers/reset", dependencies=[Depends(require_admin)])
async def reset_providers(request: Request) -> Response:
    body = await parse(request, Reset)
    reply = await unary(
        edge(request).clients.router.ResetProviders, router_pb2.ResetProvidersRequest(provider=body.provider or "")
    )
    return json_response(health_json(reply))
