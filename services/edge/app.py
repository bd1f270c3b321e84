"""The edge: FastAPI app factory and its uvicorn server. It holds no business state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from faregate.settings import EdgeSettings, split_host_port
from services.edge import errors
from services.edge.clients import Clients
from services.edge.context import EdgeContext, parse_networks
from services.edge.funds import Funds
from services.edge.routes import admin, billing, chat, health, keys, models, providers, webhooks
from services.edge.slots import SlotReleases

log = logging.getLogger(__name__)


def create_app(settings: EdgeSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        clients = Clients.connect(settings)
        funds = Funds(clients.router)
        funds.start(settings.nats_url)
        releases = SlotReleases(clients.auth)
        try:
            ctx = EdgeContext(
                settings, clients, settings.admin_secret(), funds, releases, parse_networks(settings.trusted_proxies)
            )
            yield {"edge": ctx}
        finally:
            await releases.close()
            await funds.close()
            await clients.close()

    app = FastAPI(title="Faregate", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app)
    app.add_route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    app.add_route("/v1/embeddings", chat.embeddings, methods=["POST"])
    for module in (models, keys, billing, providers, admin, health, webhooks):
        app.include_router(module.router)
    return app


async def serve(settings: EdgeSettings) -> None:
    host, port = split_host_port(settings.http_addr)
    config = uvicorn.Config(
        create_app(settings),
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
