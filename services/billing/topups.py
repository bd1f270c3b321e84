"""Top-ups through Stripe: Checkout to pay, the Customer Portal, and the webhook that moves money.

A Stripe customer is made per account on first use (``stripe_customers``). A completed,
paid Checkout Session credits the wallet once per session (``topup``, idempotency key
``stripe:checkout:<session>``, reference = its payment intent). Refunds and disputes are
negative entries against a payment we credited, found by its payment intent:

- ``charge.refunded`` carries the charge's cumulative ``amount_refunded``; the entry is the
  part not yet recorded (idempotency key ``stripe:refund:<pi>:<cumulative>``), so replays,
  partial refunds and out-of-order deliveries never refund twice;
- ``charge.dispute.created`` debits the disputed amount once per dispute, and a dispute
  closed as ``won`` gives it back once.

Events of other types, and events about payments Faregate never credited, change nothing
and are answered as not applied (and logged), so Stripe stops retrying them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from faregate.errors import InvalidRequest
from faregate.values import EntryKind
from services.billing.ledger import post
from services.billing.storage import add_to_wallet, insert_for, ledger_entries, stripe_customers
from services.billing.stripe_payments import Link, StripeEvent, StripePayments

log = logging.getLogger(__name__)

MICROS_PER_CENT = 10_000
MIN_TOPUP_MICROS = 1_000_000  # 1 USD
MAX_TOPUP_MICROS = 10_000 * 1_000_000  # 10,000 USD


@dataclass(frozen=True)
class Outcome:
    event_id: str
    type: str
    applied: bool
    note: str


class TopUps:
    def __init__(self, sessions: async_sessionmaker[Any], stripe: StripePayments) -> None:
        self._sessions = sessions
        self._stripe = stripe

    # -- paying --------------------------------------------------------------------------

    async def checkout(self, account_id: str, amount_micros: int, success_url: str, cancel_url: str) -> Link:
        if not MIN_TOPUP_MICROS <= amount_micros <= MAX_TOPUP_MICROS:
            raise InvalidRequest("amount_usd must be between 1 and 10,000", param="amount_usd")
        if amount_micros % MICROS_PER_CENT:
            raise InvalidRequest("amount_usd must be a whole number of cents", param="amount_usd")
        _check_url(success_url, "success_url")
        _check_url(cancel_url, "cancel_url")
        customer = await self._customer(account_id)
        return await self._stripe.checkout(
            customer, account_id, amount_micros // MICROS_PER_CENT, success_url, cancel_url
        )

    async def portal(self, account_id: str, return_url: str) -> Link:
        _check_url(return_url, "return_url")
        return await self._stripe.portal(await self._customer(account_id), return_url)

    async def _customer(self, account_id: str) -> str:
        async with self._sessions() as s:
            found = await s.scalar(
                select(stripe_customers.c.customer_id).where(stripe_customers.c.account_id == account_id)
            )
        if found:
            return str(found)
        customer = await self._stripe.create_customer(account_id)  # idempotent at Stripe per account
        async with self._sessions.begin() as s:
            await s.execute(
                insert_for(s.bind.dialect.name)(stripe_customers)
                .values(account_id=account_id, customer_id=customer, created_at_ms=int(time.time() * 1000))
                .on_conflict_do_nothing()
            )
            kept = await s.scalar(
                select(stripe_customers.c.customer_id).where(stripe_customers.c.account_id == account_id)
            )
        return str(kept)

    # -- the webhook -----------------------------------------------------------------------

    async def handle_webhook(self, payload: bytes, signature: str) -> Outcome:
        event = self._stripe.parse_event(payload, signature)
        handler = {
            "checkout.session.completed": self._checkout_completed,
            "checkout.session.async_payment_succeeded": self._checkout_completed,
            "charge.refunded": self._refunded,
            "charge.dispute.created": self._dispute_created,
            "charge.dispute.closed": self._dispute_closed,
        }.get(event.type)
        if handler is None:
            return Outcome(event.id, event.type, False, "event type ignored")
        applied, note = await handler(event)
        level = logging.INFO if applied else logging.WARNING
        log.log(level, "stripe event %s (%s): %s", event.id, event.type, note)
        return Outcome(event.id, event.type, applied, note)

    async def _checkout_completed(self, event: StripeEvent) -> tuple[bool, str]:
        session = event.object
        if session.get("payment_status") != "paid":
            return False, "checkout session not paid yet"
        if str(session.get("currency", "")).lower() != "usd":
            return False, f"currency {session.get('currency')!r} is not supported"
        amount_cents = session.get("amount_total")
        if not isinstance(amount_cents, int) or amount_cents <= 0:
            return False, "checkout session without a positive amount_total"
        account_id = str((session.get("metadata") or {}).get("faregate_account_id") or "")
        async with self._sessions.begin() as s:
            owner = await s.scalar(
                select(stripe_customers.c.account_id).where(
                    stripe_customers.c.customer_id == str(session.get("customer") or "")
                )
            )
            if not account_id or owner != account_id or session.get("client_reference_id") != account_id:
                return False, "checkout session of no known account"
            applied = await post(
                s,
                account_id,
                amount_cents * MICROS_PER_CENT,
                kind=EntryKind.TOPUP,
                note=f"Stripe checkout {session.get('id')}",
                idempotency_key=f"stripe:checkout:{session.get('id')}",
                reference=str(session.get("payment_intent") or session.get("id")),
            )
        return applied, "credited" if applied else "already credited"

    async def _refunded(self, event: StripeEvent) -> tuple[bool, str]:
        charge = event.object
        intent = str(charge.get("payment_intent") or "")
        cumulative = charge.get("amount_refunded")
        if not isinstance(cumulative, int) or cumulative <= 0:
            return False, "charge without a refunded amount"
        async with self._sessions.begin() as s:
            account_id = await self._payer(s, intent)
            if account_id is None:
                return False, "refund of a payment Faregate did not credit"
            recorded = await s.scalar(
                select(func.coalesce(func.sum(ledger_entries.c.amount_micros), 0)).where(
                    ledger_entries.c.reference == intent, ledger_entries.c.kind == EntryKind.REFUND.value
                )
            )
            missing = cumulative * MICROS_PER_CENT + int(recorded or 0)
            if missing <= 0:
                return False, "refund already recorded"
            applied = await post(
                s,
                account_id,
                -missing,
                kind=EntryKind.REFUND,
                note=f"Stripe refund of {charge.get('id')}",
                idempotency_key=f"stripe:refund:{intent}:{cumulative}",
                reference=intent,
            )
        return applied, "refund recorded" if applied else "refund already recorded"

    async def _dispute_created(self, event: StripeEvent) -> tuple[bool, str]:
        return await self._dispute(event, -1, "stripe:dispute", "dispute recorded")

    async def _dispute_closed(self, event: StripeEvent) -> tuple[bool, str]:
        if event.object.get("status") != "won":
            return False, f"dispute closed as {event.object.get('status')!r}: nothing to give back"
        return await self._dispute(event, +1, "stripe:dispute_won", "won dispute given back")

    async def _dispute(self, event: StripeEvent, sign: int, key: str, done: str) -> tuple[bool, str]:
        dispute = event.object
        intent = str(dispute.get("payment_intent") or "")
        amount = dispute.get("amount")
        if not isinstance(amount, int) or amount <= 0:
            return False, "dispute without a positive amount"
        async with self._sessions.begin() as s:
            account_id = await self._payer(s, intent)
            if account_id is None:
                return False, "dispute of a payment Faregate did not credit"
            applied = await post(
                s,
                account_id,
                sign * amount * MICROS_PER_CENT,
                kind=EntryKind.DISPUTE,
                note=f"Stripe dispute {dispute.get('id')}",
                idempotency_key=f"{key}:{dispute.get('id')}",
                reference=intent,
            )
        return applied, done if applied else "already recorded"

    @staticmethod
    async def _payer(s: AsyncSession, intent: str) -> str | None:
        """The account a payment intent topped up, with its wallet locked for this transaction."""
        if not intent:
            return None
        account_id = await s.scalar(
            select(ledger_entries.c.account_id).where(
                ledger_entries.c.reference == intent, ledger_entries.c.kind == EntryKind.TOPUP.value
            )
        )
        if account_id is not None:
            await s.execute(add_to_wallet(s.get_bind().dialect.name, account_id, 0, int(time.time() * 1000)))
        return account_id


def _check_url(url: str, param: str) -> None:
    parts = urlsplit(url)
    if len(url) > 2048 or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(f"{param} must be an absolute http(s) URL", param=param)
