"""Top-ups: the real `stripe` SDK against a local Stripe stub, webhooks signed the real way."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import stripe
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.errors import InvalidRequest, ServiceUnavailable, UpstreamError
from services.billing.ledger import Ledger
from services.billing.stripe_payments import StripePayments
from services.billing.topups import TopUps
from tests.fakes.stripe_stub import StripeStub, event, sign

SECRET = "whsec_unit_test_secret"


@pytest.fixture(scope="module")
def stub() -> Iterator[StripeStub]:
    s = StripeStub().start()
    yield s
    s.stop()


@pytest.fixture
async def payments(stub: StripeStub) -> AsyncIterator[StripePayments]:
    http = stripe.AIOHTTPClient(timeout=5)
    client = stripe.StripeClient(stub.api_key, base_addresses={"api": stub.api_base}, http_client=http)
    made = StripePayments(client, SECRET, http_client=http)
    yield made
    await made.close()  # the SDK's aiohttp session, as billing's server closes it


def account() -> str:
    return f"acc_{secrets.token_hex(6)}"


async def paid(topups: TopUps, stub: StripeStub, acc: str, usd: int) -> dict[str, Any]:
    link = await topups.checkout(acc, usd * 1_000_000, "https://app.example/ok", "https://app.example/no")
    return stub.pay(link.id)


async def deliver(topups: TopUps, type_: str, obj: dict[str, Any], event_id: str | None = None) -> Any:
    body = event(type_, obj, event_id)
    return await topups.handle_webhook(body, sign(body, SECRET))


async def test_checkout_makes_one_customer_per_account_and_a_session(
    sessions: async_sessionmaker[Any], stub: StripeStub, payments: StripePayments
) -> None:
    topups = TopUps(sessions, payments)
    acc = account()
    first = await topups.checkout(acc, 25_000_000, "https://app.example/ok", "https://app.example/no")
    second = await topups.checkout(acc, 12_340_000, "https://app.example/ok", "https://app.example/no")
    assert first.url.startswith("https://checkout.stripe.test/") and first.id != second.id
    s1, s2 = stub.sessions[first.id], stub.sessions[second.id]
    assert s1["customer"] == s2["customer"] and (s1["amount_total"], s2["amount_total"]) == (2500, 1234)
    assert s1["metadata"] == {"faregate_account_id": acc} and s1["client_reference_id"] == acc
    portal = await topups.portal(acc, "https://app.example/billing")
    assert portal.url.startswith("https://billing.stripe.test/")
    assert stub.requests[-1]["params"]["customer"] == s1["customer"]


async def test_bad_checkouts_are_refused_before_stripe(
    sessions: async_sessionmaker[Any], stub: StripeStub, payments: StripePayments
) -> None:
    topups = TopUps(sessions, payments)
    before = len(stub.requests)
    for amount, ok, cancel in (
        (0, "https://a/ok", "https://a/no"),
        (-5_000_000, "https://a/ok", "https://a/no"),
        (500_000, "https://a/ok", "https://a/no"),  # under 1 USD
        (10**12, "https://a/ok", "https://a/no"),
        (1_234_567, "https://a/ok", "https://a/no"),  # not whole cents
        (5_000_000, "javascript:alert(1)", "https://a/no"),
        (5_000_000, "https://a/ok", "/relative"),
    ):
        with pytest.raises(InvalidRequest):
            await topups.checkout(account(), amount, ok, cancel)
    assert len(stub.requests) == before


async def test_stripe_failures_and_missing_configuration_are_our_errors(
    sessions: async_sessionmaker[Any], stub: StripeStub, payments: StripePayments
) -> None:
    stub.fail_next = 500
    with pytest.raises(UpstreamError):
        await TopUps(sessions, payments).checkout(account(), 5_000_000, "https://a/ok", "https://a/no")
    bare = TopUps(sessions, StripePayments(None, None))
    with pytest.raises(ServiceUnavailable) as err:
        await bare.checkout(account(), 5_000_000, "https://a/ok", "https://a/no")
    assert "FAREGATE_STRIPE_SECRET_KEY" in err.value.message and err.value.code == "stripe_not_configured"
    with pytest.raises(ServiceUnavailable):
        await bare.handle_webhook(b"{}", "t=1,v1=00")


async def test_a_paid_checkout_credits_once_however_often_it_is_delivered(
    sessions: async_sessionmaker[Any], stub: StripeStub, payments: StripePayments
) -> None:
    topups, ledger = TopUps(sessions, payments), Ledger(sessions)
    acc = account()
    session = await paid(topups, stub, acc, 20)
    first = await deliver(topups, "checkout.session.completed", session, "evt_a")
    replay = await deliver(topups, "checkout.session.completed", session, "evt_a")
    other = await deliver(topups, "checkout.session.async_payment_succeeded", session)
    assert (first.applied, replay.applied, other.applied) == (True, False, False)
    assert (await ledger.wallet(acc)).balance_micros == 20_000_000
    unpaid = await topups.checkout(acc, 5_000_000, "https://a/ok", "https://a/no")
    pending = await deliver(topups, "checkout.session.completed", stub.sessions[unpaid.id])
    assert not pending.applied and (await ledger.wallet(acc)).balance_micros == 20_000_000


async def test_forged_stale_and_foreign_deliveries_move_no_money(
    sessions: async_sessionmaker[Any], stub: StripeStub, payments: StripePayments
) -> None:
    topups, ledger = TopUps(sessions, payments), Ledger(sessions)
    acc = account()
    session = await paid(topups, stub, acc, 10)
    body = event("checkout.session.completed", session)
    for header in (
        sign(body, "whsec_someone_else"),
        sign(body, SECRET, int(time.time()) - 3600),  # stale: outside the 300 s tolerance
        sign(body + b" ", SECRET).replace("v1=", "v1=0"),
        "",
        "garbage",
    ):
        with pytest.raises(InvalidRequest):
            await topups.handle_webhook(body, header)
    with pytest.raises(InvalidRequest):
        await topups.handle_webhook(b"not json", sign(b"not json", SECRET))
    stolen = {**session, "metadata": {"faregate_account_id": account()}}  # another account's id, our customer
    assert not (await deliver(topups, "checkout.session.completed", stolen)).applied
    assert not (await deliver(topups, "checkout.session.completed", {**session, "currency": "eur"})).applied
    assert not (await deliver(topups, "customer.created", {"id": "cus_x"})).applied
    assert (await ledger.wallet(acc)).balance_micros == 0


async def test_refunds_and_disputes_are_negative_entries_recorded_once(
    sessions: async_sessionmaker[Any], stub: StripeStub, payments: StripePayments
) -> None:
    topups, ledger = TopUps(sessions, payments), Ledger(sessions)
    acc = account()
    session = await paid(topups, stub, acc, 50)
    await deliver(topups, "checkout.session.completed", session)
    pi = session["payment_intent"]
    charge = {"id": f"ch_{secrets.token_hex(6)}", "object": "charge", "payment_intent": pi, "amount": 5000}
    # Partial refunds, delivered out of order and twice: the cumulative amount decides.
    assert (await deliver(topups, "charge.refunded", {**charge, "amount_refunded": 1500})).applied
    assert (await deliver(topups, "charge.refunded", {**charge, "amount_refunded": 500})).applied is False
    assert (await deliver(topups, "charge.refunded", {**charge, "amount_refunded": 1500})).applied is False
    assert (await ledger.wallet(acc)).balance_micros == 35_000_000
    dispute = {"id": f"dp_{secrets.token_hex(6)}", "object": "dispute", "payment_intent": pi, "amount": 2000}
    assert (await deliver(topups, "charge.dispute.created", dispute)).applied
    assert not (await deliver(topups, "charge.dispute.created", dispute)).applied
    assert (await ledger.wallet(acc)).balance_micros == 15_000_000
    assert not (await deliver(topups, "charge.dispute.closed", {**dispute, "status": "lost"})).applied
    assert (await deliver(topups, "charge.dispute.closed", {**dispute, "status": "won"})).applied
    assert (await ledger.wallet(acc)).balance_micros == 35_000_000
    kinds = [e["kind"] for e in await ledger.entries(acc)]
    assert kinds == ["dispute", "dispute", "refund", "topup"]
    unknown = {**charge, "payment_intent": "pi_never_credited", "amount_refunded": 100}
    assert not (await deliver(topups, "charge.refunded", unknown)).applied
