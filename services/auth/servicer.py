"""AuthService over gRPC: wire types in, domain calls, wire types out."""

from __future__ import annotations

import grpc

from faregate.pb.auth.v1 import auth_pb2 as pb
from faregate.pb.auth.v1 import auth_pb2_grpc
from services.auth.admission import Authenticator
from services.auth.storage import AccountRow, KeyRow, now_ms

_MODES = {"live": pb.KEY_MODE_LIVE, "test": pb.KEY_MODE_TEST}
_MODE_NAMES = {v: k for k, v in _MODES.items()}


def key_message(row: KeyRow) -> pb.ApiKey:
    return pb.ApiKey(
        id=row.id,
        account_id=row.account_id,
        name=row.name,
        mode=_MODES[row.mode],
        masked=row.masked,
        created_at=row.created_at_ms // 1000,
        last_used_at=(row.last_used_at_ms or 0) // 1000,
        expires_at=(row.expires_at_ms or 0) // 1000,
        status=row.effective_status(now_ms()),
    )


def account_message(row: AccountRow, key_rows: list[KeyRow] | None = None) -> pb.Account:
    return pb.Account(
        id=row.id,
        name=row.name,
        plan=row.plan,
        created_at=row.created_at_ms // 1000,
        keys=[key_message(k) for k in key_rows or []],
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthenticateResponse:
        admission = await self._auth.admit(request.api_key)
        key = admission.key
        reply = pb.AuthenticateResponse(
            account_id=key.account_id,
            key_id=key.id,
            mode=_MODES[key.mode],
            plan=key.plan,
            billable=admission.billable,
        )
        if admission.window is not None:
            w = admission.window
            reply.rate_limit.CopyFrom(pb.RateLimit(limit=w.limit, remaining=w.remaining, reset_at=w.reset_at))
        return reply

    async def Release(self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext) -> pb.ReleaseResponse:
        return pb.ReleaseResponse()

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: grpc.aio.ServicerContext) -> pb.Account:
        return account_message(await self._auth.create_account(request.name, request.plan))

    async def GetAccount(self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext) -> pb.Account:
        row = await self._auth.account(request.account_id)
        keys = await self._auth.list_keys(row.id) if request.include_keys else None
        return account_message(row, keys)

    async def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.aio.ServicerContext) -> pb.CreatedKey:
        mode = _MODE_NAMES.get(request.mode, "")
        row, secret = await self._auth.create_key(
            request.account_id, request.name, mode, request.expires_at * 1000 or None
        )
        return pb.CreatedKey(key=key_message(row), secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[key_message(k) for k in await self._auth.list_keys(request.account_id)])

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.aio.ServicerContext) -> pb.ApiKey:
        return key_message(await self._auth.revoke_key(request.account_id, request.key_id))
