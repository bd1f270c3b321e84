"""Wires the router: catalog, provider adapters, usage publisher, gRPC server."""

from __future__ import annotations

import logging

from faregate import events
from faregate.grpc import start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.pb.router.v1 import router_pb2, router_pb2_grpc
from faregate.runtime import Supervisor, run_until_stopped
from faregate.settings import RouterSettings
from services.router.breakers import Breakers, LocalBreakers, RedisBreakers
from services.router.catalog import Catalog, load_catalog
from services.router.pricing import PriceBook
from services.router.providers.anthropic import AnthropicProvider
from services.router.providers.base import Provider
from services.router.providers.client import make_session
from services.router.providers.echo import EchoProvider
from services.router.providers.openai import OpenAIProvider
from services.router.routing import ChatRouter
from services.router.servicer import RouterServicer

log = logging.getLogger(__name__)


def build_providers(catalog: Catalog, settings: RouterSettings) -> tuple[dict[str, Provider], object]:
    session = make_session(settings.upstream_pool_size, settings.upstream_connect_timeout, settings.upstream_timeout)
    providers: dict[str, Provider] = {}
    for name, cfg in catalog.providers.items():
        if cfg.kind == "openai":
            providers[name] = OpenAIProvider(cfg, session)
        elif cfg.kind == "anthropic":
            providers[name] = AnthropicProvider(cfg, session)
        elif cfg.kind == "echo":
            providers[name] = EchoProvider("faregate/echo")
        else:
            log.warning("provider %s: kind %r is not supported yet; its models will not route", name, cfg.kind)
    return providers, session


def make_breakers(settings: RouterSettings) -> Breakers:
    numbers = (settings.breaker_threshold, settings.breaker_open_seconds, settings.breaker_probe_seconds)
    if settings.redis_url:
        import redis.asyncio as aioredis

        return RedisBreakers(aioredis.Redis.from_url(settings.redis_url), settings.redis_prefix, *numbers)
    return LocalBreakers(*numbers)


async def serve(settings: RouterSettings) -> None:
    if not settings.nats_url:
        raise SystemExit("FAREGATE_NATS_URL is required for the router (faregate up starts a private NATS)")
    catalog = load_catalog(settings.config)
    providers, session = build_providers(catalog, settings)
    nc = await events.connect(settings.nats_url, name="faregate-router")
    js = nc.jetstream()
    stream = events.UsageStream(settings.usage_stream, settings.usage_subject)
    await events.ensure_stream(js, stream)
    publisher = events.UsagePublisher(js, stream)
    breakers = make_breakers(settings)
    prices = PriceBook(catalog, js, nc, settings.catalog_bucket)
    await prices.start()
    supervisor = Supervisor("router")
    supervisor.add("usage-publisher", publisher.run, ready=lambda: nc.is_connected)
    supervisor.add("price-book", prices.follow, required=False)
    router = ChatRouter(
        catalog, providers, publisher.submit, breakers=breakers, first_token_timeout=settings.first_token_timeout
    )
    addr = settings.bind_addr(settings.router_addr)
    servicer = RouterServicer(router, catalog, prices)
    supervisor.start()
    server, _ = await start_server(
        addr,
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, s),
        [router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name],
        supervisor,
    )
    log.info(
        "router listening on %s with %d models (breakers %s)",
        addr,
        len(catalog.models),
        "shared in Redis" if settings.redis_url else "in process",
    )
    await run_until_stopped(
        supervisor,
        server,
        wait_for_shutdown,
        stop_admitting=[servicer.calls.close],
        flush=[publisher.flush],
        close=[prices.close, breakers.close, session.close, nc.drain],  # type: ignore[attr-defined]
    )
