"""Routing a chat completion: model → route chain → provider, and the usage it costs.

``ChatRouter.chat`` yields CompletionChunk messages: ``start`` first, then ``data``. Before
the first byte reaches the client, a failing route hands over to the next one in the chain;
after it, an upstream failure ends the stream with an ``error`` chunk. Whatever happens
after the upstream answered, one UsageRecord goes to the usage sink (never the text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from faregate.errors import FaregateError, Forbidden, InvalidRequest, ServiceUnavailable, UpstreamError
from faregate.money import token_cost
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from faregate.pb.router.v1 import router_pb2 as pb
from faregate.tokens import estimate_messages
from services.router.breakers import Breakers
from services.router.catalog import Catalog, Model, Route
from services.router.providers.base import Provider, Usage

log = logging.getLogger(__name__)

UsageSink = Callable[[UsageRecord], None]


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return body


class ChatRouter:
    def __init__(
        self,
        catalog: Catalog,
        providers: Mapping[str, Provider],
        usage_sink: UsageSink,
        clock: Callable[[], float] = time.time,
        breakers: Breakers | None = None,
    ) -> None:
        self._catalog = catalog
        self._providers = providers
        self.breakers = breakers or Breakers()
        self._sink = usage_sink
        self._clock = clock

    def routes_for(self, model: Model) -> list[Route]:
        usable = [r for r in model.routes if self._catalog.providers[r.provider].configured]
        if not usable:
            keys = sorted({str(self._catalog.providers[r.provider].api_key_env) for r in model.routes})
            raise ServiceUnavailable(
                f"no provider is configured for model {model.id!r}: set {' or '.join(keys)}",
                code="provider_not_configured",
            )
        return usable

    async def chat(self, request: pb.CompletionRequest) -> AsyncIterator[pb.CompletionChunk]:
        started = self._clock()
        body = parse_body(request.body)
        model = self._catalog.model(body["model"])
        caller = request.caller
        if caller.guest and not model.guest:
            raise Forbidden(
                f"the keyless guest sandbox can only call guest models; {model.id!r} needs an API key",
                code="guest_model_not_allowed",
                param="model",
            )
        if caller.test_mode and not model.test:
            raise Forbidden(
                f"test keys can only call test models; {model.id!r} is a live model",
                code="test_key_live_model",
                param="model",
            )
        if caller.max_tokens_cap:
            body["max_tokens"] = min(int(body.get("max_tokens") or caller.max_tokens_cap), caller.max_tokens_cap)
        stream = bool(body.get("stream"))
        options = body.get("stream_options")
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))

        last_error: FaregateError | None = None
        routes = self.routes_for(model)
        for route in routes:
            provider = self._providers[route.provider]
            if not self.breakers.allow(route.provider):
                continue
            usage = Usage()
            try:
                if stream:
                    chunks = provider.chat_stream(route.model, body, usage, include_usage=include_usage)
                    first = await _first(chunks, provider.name)
                else:
                    completion = await provider.chat(route.model, body)
            except UpstreamError as exc:
                log.warning("route %s/%s failed before the first byte: %s", route.provider, route.model, exc)
                self.breakers.failure(route.provider)
                last_error = exc
                continue
            except BaseException:
                self.breakers.release_probe(route.provider)
                raise
            self.breakers.success(route.provider)
            break
        else:
            if last_error is not None and len(routes) == 1:
                raise last_error
            if last_error is None:
                raise ServiceUnavailable(
                    f"every provider for {model.id!r} is failing (circuit open); try again later",
                    code="circuit_open",
                    retry_after=min(self.breakers.retry_after(r.provider) for r in routes),
                )
            raise ServiceUnavailable(f"every provider for {model.id!r} failed", retry_after=1) from last_error

        record = _record(request, model, route, stream, started)
        if not stream:
            # The upstream has answered (and charged): meter it even if the client is gone.
            self._finish(record, completion.usage, body, started, None)
            yield pb.CompletionChunk(start=_start(model, route, stream), data=completion.body)
            return

        first_at = self._clock()
        status = UsageRecord.STATUS_CLIENT_CANCELLED
        try:
            yield pb.CompletionChunk(start=_start(model, route, stream), data=first)
            async for data in chunks:
                yield pb.CompletionChunk(data=data)
            status = UsageRecord.STATUS_OK
        except UpstreamError as exc:
            self.breakers.failure(route.provider)
            status = UsageRecord.STATUS_UPSTREAM_ERROR
            yield pb.CompletionChunk(
                error=pb.StreamError(type=exc.error_type, message=exc.message, code=exc.code or "")
            )
        finally:
            await chunks.aclose()
            self._finish(record, usage, body, started, first_at, status)

    async def embeddings(self, request: pb.CompletionRequest) -> pb.CompletionChunk:
        """Embeddings through the same catalog, caller checks, failover and metering; billed
        on input tokens only."""
        started = self._clock()
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise InvalidRequest("'model' is required and must be a string", param="model")
        items = body.get("input")
        if not (isinstance(items, str) and items) and not (isinstance(items, list) and items):
            raise InvalidRequest("'input' must be a non-empty string or array", param="input")
        model = self._catalog.model(body["model"])
        caller = request.caller
        if (caller.guest and not model.guest) or (caller.test_mode and not model.test):
            raise Forbidden(f"this key cannot use {model.id!r}", code="model_not_allowed", param="model")
        last_error: FaregateError | None = None
        for route in self.routes_for(model):
            if not self.breakers.allow(route.provider):
                continue
            try:
                answer = await self._providers[route.provider].embeddings(route.model, body)
            except UpstreamError as exc:
                self.breakers.failure(route.provider)
                last_error = exc
                continue
            except BaseException:
                self.breakers.release_probe(route.provider)
                raise
            self.breakers.success(route.provider)
            record = _record(request, model, route, False, started)
            record.endpoint = "embeddings"
            answer.usage.completion_tokens = 0
            self._finish(record, answer.usage, body, started, None)
            return pb.CompletionChunk(start=_start(model, route, False), data=answer.body)
        raise last_error or ServiceUnavailable(f"every provider for {model.id!r} is failing", retry_after=1)

    def _finish(
        self,
        record: UsageRecord,
        usage: Usage,
        body: dict[str, Any],
        started: float,
        first_at: float | None,
        status: int = UsageRecord.STATUS_OK,
    ) -> None:
        if not usage.reported:
            usage.prompt_tokens = usage.prompt_tokens or estimate_messages(body.get("messages") or [])
            usage.completion_tokens = usage.completion_tokens or usage.chunks
            record.estimated = True
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        record.cost_micros = token_cost(
            usage.prompt_tokens,
            usage.completion_tokens,
            record.prompt_price_micros,
            record.completion_price_micros,
        )
        now = self._clock()
        record.latency_ms = int((now - started) * 1000)
        record.ttft_ms = int((first_at - started) * 1000) if first_at else 0
        record.status = status  # type: ignore[assignment]  # protobuf enums are ints
        self._sink(record)


async def _first(chunks: AsyncGenerator[bytes, None], provider: str) -> bytes:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise UpstreamError(f"provider {provider} sent an empty stream") from None


def _start(model: Model, route: Route, stream: bool) -> pb.Start:
    return pb.Start(model=model.id, provider=route.provider, stream=stream)


def _record(request: pb.CompletionRequest, model: Model, route: Route, stream: bool, started: float) -> UsageRecord:
    c = request.caller
    return UsageRecord(
        request_id=request.request_id,
        account_id=c.account_id,
        key_id=c.key_id,
        model=model.id,
        provider=route.provider,
        provider_model=route.model,
        endpoint="chat.completions",
        prompt_price_micros=model.prompt_price_micros,
        completion_price_micros=model.completion_price_micros,
        billable=c.billable and not model.test,
        started_at_ms=int(started * 1000),
        stream=stream,
    )
