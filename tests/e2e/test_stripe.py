"""Stripe top-ups end to end: the real SDK in billing against a local Stripe stub, webhooks
signed with Stripe's scheme and delivered to the edge."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.stripe_stub import StripeStub, event, sign
from tests.harness import Infra, Stack

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = f"whsec_{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def stripe_stub() -> Iterator[StripeStub]:
    stub = StripeStub(api_key=f"sk_test_{secrets.token_hex(12)}").start()
    yield stub
    stub.stop()


@pytest.fixture(scope="module")
def paying(infra: Infra, stripe_stub: StripeStub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "FAREGATE_STRIPE_SECRET_KEY": stripe_stub.api_key,
        "FAREGATE_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "FAREGATE_STRIPE_API_BASE": stripe_stub.api_base,
    }
    stack = Stack(Path(tmp_path_factory.mktemp("stripe-stack")), infra, env=env)
    try:
        stack.start()
    except Exception:
        print(stack.logs())
        stack.stop()
        raise
    yield stack
    stack.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def deliver(stack: Stack, body: bytes, signature: str | None = None) -> Any:
    return stack.http.post(
        "/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": signature if signature is not None else sign(body, WEBHOOK_SECRET)},
    )


def balance(stack: Stack, key: str) -> float:
    value: float = stack.http.get("/v1/balance", headers=auth(key)).json()["balance"]
    return value


def test_checkout_then_webhook_tops_the_wallet_up_once(paying: Stack, stripe_stub: StripeStub) -> None:
    account_id = paying.create_account()
    key = paying.create_key(account_id)
    resp = paying.http.post(
        "/v1/billing/checkout",
        json={"amount_usd": 25.5, "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no"},
        headers=auth(key),
    )
    assert resp.status_code == 200, resp.text
    session_id, url = resp.json()["id"], resp.json()["url"]
    assert url == stripe_stub.sessions[session_id]["url"] and stripe_stub.sessions[session_id]["amount_total"] == 2550
    assert balance(paying, key) == 0
    body = event("checkout.session.completed", stripe_stub.pay(session_id))
    first, replay = deliver(paying, body), deliver(paying, body)
    assert first.status_code == replay.status_code == 200, first.text
    assert (first.json()["applied"], replay.json()["applied"]) == (True, False)
    assert balance(paying, key) == 25.5
    txns = paying.http.get("/v1/billing/transactions", headers=auth(key)).json()["data"]
    assert [(t["kind"], t["amount_usd"]) for t in txns] == [("topup", 25.5)]

    portal = paying.http.post("/v1/billing/portal", json={"return_url": "https://app.example/b"}, headers=auth(key))
    assert portal.status_code == 200 and portal.json()["url"].startswith("https://billing.stripe.test/")
    assert stripe_stub.requests[-1]["params"]["customer"] == stripe_stub.sessions[session_id]["customer"]

    pi = stripe_stub.sessions[session_id]["payment_intent"]
    refund = event("charge.refunded", {"id": "ch_1", "payment_intent": pi, "amount": 2550, "amount_refunded": 550})
    assert deliver(paying, refund).json()["applied"] is True
    dispute = event("charge.dispute.created", {"id": "dp_1", "payment_intent": pi, "amount": 1000})
    assert deliver(paying, dispute).json()["applied"] is True
    assert deliver(paying, dispute).json()["applied"] is False
    assert balance(paying, key) == 10.0
    done = paying.cli("ledger", "verify")
    assert done.returncode == 0, done.stdout + done.stderr


def test_forged_and_stale_webhooks_are_refused_with_400(paying: Stack, stripe_stub: StripeStub) -> None:
    account_id = paying.create_account()
    key = paying.create_key(account_id)
    link = paying.http.post(
        "/v1/billing/checkout",
        json={"amount_usd": 5, "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"},
        headers=auth(key),
    ).json()
    body = event("checkout.session.completed", stripe_stub.pay(link["id"]))
    for signature in (
        sign(body, "whsec_forged"),
        sign(body, WEBHOOK_SECRET, int(time.time()) - 600),
        "",
    ):
        resp = deliver(paying, body, signature)
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request", resp.text
    tampered = body.replace(b'"amount_total":500', b'"amount_total":50000')
    assert tampered != body
    assert deliver(paying, tampered, sign(body, WEBHOOK_SECRET)).status_code == 400
    assert balance(paying, key) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"amount_usd": 0, "success_url": "https://a/ok", "cancel_url": "https://a/no"},
        {"amount_usd": -3, "success_url": "https://a/ok", "cancel_url": "https://a/no"},
        {"amount_usd": 1e9, "success_url": "https://a/ok", "cancel_url": "https://a/no"},
        {"amount_usd": 0.5, "success_url": "https://a/ok", "cancel_url": "https://a/no"},
        {"amount_usd": 5, "success_url": "ftp://a/ok", "cancel_url": "https://a/no"},
        {"amount_usd": 5},
    ],
)
def test_bad_checkouts_are_refused(paying: Stack, body: dict[str, Any]) -> None:
    key = paying.create_key(paying.create_account())
    resp = paying.http.post("/v1/billing/checkout", json=body, headers=auth(key))
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request", resp.text
