"""The admin API (DESIGN.md): accounts, keys and credit, behind the admin token.

Typed values (faregate.values) enter as their JSON strings through the body models and leave
as them through the ``…_json`` functions (``key_json`` here, ``transaction_json`` in
billing.py): the only places the edge turns proto enums into the REST contract's strings.
"""

from __future__ import annotations

import hmac
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from faregate.errors import AuthenticationFailed, InvalidRequest
from faregate.money import micros_to_usd, usd_to_micros
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.router.v1 import router_pb2
from faregate.values import KeyMode, KeyStatus, RoutingMode
from services.edge.clients import unary
from services.edge.context import bearer, edge
from services.edge.routes.responses import json_response


def require_admin(request: Request) -> None:
    ctx = edge(request)
    address = ctx.client_ip(request)
    ctx.admin_failures.check(address)  # an address guessing tokens is refused before its next guess
    try:
        token = bearer(request)
    except AuthenticationFailed:
        token = ""
    if not token or not hmac.compare_digest(token.encode(), ctx.admin_token.encode()):
        ctx.admin_failures.failed(address)
        raise AuthenticationFailed("admin token required", code="invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


B = TypeVar("B", bound=Body)


async def parse(request: Request, model: type[B]) -> B:
    """The JSON body as ``model``, whatever Content-Type the client sent (curl -d sends a form type)."""
    raw = await edge(request).read_body(request)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        msg = "request body is not valid JSON" if first["type"] == "json_invalid" else first["msg"]
        raise InvalidRequest(f"{where}: {msg}" if where else msg, param=where) from None


class NewAccount(Body):
    name: str = Field(min_length=1, max_length=200)
    plan: str = "basic"


class KeyRouting(Body):
    """How the router picks a provider for the key: auto (the model's chain), preferred (this
    provider first, then the chain) or failover (only this provider)."""

    routing_mode: RoutingMode | None = None
    preferred_provider: str | None = Field(default=None, min_length=1, max_length=100)

    async def routing(self, request: Request) -> auth_pb2.Routing | None:
        """The routing to store, checked against the router's providers; None when not given."""
        if self.routing_mode is None and self.preferred_provider is None:
            return None
        mode = self.routing_mode or (RoutingMode.PREFERRED if self.preferred_provider else RoutingMode.AUTO)
        provider = self.preferred_provider or ""
        if mode is not RoutingMode.AUTO and not provider:
            raise InvalidRequest(f"routing_mode {mode.value!r} needs a preferred_provider", param="preferred_provider")
        if provider:
            health = await unary(edge(request).clients.router.ProviderHealth, router_pb2.ProviderHealthRequest())
            known = sorted(p.provider for p in health.providers)
            if provider not in known:
                raise InvalidRequest(
                    f"unknown provider {provider!r}; one of: {', '.join(known)}", param="preferred_provider"
                )
        return auth_pb2.Routing(mode=mode.to_pb(), provider=provider)


class NewKey(KeyRouting):
    name: str = Field(default="", max_length=200)
    mode: KeyMode = KeyMode.LIVE
    expires_at: int | None = Field(default=None, gt=0, description="Unix seconds")


LIMIT_FIELDS = ("rpm", "requests_per_day", "tokens_per_day", "concurrency")


class KeyLimits(KeyRouting):
    """Per-key overrides: a number, -1 for no limit, or 0 to follow the plan again; and the
    key's routing mode."""

    rpm: int | None = Field(default=None, ge=-1)
    requests_per_day: int | None = Field(default=None, ge=-1)
    tokens_per_day: int | None = Field(default=None, ge=-1)
    concurrency: int | None = Field(default=None, ge=-1)


class NewCredit(Body):
    amount_usd: float = Field(gt=0, le=1_000_000)
    note: str = Field(default="", max_length=400)


def key_json(k: auth_pb2.ApiKey) -> dict[str, Any]:
    limits = {f: getattr(k.limits, f) for f in LIMIT_FIELDS if k.limits.HasField(f)}
    return {
        "id": k.id,
        "object": "api_key",
        "account_id": k.account_id,
        "name": k.name,
        "mode": KeyMode.from_pb(k.mode).value,
        "masked": k.masked,
        "status": KeyStatus.from_pb(k.status).value,
        "created": k.created_at,
        "last_used": k.last_used_at or None,
        "expires_at": k.expires_at or None,
        "limits": {f: (None if v == -1 else v) for f, v in limits.items()},
        "routing_mode": RoutingMode.from_pb(k.routing.mode).value,
        "preferred_provider": k.routing.provider or None,
    }


def account_json(a: auth_pb2.Account, wallet: billing_pb2.Wallet | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": a.id,
        "object": "account",
        "name": a.name,
        "plan": a.plan,
        "created": a.created_at,
    }
    if wallet is not None:
        body["balance_usd"] = micros_to_usd(wallet.balance_micros)
        body["keys"] = [key_json(k) for k in a.keys]
    return body


@router.post("/accounts", status_code=201)
async def create_account(request: Request) -> Response:
    body = await parse(request, NewAccount)
    account = await unary(
        edge(request).clients.auth.CreateAccount,
        auth_pb2.CreateAccountRequest(name=body.name, plan=body.plan),
    )
    return json_response(account_json(account), 201)


@router.get("/accounts/{account_id}")
async def get_account(request: Request, account_id: str) -> Response:
    clients = edge(request).clients
    account = await unary(clients.auth.GetAccount, auth_pb2.GetAccountRequest(account_id=account_id, include_keys=True))
    wallet = await unary(clients.billing.GetWallet, billing_pb2.GetWalletRequest(account_id=account.id))
    return json_response(account_json(account, wallet))


@router.post("/accounts/{account_id}/keys", status_code=201)
async def create_key(request: Request, account_id: str) -> Response:
    body = await parse(request, NewKey)
    created = await unary(
        edge(request).clients.auth.CreateKey,
        auth_pb2.CreateKeyRequest(
            account_id=account_id,
            name=body.name,
            mode=body.mode.to_pb(),
            expires_at=body.expires_at or 0,
            routing=await body.routing(request),
        ),
    )
    return json_response({**key_json(created.key), "key": created.secret}, 201)


@router.post("/accounts/{account_id}/credit")
async def credit(request: Request, account_id: str) -> Response:
    body = await parse(request, NewCredit)
    clients = edge(request).clients
    account = await unary(clients.auth.GetAccount, auth_pb2.GetAccountRequest(account_id=account_id))
    wallet = await unary(
        clients.billing.Credit,
        billing_pb2.CreditRequest(
            account_id=account.id,
            amount_micros=usd_to_micros(body.amount_usd),
            note=body.note,
        ),
    )
    return json_response(
        {
            "account_id": account.id,
            "object": "wallet",
            "balance_usd": micros_to_usd(wallet.balance_micros),
            "entries": wallet.entries,
        }
    )


@router.patch("/keys/{key_id}")
async def update_key(request: Request, key_id: str) -> Response:
    body = await parse(request, KeyLimits)
    limits = auth_pb2.Limits(**body.model_dump(exclude_none=True, include=set(LIMIT_FIELDS)))
    update = auth_pb2.UpdateKeyRequest(key_id=key_id, limits=limits, routing=await body.routing(request))
    updated = await unary(edge(request).clients.auth.UpdateKey, update)
    edge(request).gateway.key_changed(key_id)  # other edges hear it from auth over NATS
    return json_response(key_json(updated))
