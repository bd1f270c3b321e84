"""RouterService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from faregate.errors import NotFound
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

    async def Embeddings(self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext) -> pb.CompletionChunk:
        return await self._router.embeddings(request)

    async def ProviderHealth(
        self, request: pb.ProviderHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProviderHealthResponse:
        return self._health()

    async def ResetProviders(
        self, request: pb.ResetProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProviderHealthResponse:
        if request.provider and request.provider not in self._catalog.providers:
            raise NotFound(f"no provider {request.provider!r}", code="provider_not_found", param="provider")
        self._router.breakers.reset(request.provider or None)
        return self._health()

    def _health(self) -> pb.ProviderHealthResponse:
        names = sorted(self._catalog.providers)
        states = self._router.breakers.snapshot(names)
        return pb.ProviderHealthResponse(
            providers=[
                pb.ProviderState(
                    provider=name,
                    status=states[name].state if self._catalog.providers[name].configured else "unconfigured",
                    consecutive_failures=states[name].consecutive_failures,
                    last_failure=states[name].last_failure or 0,
                    configured=self._catalog.providers[name].configured,
                )
                for name in names
            ],
            timestamp=time.time(),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_message(m) for m in self._catalog.list(request.category)])
