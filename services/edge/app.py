"""The edge: FastAPI app factory and its uvicorn server. It holds no business state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import faregate
from faregate.errors import FaregateError, MethodNotAllowed, NotFound
from faregate.processes import split_host_port
from faregate.runtime import Supervisor
from faregate.settings import EdgeSettings
from services.edge import errors
from services.edge.changes import follow_changes
from services.edge.clients import AuthClient, BillingClient, Clients, RouterClient
from services.edge.context import EdgeContext, FailureThrottle, new_request_id, parse_networks
from services.edge.gateway import Gateway
from services.edge.mcp import PATH as MCP_PATH
from services.edge.mcp import McpEndpoint
from services.edge.protocol import HttpLimits, protocol_class
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
        ctx = EdgeContext(
            settings,
            clients,
            settings.admin_secret(),
            gateway,
            supervisor,
            trusted,
            FailureThrottle(settings.admin_failures_per_minute),
        )
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
AdminRoutes = Literal["also", "only", "never"]


def _is_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


class HotPath:
    """The inference routes as bare ASGI in front of the FastAPI app (ADR 2): no middleware
    stack or route matching on every request and every streamed write; a failure before the
    answer starts leaves through the same error boundary (errors.failure_response; after it,
    a streamed answer ends with an error event). Everything else, the lifespan included,
    is the app's.

    No failure breaks the connection: an exception that leaves the app after its answer was
    sent (Starlette re-raises a 500 it has answered) is not handed to the server, which would
    close a keep-alive connection under the client's next request. ``admin`` says which
    routes this listener serves: ``also`` /admin/* with the rest, ``only`` /admin/*
    (FAREGATE_ADMIN_ADDR; ``state`` then gives the lifespan's state of the public listener),
    ``never`` the rest alone (404 for /admin/*)."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Mapping[str, Endpoint],
        *,
        admin: AdminRoutes = "also",
        state: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._app = app
        self._routes = routes
        self._admin = admin
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._state is not None:
            scope["state"].update(self._state())
        path = scope["path"]
        if path.startswith(MCP_PATH) and path[len(MCP_PATH) : len(MCP_PATH) + 1] in "/" and self._admin != "only":
            await scope["state"]["edge"].mcp(scope, receive, send)  # any method, with or without a slash
            return
        if self._admin != "also" and _is_admin(path) != (self._admin == "only"):
            await self._refuse(NotFound(f"no route {scope['method']} {path}"), scope, receive, send)
            return
        endpoint = self._routes.get(path)
        if endpoint is None:
            await self._app_keeping_the_connection(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self._refuse(MethodNotAllowed(f"{scope['method']} is not allowed on {path}"), scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            await endpoint(request, send)
        except Exception as exc:
            await errors.failure_response(request, exc)(scope, receive, send)

    async def _app_keeping_the_connection(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, tracked)
        except Exception as exc:
            if not started:
                await errors.failure_response(Request(scope, receive), exc)(scope, receive, send)
            # else: answered (and logged) by the app's error handler already

    @staticmethod
    async def _refuse(error: FaregateError, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.error_response(error)
        if isinstance(error, MethodNotAllowed):
            response.headers["Allow"] = "POST"
        await response(scope, receive, send)


INFERENCE_ROUTES: dict[str, Endpoint] = {
    "/v1/chat/completions": chat.chat_completions,
    "/v1/embeddings": chat.embeddings,
}


def create_asgi(settings: EdgeSettings, app: FastAPI | None = None) -> HotPath:
    """What uvicorn serves: the hot routes, then the FastAPI app."""
    app = app or create_app(settings)
    return HotPath(app, INFERENCE_ROUTES, admin="never" if settings.admin_addr else "also")


def server_config(app: ASGIApp, settings: EdgeSettings, addr: str, *, lifespan: bool = True) -> uvicorn.Config:
    """uvicorn's configuration of one edge listener, with the HTTP limits (protocol.py)."""
    host, port = split_host_port(addr)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=protocol_class(HttpLimits.of(settings)),
        ws="none",
        access_log=False,
        log_level="warning",
        lifespan="on" if lifespan else "off",
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is trusted only from FAREGATE_TRUSTED_PROXIES (context.py)
        timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]  # a float works
        timeout_graceful_shutdown=10,
    )


class _Listener(uvicorn.Server):
    """The public listener; ``up`` is set once it serves (its lifespan has run)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()


class _Follower(uvicorn.Server):
    """A second listener of the same process: the first one owns the signals and the lifespan."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: EdgeSettings) -> None:
    app = create_app(settings)
    asgi = create_asgi(settings, app)
    public = _Listener(server_config(asgi, settings, settings.http_addr))
    log.info("edge listening on http://%s", settings.http_addr)
    if not settings.admin_addr:
        await public.serve()
        return
    admin_asgi = HotPath(app, {}, admin="only", state=lambda: public.lifespan.state)
    admin = _Follower(server_config(admin_asgi, settings, settings.admin_addr, lifespan=False))
    serving = asyncio.create_task(public.serve())
    up = asyncio.create_task(public.up.wait())
    await asyncio.wait((serving, up), return_when=asyncio.FIRST_COMPLETED)
    if not up.done():  # it stopped before serving
        up.cancel()
        await serving
        return
    log.info("edge admin API on http://%s", settings.admin_addr)
    admin_serving = asyncio.create_task(admin.serve())
    try:
        await serving
    finally:
        admin.should_exit = True
        await admin_serving
