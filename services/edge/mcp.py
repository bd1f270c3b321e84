"""MCP: the account as tools for agents — one more adapter over the gateway core.

Two transports of the official ``mcp`` SDK, served by the edge on any replica:

- ``/v1/mcp`` — Streamable HTTP, stateless (no session kept: any replica answers any
  request) with JSON answers;
- ``/v1/mcp/sse`` — the HTTP+SSE transport, with its message endpoint at
  ``/v1/mcp/messages/`` (a session lives in the replica that holds its SSE stream).

Both with or without a trailing slash (no redirect), and behind a proxy's path prefix (the
ASGI ``root_path``). Every HTTP request is authenticated before MCP sees it: the same
``Authorization: Bearer`` key as the REST API (a bad key is a 401 in OpenAI's error shape,
never echoing the key); no key is the guest sandbox (at most ``GUEST_CONCURRENCY`` MCP calls
at once, the guest limits, free and test models only, nothing billed). A browser's
``Origin`` must be in ``FAREGATE_MCP_ALLOWED_ORIGINS`` or the request's own origin.

``chat_completion`` runs through ``Gateway.admit`` exactly as a REST chat completion does
(same key, limits, funds hold, routing, failover, metering). A Faregate error becomes a tool
result with ``isError: true`` whose text starts with the error's type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import orjson
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

import faregate
from faregate.errors import AuthenticationFailed, FaregateError, Forbidden, RateLimited
from faregate.money import micros_to_usd
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.router.v1 import router_pb2
from services.edge.callers import Credentials
from services.edge.clients import Clients, unary
from services.edge.errors import error_response
from services.edge.gateway import Gateway

log = logging.getLogger(__name__)

GUEST_CONCURRENCY = 64
PATH = "/v1/mcp"
_SCOPE_KEY = "faregate.mcp"  # where the wrapper leaves the caller for the tools


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]]


class ChatAnswer(BaseModel):
    id: str
    model: str
    content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    request_id: str


class ModelInfo(BaseModel):
    id: str
    name: str
    context_length: int
    prompt_usd_per_1m: float
    completion_usd_per_1m: float
    categories: list[str]
    features: list[str]
    input_modalities: list[str]


class Balance(BaseModel):
    balance_usd: float
    held_usd: float
    available_usd: float
    plan: str
    tokens_this_month: int
    quota_this_month: int | None
    spent_this_month_usd: float


class UsageGroup(BaseModel):
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class RequestInfo(BaseModel):
    id: str
    created: int
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: int
    status: str


class Pick(BaseModel):
    task: str
    category: str
    model: str
    provider: str
    reason: str
    alternatives: list[str]


class _Caller:
    """What the HTTP wrapper learnt of a request before MCP handles it."""

    def __init__(self, credentials: Credentials, identity: auth_pb2.AuthenticateResponse | None) -> None:
        self.credentials = credentials
        self.identity = identity  # None: the guest


def _caller(ctx: Context) -> _Caller:
    request = ctx.request_context.request
    caller = getattr(request, "scope", {}).get(_SCOPE_KEY) if request is not None else None
    if not isinstance(caller, _Caller):
        raise ToolError("invalid_auth: no caller for this request")
    return caller


def _account(ctx: Context) -> auth_pb2.AuthenticateResponse:
    identity = _caller(ctx).identity
    if identity is None:
        raise ToolError("invalid_auth: the guest sandbox has no account: send 'Authorization: Bearer gw_…'")
    return identity


def _tool_error(exc: FaregateError) -> ToolError:
    text = f"{exc.type}: {exc.message}"
    if exc.code:
        text += f" (code {exc.code})"
    if exc.retry_after is not None:
        text += f"; retry after {max(1, int(-(-exc.retry_after // 1)))} s"
    return ToolError(text)


@contextlib.contextmanager
def _as_tool_errors() -> Any:
    try:
        yield
    except FaregateError as exc:
        raise _tool_error(exc) from None


def build_server(gateway: Gateway, clients: Clients, new_request_id: Any) -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer(
        "faregate",
        version=faregate.__version__,
        instructions="Faregate: OpenAI-compatible LLM gateway. Chat with any catalog model and read your account.",
    )

    @mcp.tool(description="A chat completion (not streamed) through the gateway: billed to the key's account.")
    async def chat_completion(
        ctx: Context,
        model: Annotated[str, Field(description="a catalog model id or alias, or 'auto'")],
        messages: Annotated[list[Message], Field(min_length=1)],
        max_tokens: Annotated[int | None, Field(ge=1)] = None,
        temperature: Annotated[float | None, Field(ge=0, le=2)] = None,
        top_p: Annotated[float | None, Field(ge=0, le=1)] = None,
        stop: str | list[str] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ChatAnswer:
        caller = _caller(ctx)
        body: dict[str, Any] = {"model": model, "messages": [m.model_dump() for m in messages]}
        for name, value in (
            ("max_tokens", max_tokens),
            ("temperature", temperature),
            ("top_p", top_p),
            ("stop", stop),
            ("response_format", response_format),
        ):
            if value is not None:
                body[name] = value
        request_id = new_request_id()
        with _as_tool_errors():
            admit = gateway.admit(caller.credentials, orjson.dumps(body), request_id=request_id, entry="mcp")
            async with admit as admission:
                answer = orjson.loads(await admission.complete())
        choice = (answer.get("choices") or [{}])[0]
        usage = answer.get("usage") or {}
        return ChatAnswer(
            id=answer.get("id", ""),
            model=answer.get("model", model),
            content=(choice.get("message") or {}).get("content"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            request_id=request_id,
        )

    @mcp.tool(description="The catalog's models: context window, prices (USD per 1M tokens), capabilities.")
    async def list_models(category: str | None = None) -> list[ModelInfo]:
        with _as_tool_errors():
            reply = await unary(clients.router.ListModels, router_pb2.ListModelsRequest(category=category or ""))
        return [
            ModelInfo(
                id=m.id,
                name=m.name,
                context_length=m.context_length,
                prompt_usd_per_1m=m.pricing.prompt,
                completion_usd_per_1m=m.pricing.completion,
                categories=list(m.categories),
                features=list(m.features),
                input_modalities=list(m.input_modalities),
            )
            for m in reply.models
        ]

    @mcp.tool(description="The account's wallet: balance, funds held by requests in flight, plan and monthly use.")
    async def get_balance(ctx: Context) -> Balance:
        me = _account(ctx)
        with _as_tool_errors():
            w = await unary(clients.billing.GetWallet, billing_pb2.GetWalletRequest(account_id=me.account_id))
        return Balance(
            balance_usd=micros_to_usd(w.balance_micros),
            held_usd=micros_to_usd(w.held_micros),
            available_usd=micros_to_usd(w.balance_micros - w.held_micros),
            plan=me.plan,
            tokens_this_month=w.tokens_this_month,
            quota_this_month=me.monthly_token_quota if me.HasField("monthly_token_quota") else None,
            spent_this_month_usd=micros_to_usd(w.used_this_month_micros),
        )

    @mcp.tool(description="Requests, tokens and cost per model, key or day between two times (Unix seconds).")
    async def get_usage(
        ctx: Context,
        start: Annotated[int | None, Field(ge=0)] = None,
        end: Annotated[int | None, Field(ge=0)] = None,
        group_by: Literal["model", "key", "day"] = "model",
    ) -> list[UsageGroup]:
        me = _account(ctx)
        with _as_tool_errors():
            reply = await unary(
                clients.billing.GetUsage,
                billing_pb2.GetUsageRequest(
                    account_id=me.account_id,
                    start_ms=(start or 0) * 1000,
                    end_ms=(end or 0) * 1000,
                    group_by=group_by,
                ),
            )
        return [
            UsageGroup(
                group=g.group,
                requests=g.requests,
                prompt_tokens=g.prompt_tokens,
                completion_tokens=g.completion_tokens,
                cost_usd=micros_to_usd(g.cost_micros),
            )
            for g in reply.groups
        ]

    @mcp.tool(description="The account's most recent requests: metadata only, never prompt or completion text.")
    async def list_requests(ctx: Context, limit: Annotated[int, Field(ge=1, le=500)] = 20) -> list[RequestInfo]:
        me = _account(ctx)
        with _as_tool_errors():
            reply = await unary(
                clients.billing.ListRequests, billing_pb2.ListRequestsRequest(account_id=me.account_id, limit=limit)
            )
        return [
            RequestInfo(
                id=r.request_id,
                created=r.started_at_ms // 1000,
                model=r.model,
                provider=r.provider,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                cost_usd=micros_to_usd(r.cost_micros),
                latency_ms=r.latency_ms,
                status=r.status,
            )
            for r in reply.requests
        ]

    @mcp.tool(description="The auto-router's pick of a model for a task (free text or a category).")
    async def pick_model(task: Annotated[str, Field(max_length=2000)]) -> Pick:
        with _as_tool_errors():
            reply = await unary(clients.router.AutoRoute, router_pb2.AutoRouteRequest(task=task))
        return Pick(
            task=reply.task,
            category=reply.category,
            model=reply.primary.id,
            provider=reply.primary.provider,
            reason=reply.primary.reason,
            alternatives=[a.id for a in reply.alternatives],
        )

    return mcp


class McpEndpoint:
    """The ASGI app behind ``/v1/mcp…``: checks the origin and the key, then hands the
    request to the SDK's transport. Built in the edge's lifespan; ``running`` keeps the
    Streamable HTTP manager's task group for the edge's lifetime."""

    def __init__(
        self,
        gateway: Gateway,
        clients: Clients,
        new_request_id: Any,
        *,
        allowed_origins: list[str],
        client_ip: Any,
        forwarded_prefix: Any = lambda request: "",
    ) -> None:
        self._clients = clients
        self._client_ip = client_ip
        self._forwarded_prefix = forwarded_prefix
        self._allowed_origins = allowed_origins
        self._guests = asyncio.Semaphore(GUEST_CONCURRENCY)
        self.server = build_server(gateway, clients, new_request_id)
        off = TransportSecuritySettings(enable_dns_rebinding_protection=False)  # the origin check is ours, below
        self._streamable: ASGIApp = self.server.streamable_http_app(
            streamable_http_path="/", stateless_http=True, json_response=True, transport_security=off
        )
        self._sse: ASGIApp = self.server.sse_app(sse_path="/sse", message_path="/messages/", transport_security=off)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        request = Request(scope, receive)
        if refused := self._refused_origin(request.headers):
            await error_response(refused)(scope, receive, send)
            return
        try:
            caller = await self._identify(request)
        except FaregateError as exc:
            await error_response(exc)(scope, receive, send)
            return
        rest = scope["path"][len(PATH) :].rstrip("/")
        inner = dict(scope)
        # the SSE transport announces its message endpoint by path: behind a proxy that strips
        # a prefix, the client must be told the prefix too (X-Forwarded-Prefix, trusted proxies)
        inner["root_path"] = self._forwarded_prefix(request) + scope.get("root_path", "") + PATH
        inner[_SCOPE_KEY] = caller
        if rest in ("/sse", "/messages"):
            inner["path"] = rest + ("/" if rest == "/messages" else "")
            app = self._sse
        else:
            inner["path"] = "/"
            app = self._streamable
        if caller.identity is not None:
            await app(inner, receive, send)
            return
        if self._guests.locked():
            refused_guest = RateLimited(
                f"the guest sandbox takes at most {GUEST_CONCURRENCY} MCP calls at once", retry_after=1
            )
            await error_response(refused_guest)(scope, receive, send)
            return
        async with self._guests:
            await app(inner, receive, send)

    def _refused_origin(self, headers: Headers) -> FaregateError | None:
        origin = headers.get("origin")
        if origin is None:  # not a browser
            return None
        own = {f"http://{headers.get('host', '')}", f"https://{headers.get('host', '')}"}
        if origin in own or "*" in self._allowed_origins or origin in self._allowed_origins:
            return None
        return Forbidden("this origin may not call the MCP endpoint (FAREGATE_MCP_ALLOWED_ORIGINS)")

    async def _identify(self, request: Any) -> _Caller:
        from services.edge.context import bearer

        key = bearer(request)
        credentials = Credentials(key, self._client_ip(request))
        if not key:
            return _Caller(credentials, None)
        identity = await unary(
            self._clients.auth.Identify, auth_pb2.AuthenticateRequest(api_key=key, client_ip=credentials.client_ip)
        )
        if not identity.account_id:
            raise AuthenticationFailed("invalid API key")
        return _Caller(credentials, identity)
