"""The edge: FastAPI app factory and its uvicorn server. It holds no business state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

import faregate
from faregate.processes import split_host_port
from faregate.runtime import Supervisor
from faregate.settings import EdgeSettings
from services.edge import errors
from services.edge.changes import follow_changes
from services.edge.clients import AuthClient, BillingClient, Clients, RouterClient
from services.edge.context import EdgeContext, new_request_id, parse_networks
from services.edge.gateway import Gateway
from services.edge.mcp import PATH as MCP_PATH
from services.edge.mcp import McpEndpoint
from services.edge.routes import admin, billing, chat, health, keys, models, providers, webhooks

log = logging.getLogger(__name__)


def create_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        clients = Clients.connect(settings)
        gateway = Gateway(
            AuthClient(clients), BillingClient(clients), RouterClient(clients), max_body_bytes=settings.max_body_bytes
        )
        supervisor = Supervisor("edge")
        for name, run in gateway.components().items():
            supervisor.add(name, run)
        if settings.nats_url:
            nats_url = settings.nats_url
            # not required: without it, prices refresh on their timer and grants end within a second
            supervisor.add(
                "nats-changes",
                lambda: follow_changes(nats_url, gateway.prices.changed, gateway.key_changed),
                required=False,
            )
        supervisor.start()
        trusted = parse_networks(settings.trusted_proxies)
        ctx = EdgeContext(settings, clients, settings.admin_secret(), gateway, supervisor, trusted)
        ctx.mcp = mcp = McpEndpoint(
            gateway,
            clients,
            new_request_id,
            allowed_origins=[o.strip() for o in settings.mcp_allowed_origins.split(",") if o.strip()],
            client_ip=ctx.client_ip,
            forwarded_prefix=ctx.forwarded_prefix,
        )
        try:
            async with mcp.running():
                yield {"edge": ctx}
        finally:
            # in order: stop the background work, give back what the edge holds, close
            await supervisor.stop()
            await gateway.close()
            await clients.close()

    app = FastAPI(title="Faregate", version=faregate.__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app)
    for module in (models, keys, billing, providers, admin, health, webhooks):
        app.include_router(module.router)
    return app


Endpoint = Callable[[Request, Send], Awaitable[None]]


class HotPath:
    """The inference routes as bare ASGI in front of the FastAPI app (ADR 2): no middleware
    stack or route matching on every request and every streamed write; a failure before the
    answer starts leaves through the same error boundary (errors.failure_response; after it,
    a streamed answer ends with an error event). Everything else, the lifespan included,
    is the app's."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Endpoint]) -> None:
        self._app = app
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(MCP_PATH) and path[len(MCP_PATH) : len(MCP_PATH) + 1] in "/":
            await scope["state"]["edge"].mcp(scope, receive, send)  # any method, with or without a slash
            return
        endpoint = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            await endpoint(request, send)
        except Exception as exc:
            await errors.failure_response(request, exc)(scope, receive, send)


def create_asgi(settings: EdgeSettings) -> HotPath:
    """What uvicorn serves: the hot routes, then the FastAPI app."""
    routes = {"/v1/chat/completions": chat.chat_completions, "/v1/embeddings": chat.embeddings}
    return HotPath(create_app(settings), routes)


async def serve(settings: EdgeSettings) -> None:
    host, port = split_host_port(settings.http_addr)
    config = uvicorn.Config(
        create_asgi(settings),
        host=host,
        port=port,
        loop="none",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is trusted only from FAREGATE_TRUSTED_PROXIES (context.py)
        timeout_graceful_shutdown=10,
    )
    log.info("edge listening on http://%s:%d", host, port)
    await uvicorn.Server(config).serve()
