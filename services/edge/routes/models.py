"""GET /v1/models, /v1/models/auto and /v1/models/{id}: the catalog in OpenAI's list shape,
enriched; POST /admin/models/{id}/pricing changes a model's prices without a restart."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import Field

from faregate.errors import InvalidRequest, ModelNotFound
from faregate.pb.router.v1 import router_pb2
from services.edge.clients import unary
from services.edge.context import edge
from services.edge.routes.admin import Body, parse, require_admin
from services.edge.routes.responses import json_response

router = APIRouter()


def model_json(m: router_pb2.Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "name": m.name,
        "categories": list(m.categories),
        "context_length": m.context_length,
        "pricing": {
            "prompt": m.pricing.prompt,
            "completion": m.pricing.completion,
            "unit": "USD per 1M tokens",
        },
        "supported_sampling_parameters": list(m.sampling_parameters),
        "supported_features": list(m.features),
        "input_modalities": list(m.input_modalities),
        "providers": list(m.providers),
        "aliases": list(m.aliases),
        "test": m.test,
    }


async def _models(request: Request, category: str = "") -> list[router_pb2.Model]:
    reply = await unary(edge(request).clients.router.ListModels, router_pb2.ListModelsRequest(category=category))
    return list(reply.models)


@router.get("/v1/models")
async def list_models(request: Request, category: str = "") -> Response:
    return json_response({"object": "list", "data": [model_json(m) for m in await _models(request, category)]})


def choice_json(c: router_pb2.AutoChoice) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "provider": c.provider, "reason": c.reason}


@router.get("/v1/models/auto")
async def auto_model(request: Request, task: str = "") -> Response:
    """The model the auto-router would pick for ``task`` now, and the alternatives."""
    if len(task) > 2000:
        raise InvalidRequest("'task' is limited to 2000 characters", param="task")
    reply = await unary(edge(request).clients.router.AutoRoute, router_pb2.AutoRouteRequest(task=task))
    return json_response(
        {
            "task": reply.task,
            "category": reply.category,
            "primary": choice_json(reply.primary),
            "alternatives": [choice_json(c) for c in reply.alternatives],
        }
    )


class NewPricing(Body):
    prompt: float = Field(ge=0, le=10_000, description="USD per 1M prompt tokens")
    completion: float = Field(ge=0, le=10_000, description="USD per 1M completion tokens")


@router.post("/admin/models/{model_id:path}/pricing", dependencies=[Depends(require_admin)])
async def set_pricing(request: Request, model_id: str) -> Response:
    body = await parse(request, NewPricing)
    model = await unary(
        edge(request).clients.router.UpdatePricing,
        router_pb2.UpdatePricingRequest(
            model=model_id, pricing=router_pb2.Pricing(prompt=body.prompt, completion=body.completion)
        ),
    )
    await edge(request).gateway.prices.refresh()  # this edge's hold sizes follow at once; others on the NATS notice
    return json_response(model_json(model))


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Response:
    for m in await _models(request):
        if m.id == model_id or model_id in m.aliases:
            return json_response(model_json(m))
    raise ModelNotFound(f"model {model_id!r} does not exist", param="model")
