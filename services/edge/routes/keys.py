"""/v1/keys: an account manages its own keys, authenticated by one of them.

Every call is scoped to the calling key's account: another account's key id is simply not
found. A test key can only create test keys.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from faregate.errors import ContentPolicy, InvalidRequest
from faregate.pb.auth.v1 import auth_pb2
from faregate.values import KeyMode
from services.edge.clients import unary
from services.edge.context import bearer, edge
from services.edge.routes.admin import KeyRouting, key_json, parse
from services.edge.routes.responses import json_response

router = APIRouter(prefix="/v1/keys")


class NewOwnKey(KeyRouting):
    name: str = Field(default="", max_length=200)
    mode: KeyMode | None = None
    expires_at: int | None = Field(default=None, gt=0, description="Unix seconds")


async def caller(request: Request) -> auth_pb2.AuthenticateResponse:
    ctx = edge(request)
    return await unary(
        ctx.clients.auth.Identify,
        auth_pb2.AuthenticateRequest(api_key=bearer(request), client_ip=ctx.client_ip(request)),
    )


@router.get("")
async def list_keys(request: Request) -> Response:
    me = await caller(request)
    reply = await unary(edge(request).clients.auth.ListKeys, auth_pb2.ListKeysRequest(account_id=me.account_id))
    return json_response({"object": "list", "data": [key_json(k) for k in reply.keys]})


@router.post("", status_code=201)
async def create_key(request: Request) -> Response:
    me = await caller(request)
    body = await parse(request, NewOwnKey)
    own = KeyMode.from_pb(me.mode)
    mode = body.mode or own
    if own is KeyMode.TEST and mode is KeyMode.LIVE:
        raise ContentPolicy(
            "a test key can only create test keys", code="test_key_cannot_create_live_key", param="mode"
        )
    created = await unary(
        edge(request).clients.auth.CreateKey,
        auth_pb2.CreateKeyRequest(
            account_id=me.account_id,
            name=body.name,
            mode=mode.to_pb(),
            expires_at=body.expires_at or 0,
            routing=await body.routing(request),
        ),
    )
    return json_response({**key_json(created.key), "key": created.secret}, 201)


async def _may_change(request: Request, me: auth_pb2.AuthenticateResponse, key_id: str) -> None:
    """A test key may change (revoke, re-route) test keys only, never the account's live ones;
    a key that is not the account's is left for auth to answer 404."""
    if KeyMode.from_pb(me.mode) is not KeyMode.TEST:
        return
    reply = await unary(edge(request).clients.auth.ListKeys, auth_pb2.ListKeysRequest(account_id=me.account_id))
    if any(k.id == key_id and KeyMode.from_pb(k.mode) is KeyMode.LIVE for k in reply.keys):
        raise ContentPolicy("a test key can only change test keys", code="test_key_cannot_change_live_key")


@router.patch("/{key_id}")
async def update_key(request: Request, key_id: str) -> Response:
    """An account changes its own key's routing mode (limits are the operator's)."""
    me = await caller(request)
    await _may_change(request, me, key_id)
    body = await parse(request, KeyRouting)
    routing = await body.routing(request)
    if routing is None:
        raise InvalidRequest("give routing_mode and/or preferred_provider", param="routing_mode")
    update = auth_pb2.UpdateKeyRequest(key_id=key_id, account_id=me.account_id, routing=routing)
    updated = await unary(edge(request).clients.auth.UpdateKey, update)
    edge(request).gateway.key_changed(key_id)  # other edges hear it from auth over NATS
    return json_response(key_json(updated))


@router.delete("/{key_id}")
async def revoke_key(request: Request, key_id: str) -> Response:
    me = await caller(request)
    await _may_change(request, me, key_id)
    revoked = await unary(
        edge(request).clients.auth.RevokeKey, auth_pb2.RevokeKeyRequest(account_id=me.account_id, key_id=key_id)
    )
    edge(request).gateway.key_changed(key_id)  # other edges hear it from auth over NATS
    return json_response({**key_json(revoked), "deleted": True})
