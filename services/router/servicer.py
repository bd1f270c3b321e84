"""RouterService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

import grpc

from faregate.callstream import CallServer
from faregate.errors import InvalidRequest, NotFound, UpstreamError
from faregate.pb.router.v1 import router_pb2 as pb
from faregate.pb.router.v1 import router_pb2_grpc
from faregate.pb.rpc.v1 import calls_pb2
from faregate.values import RoutingMode
from services.router.autoroute import CATEGORIES, Choice, Choices
from services.router.calls import Caller, Chunk, CompletionCall
from services.router.catalog import Catalog, Model
from services.router.pricing import PriceBook
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
        aliases=m.aliases,
        sampling_parameters=m.sampling_parameters,
    )


def call_from_pb(request: pb.CompletionRequest) -> CompletionCall:
    c = request.caller
    caller = Caller(
        account_id=c.account_id,
        key_id=c.key_id,
        billable=c.billable,
        test_mode=c.test_mode,
        max_tokens_cap=c.max_tokens_cap,
        guest=c.guest,
        routing_mode=RoutingMode.from_pb(c.routing_mode),
        preferred_provider=c.preferred_provider,
    )
    return CompletionCall(request_id=request.request_id, caller=caller, body=request.body, entry=request.entry)


def chunk_pb(chunk: Chunk) -> pb.CompletionChunk:
    """A chunk's wire message. One is made for every relayed batch: nothing else is, and the
    payloads go to protobuf as they are (it copies them itself)."""
    payloads, start, error = chunk
    if error is not None:  # the edge rebuilds the UpstreamError from it
        return pb.CompletionChunk(error=pb.StreamError(type=error.type, message=error.message, code=error.code or ""))
    if start is not None:
        return pb.CompletionChunk(
            start=pb.Start(model=start.model, provider=start.provider, stream=start.stream),
            data=payloads[0],
            more=payloads[1:],
        )
    if len(payloads) > 1:
        return pb.CompletionChunk(data=payloads[0], more=payloads[1:])
    return pb.CompletionChunk(data=payloads[0])  # an empty `more` would cost as much as the rest (same bytes)


def _choice_pb(c: Choice) -> pb.AutoChoice:
    return pb.AutoChoice(id=c.model.id, name=c.model.name, provider=c.provider, reason=c.reason)


def choices_pb(choices: Choices) -> pb.AutoRouteResponse:
    primary, *alternatives = choices.ranked
    return pb.AutoRouteResponse(
        task=choices.task,
        category=choices.category,
        primary=_choice_pb(primary),
        alternatives=[_choice_pb(c) for c in alternatives],
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, router: ChatRouter, catalog: Catalog, prices: PriceBook) -> None:
        self._router = router
        self._catalog = catalog
        self._prices = prices
        self.calls = CallServer()
        self._complete_stream = self.calls.handler(self.Complete, pb.CompletionRequest)
        self._chat_stream = self.calls.streaming_handler(self.ChatCompletion, pb.CompletionRequest)

    async def ChatCompletion(
        self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.CompletionChunk, None]:
        # Closed with this call, so a client gone mid-stream is metered when it goes.
        async with contextlib.aclosing(self._router.chat(call_from_pb(request))) as chunks:
            async for chunk in chunks:
                yield chunk_pb(chunk)

    async def Complete(self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext) -> pb.CompletionChunk:
        """A completion not asked to stream: the one message ChatCompletion would send."""
        async with contextlib.aclosing(self._router.chat(call_from_pb(request))) as chunks:
            async for chunk in chunks:
                if chunk.start is not None and chunk.start.stream:  # the edge sends no "stream": true here
                    raise InvalidRequest("a streamed completion cannot be answered in one message", param="stream")
                return chunk_pb(chunk)
        raise UpstreamError("the router ended the call without an answer")

    async def CompleteStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        """Complete calls on one long-lived stream (faregate/callstream.py)."""
        async for result in self._complete_stream(request_iterator, context):
            yield result

    async def ChatCompletionStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        """ChatCompletion calls on one long-lived stream, chunks of many calls together (ADR 10)."""
        async for result in self._chat_stream(request_iterator, context):
            yield result

    async def Embeddings(self, request: pb.CompletionRequest, context: grpc.aio.ServicerContext) -> pb.CompletionChunk:
        return chunk_pb(await self._router.embeddings(call_from_pb(request)))

    async def ProviderHealth(
        self, request: pb.ProviderHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProviderHealthResponse:
        return await self._health()

    async def ResetProviders(
        self, request: pb.ResetProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProviderHealthResponse:
        if request.provider and request.provider not in self._catalog.providers:
            raise NotFound(f"no provider {request.provider!r}", code="provider_not_found", param="provider")
        await self._router.breakers.reset([request.provider] if request.provider else self._catalog.providers)
        return await self._health()

    async def AutoRoute(self, request: pb.AutoRouteRequest, context: grpc.aio.ServicerContext) -> pb.AutoRouteResponse:
        return choices_pb(await self._router.auto.choose(request.task))

    async def UpdatePricing(self, request: pb.UpdatePricingRequest, context: grpc.aio.ServicerContext) -> pb.Model:
        p = request.pricing
        return model_message(await self._prices.set(request.model, p.prompt, p.completion))

    async def _health(self) -> pb.ProviderHealthResponse:
        names = sorted(self._catalog.providers)
        states = await self._router.breakers.snapshot(names)
        providers = []
        for name in names:
            cfg, b = self._catalog.providers[name], states[name]
            providers.append(
                pb.ProviderState(
                    provider=name,
                    status=b.state if cfg.configured else "unconfigured",
                    consecutive_failures=b.consecutive_failures,
                    last_failure=b.last_failure,
                    configured=cfg.configured,
                    kind=cfg.kind,
                    api_key_env=cfg.api_key_env or "",
                    missing_env=cfg.missing_env,
                    retry_after_until=b.cooling_until if b.cooling_until > time.time() else 0,
                )
            )
        return pb.ProviderHealthResponse(providers=providers, timestamp=time.time())

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        if request.category and request.category not in (*CATEGORIES, "test"):
            raise InvalidRequest(
                f"unknown category {request.category!r}; one of: {', '.join(CATEGORIES)}", param="category"
            )
        return pb.ListModelsResponse(models=[model_message(m) for m in self._catalog.list(request.category)])
