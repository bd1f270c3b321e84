"""A local Stripe-compatible stub for tests (Stripe is a third party, so faking it is fine).

Serves the few API calls Faregate makes (customers, Checkout Sessions, Customer Portal
sessions) the way Stripe's API does — form-encoded requests with bracketed nested keys,
``Authorization: Bearer sk_…``, ``Idempotency-Key`` honoured, JSON objects back — on
127.0.0.1 from a background thread. The real ``stripe`` SDK is pointed at it with
``FAREGATE_STRIPE_API_BASE``. It also builds webhook events and signs them with Stripe's
real scheme: ``Stripe-Signature: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<payload>"))``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import threading
import time
from typing import Any

import orjson
from aiohttp import web

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A Stripe-Signature header for ``payload``, exactly as Stripe computes it."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(type_: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "id": event_id or f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "type": type_,
            "livemode": False,
            "data": {"object": obj},
        }
    )


def _nest(form: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=v`` form fields → nested dicts and lists, as Stripe reads them."""
    root: dict[str, Any] = {}
    for name, value in form:
        parts = [name.split("[", 1)[0], *_KEY_PART.findall(name)]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


class StripeStub:
    def __init__(self, api_key: str = "sk_test_faregate") -> None:
        self.api_key = api_key
        self.port = 0
        self.requests: list[dict[str, Any]] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.fail_next: int | None = None  # answer the next call with this HTTP status
        self._idempotent: dict[str, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> StripeStub:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            started.set()
            try:
                self._loop.run_forever()
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="stripe-stub")
        self._thread.start()
        started.wait(10)
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/customers", self._customer)
        app.router.add_post("/v1/checkout/sessions", self._checkout)
        app.router.add_post("/v1/billing_portal/sessions", self._portal)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    # -- what a test does with Stripe's side -------------------------------------------------

    def pay(self, session_id: str) -> dict[str, Any]:
        """The session as Stripe shows it once the customer paid."""
        session = self.sessions[session_id]
        session.update(status="complete", payment_status="paid", payment_intent=f"pi_{secrets.token_hex(12)}")
        return dict(session)

    # -- API ------------------------------------------------------------------------------

    async def _common(self, request: web.Request) -> dict[str, Any] | web.Response:
        form = list((await request.post()).items())
        params = _nest([(k, str(v)) for k, v in form])
        self.requests.append({"path": request.path, "params": params, "headers": dict(request.headers)})
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return _error(status, "api_error", "the stub was told to fail")
        return params

    async def _idempotent_reply(self, request: web.Request, make: Any) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key and key in self._idempotent:
            return web.Response(body=self._idempotent[key], content_type="application/json")
        body = orjson.dumps(make())
        if key:
            self._idempotent[key] = body
        return web.Response(body=body, content_type="application/json")

    async def _customer(self, request: web.Request) -> web.Response:
        params = await self._common(request)
        if isinstance(params, web.Response):
            return params

        def make() -> dict[str, Any]:
            cid = f"cus_{secrets.token_hex(8)}"
            self.customers[cid] = {
                "id": cid,
                "object": "customer",
                "metadata": params.get("metadata", {}),
                "description": params.get("description"),
            }
            return self.customers[cid]

        return await self._idempotent_reply(request, make)

    async def _checkout(self, request: web.Request) -> web.Response:
        params = await self._common(request)
        if isinstance(params, web.Response):
            return params
        if params.get("customer") not in self.customers:
            return _error(400, "invalid_request_error", f"No such customer: {params.get('customer')!r}")
        items = params.get("line_items") or []
        total = sum(int(i["price_data"]["unit_amount"]) * int(i.get("quantity", 1)) for i in items)

        def make() -> dict[str, Any]:
            sid = f"cs_test_{secrets.token_hex(12)}"
            self.sessions[sid] = {
                "id": sid,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "status": "open",
                "payment_status": "unpaid",
                "payment_intent": None,
                "customer": params.get("customer"),
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "amount_total": total,
                "currency": items[0]["price_data"]["currency"] if items else "usd",
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "url": f"https://checkout.stripe.test/c/pay/{sid}",
            }
            return self.sessions[sid]

        return await self._idempotent_reply(request, make)

    async def _portal(self, request: web.Request) -> web.Response:
        params = await self._common(request)
        if isinstance(params, web.Response):
            return params
        if params.get("customer") not in self.customers:
            return _error(400, "invalid_request_error", f"No such customer: {params.get('customer')!r}")
        pid = f"bps_{secrets.token_hex(8)}"
        return web.json_response(
            {
                "id": pid,
                "object": "billing_portal.session",
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.test/p/session/{pid}",
            }
        )


def _error(status: int, type_: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"type": type_, "message": message}}),
        content_type="application/json",
    )
