"""The Stripe adapter: the only module that talks to Stripe, and it raises our errors only.

Built from the typed settings in ``serve()`` with a ``stripe.StripeClient`` of its own (no
module-level ``stripe.api_key``); tests point it at a local Stripe-compatible stub through
``FAREGATE_STRIPE_API_BASE``. Webhooks are verified with Stripe's own signing scheme
(``Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.payload")``) and a timestamp tolerance.

Errors: not configured → ProvidersUnavailable (503, ``stripe_not_configured``); a bad or
stale signature, or a body that is not an event → InvalidRequest (400); Stripe failing or
unreachable → UpstreamError (502).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from faregate.errors import InvalidRequest, ProvidersUnavailable, UpstreamError
from faregate.settings import BillingSettings

if TYPE_CHECKING:
    import stripe


def _sdk() -> ModuleType:
    """The stripe SDK, imported on first use: ~25 MB a billing without Stripe need not carry."""
    return importlib.import_module("stripe")


PRODUCT_NAME = "Faregate credit"


@dataclass(frozen=True)
class StripeEvent:
    id: str
    type: str
    object: dict[str, Any]


@dataclass(frozen=True)
class Link:
    id: str
    url: str


class StripePayments:
    def __init__(
        self,
        client: stripe.StripeClient | None,
        webhook_secret: str | None,
        *,
        tolerance: int = 300,
        http_client: stripe.HTTPClient | None = None,
    ) -> None:
        self._client = client
        self._webhook_secret = webhook_secret
        self._tolerance = tolerance
        self._http = http_client

    @classmethod
    def from_settings(cls, settings: BillingSettings) -> StripePayments:
        client = http = None
        if settings.stripe_secret_key is not None:
            stripe = _sdk()
            http = stripe.AIOHTTPClient(timeout=20)
            client = stripe.StripeClient(
                settings.stripe_secret_key.get_secret_value(),
                base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
                http_client=http,
                max_network_retries=2,
            )
        secret = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None
        return cls(client, secret, tolerance=settings.stripe_webhook_tolerance_seconds, http_client=http)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close_async()

    def _api(self) -> stripe.StripeClient:
        if self._client is None:
            raise ProvidersUnavailable(
                "Stripe is not configured on this Faregate: set FAREGATE_STRIPE_SECRET_KEY",
                code="stripe_not_configured",
            )
        return self._client

    async def create_customer(self, account_id: str) -> str:
        api, stripe = self._api(), _sdk()
        try:
            customer = await api.v1.customers.create_async(
                {"metadata": {"faregate_account_id": account_id}, "description": f"Faregate account {account_id}"},
                {"idempotency_key": f"faregate-customer-{account_id}"},
            )
        except stripe.StripeError as exc:
            raise _upstream(exc) from None
        return str(customer.id)

    async def checkout(
        self, customer_id: str, account_id: str, amount_cents: int, success_url: str, cancel_url: str
    ) -> Link:
        api, stripe = self._api(), _sdk()
        metadata = {"faregate_account_id": account_id}
        try:
            session = await api.v1.checkout.sessions.create_async(
                {
                    "mode": "payment",
                    "customer": customer_id,
                    "client_reference_id": account_id,
                    "success_url": success_url,
                    "cancel_url": cancel_url,
                    "metadata": metadata,
                    "payment_intent_data": {"metadata": metadata},
                    "line_items": [
                        {
                            "quantity": 1,
                            "price_data": {
                                "currency": "usd",
                                "unit_amount": amount_cents,
                                "product_data": {"name": PRODUCT_NAME},
                            },
                        }
                    ],
                }
            )
        except stripe.StripeError as exc:
            raise _upstream(exc) from None
        if not session.url:
            raise UpstreamError("Stripe created a checkout session without a URL")
        return Link(str(session.id), str(session.url))

    async def portal(self, customer_id: str, return_url: str) -> Link:
        api, stripe = self._api(), _sdk()
        try:
            session = await api.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": return_url}
            )
        except stripe.StripeError as exc:
            raise _upstream(exc) from None
        return Link(str(session.id), str(session.url))

    def parse_event(self, payload: bytes, signature: str) -> StripeEvent:
        """Verify a webhook delivery and return its event; InvalidRequest when it is not genuine."""
        if not self._webhook_secret:
            raise ProvidersUnavailable(
                "Stripe is not configured on this Faregate: set FAREGATE_STRIPE_WEBHOOK_SECRET",
                code="stripe_not_configured",
            )
        stripe = _sdk()
        try:
            stripe.WebhookSignature.verify_header(payload, signature, self._webhook_secret, self._tolerance)
        except stripe.SignatureVerificationError as exc:
            raise InvalidRequest(
                f"Stripe signature rejected: {exc.user_message or exc}", code="invalid_signature"
            ) from None
        except UnicodeDecodeError:
            raise InvalidRequest("webhook body is not UTF-8", code="invalid_payload") from None
        try:
            doc = orjson.loads(payload)
            obj = doc["data"]["object"]
            event = StripeEvent(str(doc["id"]), str(doc["type"]), obj)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise InvalidRequest("webhook body is not a Stripe event", code="invalid_payload") from None
        if not isinstance(obj, dict):
            raise InvalidRequest("webhook body is not a Stripe event", code="invalid_payload")
        return event


def _upstream(exc: stripe.StripeError) -> InvalidRequest | UpstreamError:
    status = getattr(exc, "http_status", None)
    detail = exc.user_message or type(exc).__name__
    if isinstance(exc, _sdk().InvalidRequestError) and status == 400:
        return InvalidRequest(f"Stripe refused the request: {detail}", code="stripe_invalid_request")
    return UpstreamError(f"Stripe failed ({status or 'unreachable'}): {detail}", code="stripe_error")
