"""gRPC plumbing shared by every service: servers, channels, and the error boundary."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from faregate.errors import FaregateError, Status, error_of, status_of
from faregate.pb.rpc.v1 import runtime_pb2, runtime_pb2_grpc
from faregate.runtime import State, Supervisor

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    # a peer too busy to answer a ping at once is not a dead one: every stream on the
    # connection would fail with it (seen with thousands of open streams on two cores)
    ("grpc.keepalive_timeout_ms", 60_000),
    # a restarted peer is found again within a fraction of a second, not gRPC's default 20 s
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns what a servicer raised into its gRPC status (faregate.errors.status_of): a
    FaregateError's code, message and detail, or (a bug, logged) a bare INTERNAL.
    Wrapped handlers are cached per method so the per-call cost is one dict lookup.
    """

    def __init__(self) -> None:
        self._cache: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = _wrap(handler, method)
        self._cache[method] = wrapped
        return wrapped


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except Exception as exc:
                await _abort(context, status_of(exc, method))

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream is not None:
        inner_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in inner_stream(request, context):
                    yield item
            except Exception as exc:
                await _abort(context, status_of(exc, method))

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    return handler


async def _abort(context: grpc.aio.ServicerContext, status: Status) -> None:
    await context.abort(status.code, status.message, trailing_metadata=status.metadata())


def error_from_rpc(exc: grpc.aio.AioRpcError) -> FaregateError:
    """The FaregateError a peer raised, rebuilt on the calling side."""
    return error_of(Status.from_metadata(exc.code(), exc.details() or "", exc.trailing_metadata() or ()))


async def start_server(
    addr: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    supervisor: Supervisor | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A started grpc.aio server with our interceptor, health service and reflection.

    With a ``supervisor`` its health ("" and each service name) follows the supervisor:
    NOT_SERVING while a required component is down; and ``faregate.rpc.v1.Runtime`` lists
    the components. Without one the server is SERVING once started."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.so_reuseport", 0),
            # accept our clients' keepalive pings (every 30 s) instead of answering GOAWAY
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
            # a burst of new calls waits for the event loop instead of being cancelled by the
            # core once 1,000 are pending (seen opening thousands of streams at once)
            ("grpc.server_max_pending_requests", 100_000),
            ("grpc.server_max_pending_requests_hard_limit", 100_000),
            ("grpc.server_max_unrequested_time_in_server", 120),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    extra = []
    if supervisor is not None:
        runtime_pb2_grpc.add_RuntimeServicer_to_server(RuntimeServicer(supervisor), server)
        extra.append(runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name)
    reflection.enable_server_reflection([*names, *extra, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if server.add_insecure_port(addr) == 0:
        raise OSError(f"cannot listen on {addr}")
    await server.start()
    if supervisor is None:
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    else:
        reporter = HealthReporter(health_servicer, ["", *names], supervisor.serving)
        await reporter.apply()
        supervisor.watch(reporter.changed)
        supervisor.add("grpc-health", reporter.run, required=False)
    return server, health_servicer


class HealthReporter:
    """Carries a supervisor's ``serving`` flips (told synchronously) to grpc.health.v1 (whose
    ``set`` is a coroutine), always the latest value."""

    def __init__(self, servicer: health.aio.HealthServicer, names: list[str], serving: bool) -> None:
        self._servicer = servicer
        self._names = names
        self._serving = serving
        self._changed = asyncio.Event()

    def changed(self, serving: bool) -> None:
        self._serving = serving
        self._changed.set()

    async def apply(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self._serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._names:
            await self._servicer.set(name, status)

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self.apply()


_STATES = {
    State.STARTING: runtime_pb2.COMPONENT_STATE_STARTING,
    State.RUNNING: runtime_pb2.COMPONENT_STATE_RUNNING,
    State.BACKOFF: runtime_pb2.COMPONENT_STATE_BACKOFF,
    State.STOPPED: runtime_pb2.COMPONENT_STATE_STOPPED,
}


class RuntimeServicer(runtime_pb2_grpc.RuntimeServicer):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    async def Components(
        self, request: runtime_pb2.ComponentsRequest, context: grpc.aio.ServicerContext
    ) -> runtime_pb2.ComponentsResponse:
        return runtime_pb2.ComponentsResponse(
            service=self._supervisor.service,
            serving=self._supervisor.serving,
            components=[
                runtime_pb2.Component(
                    name=c.name,
                    state=_STATES[c.state],
                    required=c.required,
                    restarts=c.restarts,
                    last_error=c.last_error or "",
                )
                for c in self._supervisor.health()
            ],
        )


def channel_target(addrs: str) -> str:
    """A gRPC target for one address or a comma-separated list of replicas."""
    parts = [a.strip() for a in addrs.split(",") if a.strip()]
    if all(_is_ip_literal(p) for p in parts):
        scheme = "ipv6" if any(p.startswith("[") for p in parts) else "ipv4"
        return f"{scheme}:{','.join(parts)}"
    if len(parts) == 1:
        return f"dns:///{parts[0]}"
    raise ValueError(f"replica lists must be IP addresses: {addrs!r} (use one DNS name instead)")


def _is_ip_literal(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def insecure_channel(addrs: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(channel_target(addrs), options=_CHANNEL_OPTIONS)


async def check_health(channel: grpc.aio.Channel, timeout: float = 1.0) -> str:
    """The peer's grpc.health.v1 status name, or UNREACHABLE."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
