"""GET /v1/models and /v1/models/{id}: the catalog in OpenAI's list shape, enriched."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from faregate.errors import NotFound
from faregate.pb.router.v1 import router_pb2
from services.edge.clients import unary
from services.edge.context import edge
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
        "supported_features": list(m.features),
        "input_modalities": list(m.input_modalities),
        "providers": list(m.providers),
        "test": m.test,
    }


async def _models(request: Request, category: str = "") -> list[router_pb2.Model]:
    reply = await unary(edge(request).clients.router.ListModels, router_pb2.ListModelsRequest(category=category))
    return list(reply.models)


@router.get("/v1/models")
async def list_models(request: Request, category: str = "") -> Response:
    return json_response({"object": "list", "data": [model_json(m) for m in await _models(request, category)]})


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str) -> Response:
    for m in await _models(request):
        if m.id == model_id:
            return json_response(model_json(m))
    raise NotFound(f"model {model_id!r} does not exist", code="model_not_found", param="model")
