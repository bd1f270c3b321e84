"""AuthService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc

from faregate.callstream import CallServer
from faregate.pb.auth.v1 import auth_pb2 as pb
from faregate.pb.auth.v1 import auth_pb2_grpc
from faregate.pb.rpc.v1 import calls_pb2
from faregate.values import KeyMode, RoutingMode
from services.auth.admission import Admission, Authenticator, Routing
from services.auth.limits import GUEST_MAX_TOKENS
from services.auth.storage import LIMIT_COLUMNS, AccountRow, KeyRow, now_ms


def key_message(row: KeyRow) -> pb.ApiKey:
    return pb.ApiKey(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        mode=row.mode.to_pb(),
        masked=row.masked,
        created_at=row.created_at_ms // 1000,
        last_used_at=(row.last_used_at_ms or 0) // 1000,
        expires_at=(row.expires_at_ms or 0) // 1000,
        status=row.effective_status(now_ms()).to_pb(),
        limits=pb.Limits(
            rpm=row.rpm_limit,
            requests_per_day=row.requests_per_day_limit,
            tokens_per_day=row.tokens_per_day_limit,
            concurrency=row.concurrency_limit,
        ),
        routing=pb.Routing(mode=(row.routing_mode or RoutingMode.AUTO).to_pb(), provider=row.preferred_provider or ""),
    )


def admission_message(a: Admission, lease: float) -> pb.AuthenticateResponse:
    reply = pb.AuthenticateResponse(
        account_id=a.account_id,
        key_id=a.key_id,
        mode=a.mode.to_pb(),
        plan=a.plan,
        billable=a.billable,
        slot_id=a.slot_id,
        guest=a.guest,
        max_tokens_cap=GUEST_MAX_TOKENS if a.guest else 0,
        slot_lease_seconds=int(lease),
        routing=pb.Routing(mode=a.routing_mode.to_pb(), provider=a.preferred_provider),
    )
    if a.window is not None:
        w = a.window
        reply.rate_limit.CopyFrom(pb.RateLimit(limit=w.limit, remaining=w.remaining, reset_at=w.reset_at))
    if a.grant is not None:
        g = a.grant
        reply.grant.CopyFrom(
            pb.Grant(admissions=g.admissions, slot_ids=g.slot_ids, valid_ms=g.valid_ms, window=g.window, id=g.id)
        )
    return reply


def account_message(row: AccountRow, key_rows: list[KeyRow] | None = None) -> pb.Account:
    return pb.Account(
        id=row.id,
        name=row.name,
        plan=row.plan,
        created_at=row.created_at_ms // 1000,
        keys=[key_message(k) for k in key_rows or []],
    )


def _routing(message: pb.Routing) -> Routing:
    return Routing(RoutingMode.from_pb(message.mode), message.provider)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth
        self.calls = CallServer()
        self._authenticate_stream = self.calls.handler(self.Authenticate, pb.AuthenticateRequest)

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthenticateResponse:
        await self._given_back(request.released, request.returned)
        admission = await self._auth.admit(
            request.api_key, request.client_ip, grant=request.grant_wanted, grant_slots=request.grant_slots_wanted
        )
        return admission_message(admission, self._auth.slot_lease)

    async def AuthenticateStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        """Authenticate calls on one long-lived stream (faregate/callstream.py)."""
        async for result in self._authenticate_stream(request_iterator, context):
            yield result

    async def Identify(
        self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthenticateResponse:
        key = await self._auth.identify(request.api_key, request.client_ip)
        return pb.AuthenticateResponse(
            account_id=key.account_id,
            key_id=key.id,
            mode=key.mode.to_pb(),
            plan=key.plan,
            billable=key.mode is KeyMode.LIVE,
            monthly_token_quota=self._auth.monthly_quota(key.plan),
        )

    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        await self._auth.release(request.key_id, request.slot_id)
        return pb.ReleaseResponse()

    async def ReleaseMany(self, request: pb.ReleaseBatch, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        await self._given_back(request.slots, request.returned)
        return pb.ReleaseResponse()

    async def _given_back(self, slots: Iterable[pb.ReleaseRequest], returned: Iterable[pb.GrantReturn]) -> None:
        """What an edge hands back, inside an Authenticate or a ReleaseMany: slots released,
        and the unspent admissions of its ended grants (ADR 11)."""
        for slot in slots:
            await self._auth.release(slot.key_id, slot.slot_id)
        for r in returned:
            await self._auth.refund(r.key_id, r.unused, r.window, r.grant_id)

    async def Renew(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        await self._auth.renew(request.key_id, request.slot_id)
        return pb.ReleaseResponse()

    async def UpdateKey(self, request: pb.UpdateKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        given = request.limits
        fields = ("rpm", "requests_per_day", "tokens_per_day", "concurrency")
        limits = {
            col: (getattr(given, f) or None) for col, f in zip(LIMIT_COLUMNS, fields, strict=True) if given.HasField(f)
        }
        routing = _routing(request.routing) if request.HasField("routing") else None
        row = await self._auth.update_key(request.key_id, limits, routing, request.account_id or None)
        return key_message(row)

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: grpc.aio.ServicerContext) -> pb.Account:
        return account_message(await self._auth.create_account(request.name, request.plan))

    async def GetAccount(self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext) -> pb.Account:
        row = await self._auth.account(request.account_id)
        keys = await self._auth.list_keys(row.id) if request.include_keys else None
        return account_message(row, keys)

    async def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.aio.ServicerContext) -> pb.CreatedKey:
        mode = KeyMode.from_pb(request.mode, param="mode")
        routing = _routing(request.routing) if request.HasField("routing") else None
        row, secret = await self._auth.create_key(
            request.account_id, request.name, mode, request.expires_at * 1000 or None, routing
        )
        return pb.CreatedKey(key=key_message(row), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[key_message(k) for k in await self._auth.list_keys(request.account_id)])

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        return key_message(await self._auth.revoke_key(request.account_id, request.key_id))
