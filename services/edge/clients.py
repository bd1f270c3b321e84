"""The edge's gRPC clients to auth, router and billing, and the one place their errors
become Faregate errors on this side."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from faregate.callstream import CallStream, Replica
from faregate.grpc import check_health, error_from_rpc, insecure_channel
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from faregate.pb.router.v1 import router_pb2, router_pb2_grpc
from faregate.settings import EdgeSettings

T = TypeVar("T")

UNARY_TIMEOUT_S = 10.0
COMPLETION_TIMEOUT_S = 900.0  # the router bounds each upstream attempt itself


@dataclass
class Clients:
    auth: auth_pb2_grpc.AuthServiceStub
    router: router_pb2_grpc.RouterServiceStub
    billing: billing_pb2_grpc.BillingServiceStub
    channels: dict[str, grpc.aio.Channel]
    # the calls of every inference request, on long-lived streams (ADR 9)
    authenticate: CallStream[auth_pb2.AuthenticateRequest, auth_pb2.AuthenticateResponse]
    reserve: CallStream[billing_pb2.ReserveRequest, billing_pb2.Wallet]
    complete: CallStream[router_pb2.CompletionRequest, router_pb2.CompletionChunk]
    chat: CallStream[router_pb2.CompletionRequest, router_pb2.CompletionChunk]  # streamed (ADR 10)
    replica_channels: list[grpc.aio.Channel]

    @classmethod
    def connect(cls, settings: EdgeSettings) -> Clients:
        channels = {
            "auth": insecure_channel(settings.auth_addr),
            "router": insecure_channel(settings.router_addr),
            "billing": insecure_channel(settings.billing_addr),
        }
        # call streams: one channel per replica, so their lanes spread evenly (ADR 9)
        replicas = {
            name: _replica_channels(addrs, channels[name])
            for name, addrs in (
                ("auth", settings.auth_addr),
                ("router", settings.router_addr),
                ("billing", settings.billing_addr),
            )
        }
        return cls(
            auth=auth_pb2_grpc.AuthServiceStub(channels["auth"]),
            router=router_pb2_grpc.RouterServiceStub(channels["router"]),
            billing=billing_pb2_grpc.BillingServiceStub(channels["billing"]),
            channels=channels,
            authenticate=CallStream(
                [Replica(ch, auth_pb2_grpc.AuthServiceStub(ch).AuthenticateStream) for ch in replicas["auth"]],
                auth_pb2.AuthenticateResponse,
            ),
            reserve=CallStream(
                [Replica(ch, billing_pb2_grpc.BillingServiceStub(ch).ReserveStream) for ch in replicas["billing"]],
                billing_pb2.Wallet,
            ),
            complete=CallStream(
                [Replica(ch, router_pb2_grpc.RouterServiceStub(ch).CompleteStream) for ch in replicas["router"]],
                router_pb2.CompletionChunk,
            ),
            chat=CallStream(
                [Replica(ch, router_pb2_grpc.RouterServiceStub(ch).ChatCompletionStream) for ch in replicas["router"]],
                router_pb2.CompletionChunk,
            ),
            replica_channels=[ch for chs in replicas.values() for ch in chs if ch not in channels.values()],
        )

    async def health(self) -> dict[str, str]:
        return {name: await check_health(ch) for name, ch in self.channels.items()}

    async def close(self) -> None:
        await self.authenticate.close()
        await self.reserve.close()
        await self.complete.close()
        await self.chat.close()
        for ch in [*self.channels.values(), *self.replica_channels]:
            await ch.close()


async def unary(method: Callable[..., Awaitable[T]], request: Any, timeout: float = UNARY_TIMEOUT_S) -> T:
    """Call a unary RPC; a failure arrives as the FaregateError the peer raised."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


def _replica_channels(addrs: str, balanced: grpc.aio.Channel) -> list[grpc.aio.Channel]:
    """A channel per replica in a list of replicas; the balanced channel itself for one."""
    parts = [a.strip() for a in addrs.split(",") if a.strip()]
    return [balanced] if len(parts) < 2 else [insecure_channel(a) for a in parts]
