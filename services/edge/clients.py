"""The edge's gRPC clients to auth, router and billing, and the one place their errors
become Faregate errors on this side."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from faregate.grpc import check_health, error_from_rpc, insecure_channel
from faregate.pb.auth.v1 import auth_pb2_grpc
from faregate.pb.billing.v1 import billing_pb2_grpc
from faregate.pb.router.v1 import router_pb2_grpc
from faregate.settings import EdgeSettings

T = TypeVar("T")

UNARY_TIMEOUT_S = 10.0


@dataclass
class Clients:
    auth: auth_pb2_grpc.AuthServiceStub
    router: router_pb2_grpc.RouterServiceStub
    billing: billing_pb2_grpc.BillingServiceStub
    channels: dict[str, grpc.aio.Channel]

    @classmethod
    def connect(cls, settings: EdgeSettings) -> Clients:
        channels = {
            "auth": insecure_channel(settings.auth_addr),
            "router": insecure_channel(settings.router_addr),
            "billing": insecure_channel(settings.billing_addr),
        }
        return cls(
            auth=auth_pb2_grpc.AuthServiceStub(channels["auth"]),
            router=router_pb2_grpc.RouterServiceStub(channels["router"]),
            billing=billing_pb2_grpc.BillingServiceStub(channels["billing"]),
            channels=channels,
        )

    async def health(self) -> dict[str, str]:
        return {name: await check_health(ch) for name, ch in self.channels.items()}

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


async def unary(method: Callable[..., Awaitable[T]], request: Any, timeout: float = UNARY_TIMEOUT_S) -> T:
    """Call a unary RPC; a failure arrives as the FaregateError the peer raised."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None
