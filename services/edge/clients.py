"""The edge's gRPC clients to auth, router and billing, and the one place their errors
become Faregate errors on this side."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from faregate.callstream import CallStream
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
    # the two calls of every inference request, on long-lived streams (ADR 9)
    authenticate: CallStream[auth_pb2.AuthenticateRequest, auth_pb2.AuthenticateResponse]
    reserve: CallStream[billing_pb2.ReserveRequest, billing_pb2.Wallet]
    complete: CallStream[router_pb2.CompletionRequest, router_pb2.CompletionChunk]

    @classmethod
    def connect(cls, settings: EdgeSettings) -> Clients:
        channels = {
            "auth": insecure_channel(settings.auth_addr),
            "router": insecure_channel(settings.router_addr),
            "billing": insecure_channel(settings.billing_addr),
        }
        auth = auth_pb2_grpc.AuthServiceStub(channels["auth"])
        billing = billing_pb2_grpc.BillingServiceStub(channels["billing"])
        router = router_pb2_grpc.RouterServiceStub(channels["router"])
        return cls(
            auth=auth,
            router=router,
            billing=billing,
            channels=channels,
            authenticate=CallStream(
                auth.AuthenticateStream, auth_pb2.AuthenticateCall, lanes=_lanes(settings.auth_addr)
            ),
            reserve=CallStream(billing.ReserveStream, billing_pb2.ReserveCall, lanes=_lanes(settings.billing_addr)),
            complete=CallStream(router.CompleteStream, router_pb2.CompletionCall, lanes=_lanes(settings.router_addr)),
        )

    async def health(self) -> dict[str, str]:
        return {name: await check_health(ch) for name, ch in self.channels.items()}

    async def close(self) -> None:
        await self.authenticate.close()
        await self.reserve.close()
        await self.complete.close()
        for ch in self.channels.values():
            await ch.close()


async def unary(method: Callable[..., Awaitable[T]], request: Any, timeout: float = UNARY_TIMEOUT_S) -> T:
    """Call a unary RPC; a failure arrives as the FaregateError the peer raised."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


def _lanes(addrs: str) -> int:
    """Streams to keep open: two, or one per replica when a list of replicas is balanced over."""
    return max(2, len([a for a in addrs.split(",") if a.strip()]))
