"""GET /health: each service's grpc.health.v1 state, its supervised components, and the
metering pipeline's counters."""

from __future__ import annotations

import asyncio

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.rpc.v1 import runtime_pb2, runtime_pb2_grpc
from faregate.runtime import Supervisor
from services.edge.context import edge
from services.edge.routes.responses import json_response

router = APIRouter()


async def components(channel: grpc.aio.Channel) -> list[dict[str, object]] | None:
    """A service's components (faregate/runtime.py), or None when it cannot say."""
    try:
        reply = await runtime_pb2_grpc.RuntimeStub(channel).Components(runtime_pb2.ComponentsRequest(), timeout=1.0)
    except grpc.aio.AioRpcError:
        return None
    return [
        {
            "name": c.name,
            "state": runtime_pb2.ComponentState.Name(c.state).removeprefix("COMPONENT_STATE_").lower(),
            "required": c.required,
            "restarts": c.restarts,
            "last_error": c.last_error or None,
        }
        for c in reply.components
    ]


def edge_components(supervisor: Supervisor) -> list[dict[str, object]]:
    return [
        {
            "name": c.name,
            "state": c.state.value,
            "required": c.required,
            "restarts": c.restarts,
            "last_error": c.last_error,
        }
        for c in supervisor.health()
    ]


@router.get("/health")
async def health(request: Request) -> Response:
    ctx = edge(request)
    clients = ctx.clients
    names = list(clients.channels)
    results: list[object] = await asyncio.gather(
        clients.health(),
        clients.billing.GetStatus(billing_pb2.GetStatusRequest(), timeout=1.0),
        *(components(clients.channels[name]) for name in names),
        return_exceptions=True,
    )
    states, status, *parts = results
    services = {
        "edge": "SERVING" if ctx.supervisor.serving else "NOT_SERVING",
        **(states if isinstance(states, dict) else {}),
    }
    body: dict[str, object] = {"services": services}
    body["components"] = {
        "edge": edge_components(ctx.supervisor),
        **{name: part for name, part in zip(names, parts, strict=True) if isinstance(part, list)},
    }
    if isinstance(status, billing_pb2.BillingStatus):
        body["metering"] = {
            "consumer_connected": status.consumer_connected,
            "applied": status.applied,
            "duplicates": status.duplicates,
            "dead_lettered": status.dead_lettered,
        }
    elif isinstance(status, grpc.aio.AioRpcError):
        body["metering"] = {"consumer_connected": False}
    ok = all(s == "SERVING" for s in services.values())
    body["status"] = "ok" if ok else "degraded"
    return json_response(body, 200 if ok else 503)
