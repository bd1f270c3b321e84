"""The edge's gRPC clients of auth, router and billing, and the one place their errors
become Faregate errors on this side.

``Clients`` holds the channels and stubs (the account and admin routes call those directly
through ``unary``); ``AuthClient``, ``BillingClient`` and ``RouterClient`` are the typed
clients the gateway is built from (services/edge/gateway.py): domain values in and out
(services/edge/callers.py), protobuf only here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from faregate.callstream import CallStream, Replica, StreamedCall
from faregate.errors import UpstreamError
from faregate.grpc import check_health, error_from_rpc, insecure_channel
from faregate.money import usd_to_micros
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from faregate.pb.router.v1 import router_pb2, router_pb2_grpc
from faregate.settings import EdgeSettings
from faregate.values import RoutingMode
from services.edge.callers import (
    AdmissionAsk,
    AdmissionGrant,
    Admitted,
    Caller,
    FundsGrant,
    GrantReturn,
    GrantSpend,
    ModelPrice,
    RateLimit,
    SlotRelease,
)
from services.edge.gateway import Opened, RouteCall

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


# -- typed clients of the gateway -------------------------------------------------------------


class AuthClient:
    """auth's admission side: Authenticate (on the call stream), ReleaseMany, Renew."""

    def __init__(self, clients: Clients) -> None:
        self._stub = clients.auth
        self._authenticate = clients.authenticate

    async def authenticate(self, ask: AdmissionAsk) -> Admitted:
        creds = ask.credentials
        request = auth_pb2.AuthenticateRequest(
            api_key=creds.key,
            client_ip=creds.client_ip,
            request_id=ask.request_id,
            grant_wanted=ask.grant_wanted,
            grant_slots_wanted=ask.grant_slots_wanted,
        )
        if ask.released:
            request.released.extend(_release_pb(r) for r in ask.released)
        if ask.returned:
            request.returned.extend(_return_pb(r) for r in ask.returned)
        return admitted_from_pb(await self._authenticate(request, UNARY_TIMEOUT_S))

    async def release(self, slots: Sequence[SlotRelease], returned: Sequence[GrantReturn]) -> None:
        batch = auth_pb2.ReleaseBatch(slots=[_release_pb(r) for r in slots], returned=[_return_pb(r) for r in returned])
        await unary(self._stub.ReleaseMany, batch, timeout=5)

    async def renew(self, slot: SlotRelease) -> None:
        await unary(self._stub.Renew, _release_pb(slot), timeout=5)


def caller_from_pb(reply: auth_pb2.AuthenticateResponse) -> Caller:
    rl = reply.rate_limit
    return Caller(
        account_id=reply.account_id,
        key_id=reply.key_id,
        billable=reply.billable,
        test_mode=reply.mode == auth_pb2.KEY_MODE_TEST,
        guest=reply.guest,
        max_tokens_cap=reply.max_tokens_cap,
        routing_mode=RoutingMode.from_pb(reply.routing.mode),
        preferred_provider=reply.routing.provider,
        rate_limit=RateLimit(rl.limit, rl.remaining, rl.reset_at) if reply.HasField("rate_limit") else None,
        slot_lease_seconds=reply.slot_lease_seconds or 60,
    )


def admitted_from_pb(reply: auth_pb2.AuthenticateResponse) -> Admitted:
    grant = None
    if reply.HasField("grant"):
        g = reply.grant
        grant = AdmissionGrant(g.admissions, tuple(g.slot_ids), g.valid_ms, g.window, g.id)
    return Admitted(caller_from_pb(reply), reply.slot_id, grant)


def _release_pb(release: SlotRelease) -> auth_pb2.ReleaseRequest:
    return auth_pb2.ReleaseRequest(key_id=release.key_id, slot_id=release.slot_id)


def _return_pb(returned: GrantReturn) -> auth_pb2.GrantReturn:
    return auth_pb2.GrantReturn(
        key_id=returned.key_id, unused=returned.unused, window=returned.window, grant_id=returned.grant_id
    )


class BillingClient:
    """billing's funds side: Reserve (on the call stream), ReleaseHold, SettleGrants."""

    def __init__(self, clients: Clients) -> None:
        self._stub = clients.billing
        self._reserve = clients.reserve

    async def reserve(self, account_id: str, request_id: str, amount: int, grant_wanted: int) -> FundsGrant | None:
        reply = await self._reserve(
            billing_pb2.ReserveRequest(
                account_id=account_id, request_id=request_id, amount_micros=amount, grant_micros=grant_wanted
            ),
            UNARY_TIMEOUT_S,
        )
        if not reply.HasField("grant"):
            return None
        g = reply.grant
        return FundsGrant(g.id, g.micros, g.valid_ms)

    async def release_hold(self, request_id: str) -> None:
        await unary(self._stub.ReleaseHold, billing_pb2.ReleaseHoldRequest(request_id=request_id), timeout=5)

    async def settle_grants(self, spent: Sequence[GrantSpend], ended: Sequence[str]) -> None:
        report = billing_pb2.GrantSpends(
            spent=[
                billing_pb2.GrantSpend(grant_id=s.grant_id, request_id=s.request_id, amount_micros=s.amount_micros)
                for s in spent
            ],
            ended=list(ended),
        )
        await unary(self._stub.SettleGrants, report, timeout=5)


class RouterClient:
    """The router's inference side: completions (whole or streamed), embeddings, prices."""

    def __init__(self, clients: Clients) -> None:
        self._stub = clients.router
        self._complete = clients.complete
        self._chat = clients.chat

    async def complete(self, call: RouteCall) -> bytes:
        return (await self._complete(_completion_pb(call), COMPLETION_TIMEOUT_S)).data

    def stream(self, call: RouteCall) -> RouterStream:
        return RouterStream(self._chat.stream(_completion_pb(call)))

    async def embeddings(self, call: RouteCall) -> bytes:
        return (await unary(self._stub.Embeddings, _completion_pb(call), COMPLETION_TIMEOUT_S)).data

    async def prices(self) -> list[ModelPrice]:
        reply = await unary(self._stub.ListModels, router_pb2.ListModelsRequest(), timeout=5)
        return [
            ModelPrice(
                names=(m.id, *m.aliases),
                prompt_micros=usd_to_micros(m.pricing.prompt),
                completion_micros=usd_to_micros(m.pricing.completion),
                context_length=m.context_length,
                free=m.test or (m.pricing.prompt == 0 and m.pricing.completion == 0),
                autoroutable=not m.test and "embedding" not in m.categories,
            )
            for m in reply.models
        ]


class RouterStream:
    """A streamed call on the router's chat lane (ADR 10), read as payload batches."""

    def __init__(self, call: StreamedCall[router_pb2.CompletionChunk]) -> None:
        self._call = call

    async def open(self, timeout: float = COMPLETION_TIMEOUT_S) -> Opened:
        first = await self._call.read(timeout)
        if first is None or not first.HasField("start"):
            raise UpstreamError("the router ended the call without an answer")
        return Opened(first.start.stream, _payloads(first))

    async def read(self) -> list[bytes] | None:
        chunk = await self._call.read()
        return None if chunk is None else _payloads(chunk)

    def close(self) -> None:
        self._call.close()


def _payloads(chunk: router_pb2.CompletionChunk) -> list[bytes]:
    if chunk.HasField("error"):  # the upstream failed after the first byte (the router meters it)
        raise UpstreamError(chunk.error.message, code=chunk.error.code or None)
    return [chunk.data, *chunk.more] if chunk.more else [chunk.data]


def _completion_pb(call: RouteCall) -> router_pb2.CompletionRequest:
    c = call.caller
    return router_pb2.CompletionRequest(
        request_id=call.request_id,
        caller=router_pb2.Caller(
            account_id=c.account_id,
            key_id=c.key_id,
            billable=c.billable,
            test_mode=c.test_mode,
            max_tokens_cap=c.max_tokens_cap,
            guest=c.guest,
            routing_mode=c.routing_mode.to_pb(),
            preferred_provider=c.preferred_provider,
        ),
        body=call.body,
        entry=call.entry,
    )
