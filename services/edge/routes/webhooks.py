"""POST /webhooks/stripe: Stripe's deliveries, passed to billing untouched.

The raw body and the ``Stripe-Signature`` header go to billing as they arrived (the
signature covers the exact bytes); billing verifies them and applies the event at most once.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from faregate.pb.billing.v1 import billing_pb2
from services.edge.clients import unary
from services.edge.context import edge
from services.edge.routes.responses import json_response

router = APIRouter()


@router.post("/webhooks/stripe")
async def stripe_webhook(request: Request) -> Response:
    ctx = edge(request)
    raw = await ctx.read_body(request)
    outcome = await unary(
        ctx.clients.billing.HandleStripeWebhook,
        billing_pb2.StripeWebhookRequest(payload=raw, signature=request.headers.get("stripe-signature", "")),
    )
    return json_response(
        {
            "received": True,
            "id": outcome.event_id,
            "type": outcome.type,
            "applied": outcome.applied,
            "note": outcome.note,
        }
    )
