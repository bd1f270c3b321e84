"""GET /health: each service's grpc.health.v1 state and the metering pipeline's counters."""

from __future__ import annotations

import asyncio

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from faregate.pb.billing.v1 import billing_pb2
from services.edge.context import edge
from services.edge.routes.responses import json_response

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    clients = edge(request).clients
    results: list[object] = await asyncio.gather(
        clients.health(),
        clients.billing.GetStatus(billing_pb2.GetStatusRequest(), timeout=1.0),
        return_exceptions=True,
    )
    states, status = results
    services = {"edge": "SERVING", **(states if isinstance(states, dict) else {})}
    body: dict[str, object] = {"services": services}
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
