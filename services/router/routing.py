"""Routing a request: model → attempts (model, route) → provider, and the usage it costs.

``ChatRouter.plan`` turns a body and its caller into the ordered attempts: the model's route
chain shaped by the key's routing mode (auto / preferred / failover), then the chains of an
OpenRouter-style ``models: [...]`` fallback list; ``"model": "auto"`` asks the auto-router.
``_first_answer`` walks the attempts: a provider whose breaker is open or which asked us to
wait (Retry-After) is skipped; a connect error, timeout, 5xx, 429 or a stream with no first
chunk within ``first_token_timeout`` moves on to the next. All of that happens before the
first byte reaches the client; after it, an upstream failure ends the stream with an
``error`` chunk. Whatever happens after the upstream answered, one UsageRecord goes to the
usage sink (never the text), priced at the model's prices when the request started.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from faregate.errors import (
    ContentPolicy,
    FaregateError,
    InvalidRequest,
    ProvidersUnavailable,
    Reason,
    UpstreamError,
    UpstreamTimeout,
)
from faregate.money import token_cost
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from faregate.tokens import estimate_messages
from faregate.values import RoutingMode
from services.router.autoroute import AUTO_MODEL, AutoRouter
from services.router.breakers import Breakers, LocalBreakers
from services.router.calls import Caller, Chunk, CompletionCall, Start
from services.router.catalog import Catalog, Model, Route
from services.router.providers.base import Completion, Provider, Usage

log = logging.getLogger(__name__)

UsageSink = Callable[[UsageRecord], None]
T = TypeVar("T")
MAX_FALLBACKS = 8


def _parse_common(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    fallbacks = body.get("models")
    if fallbacks is not None and (
        not isinstance(fallbacks, list)
        or not all(isinstance(m, str) and m for m in fallbacks)
        or len(fallbacks) > MAX_FALLBACKS
    ):
        raise InvalidRequest(f"'models' must be an array of at most {MAX_FALLBACKS} model ids", param="models")
    if body.get("model") is None and fallbacks:
        body["model"] = fallbacks[0]  # OpenRouter: models alone means "the first, then the rest"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    task = body.get("task")
    if task is not None and not isinstance(task, str):
        raise InvalidRequest("'task' must be a string", param="task")
    return body


def parse_body(raw: bytes) -> dict[str, Any]:
    body = _parse_common(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):  # null: OpenAI's default
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return body


@dataclass(frozen=True)
class Attempt:
    model: Model  # as it was when the request started (its prices are the ones billed)
    route: Route


class ChatRouter:
    def __init__(
        self,
        catalog: Catalog,
        providers: Mapping[str, Provider],
        usage_sink: UsageSink,
        clock: Callable[[], float] = time.time,
        breakers: Breakers | None = None,
        first_token_timeout: float = 20.0,
    ) -> None:
        self._catalog = catalog
        self._providers = providers
        self.breakers = breakers or LocalBreakers()
        self.auto = AutoRouter(catalog, self.breakers, self._usable)
        self._sink = usage_sink
        self._clock = clock
        self._first_token_timeout = first_token_timeout

    # -- planning ---------------------------------------------------------------------------

    def _usable(self, route: Route) -> bool:
        provider = self._catalog.providers[route.provider]
        return provider.configured and route.provider in self._providers

    def _check_caller(self, model: Model, caller: Caller) -> None:
        if caller.guest and not model.guest:
            raise ContentPolicy(
                f"the keyless guest sandbox can only call guest models; {model.id!r} needs an API key",
                reason=Reason.GUEST_MODEL_NOT_ALLOWED,
                param="model",
            )
        if caller.test_mode and not model.test:
            raise ContentPolicy(
                f"test keys can only call test models; {model.id!r} is a live model",
                reason=Reason.TEST_KEY_LIVE_MODEL,
                param="model",
            )

    def chain(self, model: Model, caller: Caller) -> list[Route]:
        """The model's routes in the order the caller's routing mode asks for."""
        mode = caller.routing_mode
        preferred = caller.preferred_provider
        usable = [r for r in model.routes if self._usable(r)]
        if mode is RoutingMode.FAILOVER:
            pinned = [r for r in model.routes if r.provider == preferred]
            if not pinned:
                raise InvalidRequest(
                    f"this key routes only to provider {preferred!r} (failover mode); it does not serve {model.id!r}",
                    code="model_not_on_preferred_provider",
                    param="model",
                )
            return [r for r in pinned if self._usable(r)]
        if mode is RoutingMode.PREFERRED and preferred:
            usable.sort(key=lambda r: r.provider != preferred)  # stable: the rest keep the chain's order
        return usable

    async def plan(self, body: dict[str, Any], caller: Caller, *, endpoint: str = "chat") -> list[Attempt]:
        """Every (model, route) to try, in order; the Faregate-only fields leave the body."""
        task = body.pop("task", None) or ""
        fallbacks = body.pop("models", None) or []
        ids: list[str] = []
        for model_id in [body["model"], *fallbacks]:
            if model_id == AUTO_MODEL:
                hint = task or ("embedding" if endpoint == "embeddings" else _task_from_body(body))
                choices = await self.auto.choose(hint, caller=caller)
                ids.extend(c.model.id for c in choices.ranked)
            else:
                ids.append(model_id)
        models: list[Model] = []
        for model_id in ids:
            model = self._catalog.model(model_id)
            if model not in models:
                self._check_caller(model, caller)
                _check_endpoint(model, endpoint)
                models.append(model)
        attempts = [Attempt(m, r) for m in models for r in self.chain(m, caller)]
        if not attempts:
            first = models[0]
            keys = sorted({v for r in first.routes for v in self._catalog.providers[r.provider].missing_env})
            raise ProvidersUnavailable(
                f"no provider is configured for model {first.id!r}: set {' or '.join(keys)}",
                code="provider_not_configured",
            )
        return attempts

    # -- failover ---------------------------------------------------------------------------

    async def _first_answer(
        self, attempts: list[Attempt], call: Callable[[Provider, Attempt], Awaitable[T]]
    ) -> tuple[Attempt, T]:
        """The first attempt that answers; skipped and failed ones are recorded on the breakers."""
        tried: list[UpstreamError] = []
        waits: list[float] = []
        for attempt in attempts:
            provider = attempt.route.provider
            permit = await self.breakers.allow(provider)
            if not permit.allowed:
                waits.append(permit.wait)
                continue
            try:
                result = await call(self._providers[provider], attempt)
            except UpstreamError as exc:
                log.warning("route %s/%s failed before the first byte: %s", provider, attempt.route.model, exc)
                await self._failed(provider, exc)
                tried.append(exc)
                continue
            except FaregateError:
                await self.breakers.success(provider, permit)  # it answered: the request was at fault
                raise
            except BaseException:
                await self.breakers.release_probe(provider)
                raise
            await self.breakers.success(provider, permit)
            return attempt, result
        model_id = attempts[0].model.id
        if len(tried) == 1 and not waits:
            raise tried[0]  # one provider tried and failed: its error, 502
        if not tried:
            raise ProvidersUnavailable(
                f"every provider for {model_id!r} is unavailable (circuit open or asked us to wait); try again later",
                code="circuit_open",
                retry_after=max(1.0, min(waits)),
            )
        raise ProvidersUnavailable(
            f"every provider for {model_id!r} failed ({len(tried)} tried)",
            retry_after=max(1.0, min(waits)) if waits else 1,
        ) from tried[-1]

    async def _failed(self, provider: str, exc: UpstreamError) -> None:
        """An attempt failed: the breaker counts it only if the failure is the provider's
        (:func:`provider_fault`); a Retry-After is honoured either way."""
        await self.breakers.failure(provider, exc.retry_after, counts=provider_fault(exc))

    async def _open_stream(
        self, provider: Provider, attempt: Attempt, body: dict[str, Any], include_usage: bool
    ) -> tuple[AsyncGenerator[list[bytes], None], list[bytes], Usage]:
        usage = Usage()  # per attempt: a failed attempt's partial counts are not ours
        chunks = provider.chat_batches(attempt.route.model, body, usage, include_usage=include_usage)
        try:
            async with asyncio.timeout(self._first_token_timeout):
                first = await anext(chunks)
        except StopAsyncIteration:
            raise UpstreamError(f"provider {provider.name} sent an empty stream") from None
        except TimeoutError:
            await chunks.aclose()
            raise UpstreamTimeout(
                f"provider {provider.name} sent no first token within {self._first_token_timeout:g} s"
            ) from None
        except BaseException:
            await chunks.aclose()
            raise
        return chunks, first, usage

    # -- chat completions -------------------------------------------------------------------

    async def chat(self, call: CompletionCall) -> AsyncGenerator[Chunk, None]:
        started = self._clock()
        body = parse_body(call.body)
        caller = call.caller
        attempts = await self.plan(body, caller)
        cap_output(body, caller.max_tokens_cap)
        stream = bool(body.get("stream"))
        options = body.get("stream_options")
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))

        if not stream:

            async def complete(provider: Provider, attempt: Attempt) -> Completion:
                return await provider.chat(attempt.route.model, body)

            attempt, completion = await self._first_answer(attempts, complete)
            # The upstream has answered (and charged): meter it even if the client is gone.
            self._finish(_record(call, attempt, False, started), completion.usage, body, started, None)
            yield Chunk([completion.body], _start(attempt, False))
            return

        async def open_stream(
            provider: Provider, attempt: Attempt
        ) -> tuple[AsyncGenerator[list[bytes], None], list[bytes], Usage]:
            return await self._open_stream(provider, attempt, body, include_usage)

        attempt, (chunks, first, usage) = await self._first_answer(attempts, open_stream)
        first_at = self._clock()
        record = _record(call, attempt, True, started)
        status = UsageRecord.STATUS_CLIENT_CANCELLED
        try:
            yield Chunk(first, _start(attempt, True))
            async for batch in chunks:  # what arrived together travels as one message (ADR 8)
                yield Chunk(batch)
            status = UsageRecord.STATUS_OK
        except UpstreamError as exc:
            await self._failed(attempt.route.provider, exc)
            status = UsageRecord.STATUS_UPSTREAM_ERROR
            yield Chunk([], error=exc)
        finally:
            await chunks.aclose()
            self._finish(record, usage, body, started, first_at, status)

    # -- embeddings -------------------------------------------------------------------------

    async def embeddings(self, call: CompletionCall) -> Chunk:
        """Embeddings through the same catalog, caller checks, failover and metering; billed
        on input tokens only."""
        started = self._clock()
        body = _parse_common(call.body)
        items = body.get("input")
        if not (isinstance(items, str) and items) and not (isinstance(items, list) and items):
            raise InvalidRequest("'input' must be a non-empty string or array", param="input")
        attempts = await self.plan(body, call.caller, endpoint="embeddings")

        async def embed(provider: Provider, attempt: Attempt) -> Completion:
            return await provider.embeddings(attempt.route.model, body)

        attempt, answer = await self._first_answer(attempts, embed)
        record = _record(call, attempt, False, started)
        record.endpoint = f"{call.entry}:embeddings" if call.entry else "embeddings"
        answer.usage.completion_tokens = 0
        self._finish(record, answer.usage, body, started, None)
        return Chunk([answer.body], _start(attempt, False))

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
        # Whole milliseconds, rounded up: a stream that sent a first token took some time.
        record.ttft_ms = math.ceil((first_at - started) * 1000) if first_at else 0
        record.status = status  # type: ignore[assignment]  # protobuf enums are ints
        self._sink(record)


def _check_endpoint(model: Model, endpoint: str) -> None:
    """An embeddings call needs an embedding model (category ``embedding``): a chat model
    there would be sent to an upstream that cannot answer it."""
    if endpoint == "embeddings" and "embedding" not in model.categories:
        raise InvalidRequest(f"model {model.id!r} is not an embedding model", code="model_not_embedding", param="model")


def cap_output(body: dict[str, Any], cap: int) -> None:
    """Apply a caller's cap on output tokens (the guest's, a key's ``max_tokens_cap``; 0: none)
    to every field that bounds the output: ``max_tokens`` and ``max_completion_tokens`` (each
    upstream honours one or the other), and ``n`` choices together — each gets ``cap // n``
    (at least 1). With neither field given, ``max_tokens`` is set."""
    if not cap:
        return
    n = body.get("n")
    per_choice = max(1, cap // n) if isinstance(n, int) and n > 1 else cap
    given = False
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None:
            body[name] = min(int(value), per_choice)
            given = True
    if not given:
        body["max_tokens"] = per_choice


def provider_fault(exc: UpstreamError) -> bool:
    """Whether an upstream failure is the provider's and counts against its breaker: it was
    unreachable, timed out, cut the answer off, answered garbage or a 5xx (or refused our
    credentials) — to a body the edge has checked against OpenAI's schema
    (services/edge/requests.py), so a tenant's malformed input never gets here. A 429 is the
    provider pacing us, not failing: its Retry-After cools the provider, it opens nothing
    (one tenant's burst must not shut a provider for everyone)."""
    return exc.code != "upstream_429"


def _task_from_body(body: dict[str, Any]) -> str:
    """A task hint when none was given: pictures in the messages ask for vision."""
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return "vision"
    return ""


def _start(attempt: Attempt, stream: bool) -> Start:
    return Start(attempt.model.id, attempt.route.provider, stream)


def _record(call: CompletionCall, attempt: Attempt, stream: bool, started: float) -> UsageRecord:
    c, model = call.caller, attempt.model
    return UsageRecord(
        request_id=call.request_id,
        account_id=c.account_id,
        key_id=c.key_id,
        model=model.id,
        provider=attempt.route.provider,
        provider_model=attempt.route.model,
        endpoint=f"{call.entry}:chat.completions" if call.entry else "chat.completions",
        prompt_price_micros=model.prompt_price_micros,
        completion_price_micros=model.completion_price_micros,
        billable=c.billable and not model.test,
        started_at_ms=int(started * 1000),
        stream=stream,
    )
