"""RouterService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from faregate.pb.router.v1 import router_pb2 as pb
from faregate.pb.router.v1 import router_pb2_grpc
from services.router.catalog import Catalog, Model
from services.router.routing import ChatRouter


def model_message(m: Model) -> pb.Model:
    return pb.Model(
        id=m.id,
        name=m.name,
        owned_by=m.owned_by,
        categories=m.categories,
        context_length=m.context_length,
        pricing=pb.Pricing(prompt=m.prompt_price, completion=m.completion_price),
        features=m.features,
        input_modalities=m.input_modalities,
        test=m.test,
        created=m.created,
        providers=sorted({r.provider for r in m.routes}),
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router: ChatRouter, catalog: Catalog) -> None:
        self._router = router
        self._catalog = catalog

    async def ChatCompletion(
        self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompletionChunk]:
        async for chunk in self._router.chat(request):
            yield chunk

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_message(m) for m in self._catalog.list(request.category)])
