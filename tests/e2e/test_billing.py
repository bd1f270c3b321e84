"""Wallets, holds and the account's views through the public API, against real processes."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import nats
import openai
import pytest

from faregate.money import token_cost
from faregate.pb.events.v1.usage_pb2 import UsageRecord
from faregate.tokens import estimate_messages
from tests.harness import Stack, ledger, wait_for

pytestmark = pytest.mark.e2e

# fake-model costs 1 / 2 micro-USD per prompt / completion token; the fake upstream counts words.
WORDS = "xylophone quokka zephyr jubilant marmalade vortex nimbus quasar"
MESSAGES = [{"role": "user", "content": WORDS}]
COST = 8 * 1 + 11 * 2  # 8 prompt words; "fake reply to: " + 8 words = 11 completion words
MAX_TOKENS = 20
WORST = token_cost(estimate_messages(MESSAGES), MAX_TOKENS, 1_000_000, 2_000_000)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(stack: Stack, key: str, model: str = "fake-model", **extra: Any) -> Any:
    return stack.http.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, **extra},
        headers=auth(key),
    )


def wallet(stack: Stack, key: str) -> dict[str, Any]:
    resp = stack.http.get("/v1/billing", headers=auth(key))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


def applied(stack: Stack, account_id: str, n: int) -> list[Any]:
    return wait_for(
        lambda: u if len(u := [e for e in ledger(stack, account_id) if e.kind == "usage"]) >= n else None,
        what=f"{n} usage entries",
    )


def test_64_concurrent_requests_overdraw_a_nearly_empty_wallet_by_at_most_one_worst_case(stack: Stack) -> None:
    assert WORST > COST > 0
    credit = COST + 2 * WORST + WORST // 2
    account_id = stack.create_account(credit_usd=credit / 1e6)
    key = stack.create_key(account_id)
    assert chat(stack, key).status_code == 200  # the edge now knows the key's account: holds go with auth
    applied(stack, account_id, 1)

    async def burst() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)
        calls = [
            client.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
            for _ in range(64)
        ]
        try:
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    results = asyncio.run(burst())
    answered = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(answered) + len(refused) == 64, [r for r in results if isinstance(r, Exception)][:3]
    assert answered and refused
    assert all(r.status_code == 402 and r.body["type"] == "insufficient_balance" for r in refused)  # type: ignore[index]
    applied(stack, account_id, 1 + len(answered))
    view = wait_for(lambda: w if (w := wallet(stack, key))["held_usd"] == 0 else None, what="holds released")
    balance = micros(view["balance_usd"])
    assert balance == credit - COST * (1 + len(answered))
    assert balance >= -WORST, f"overdrawn by {-balance} micro-USD, more than one worst case ({WORST})"


def test_a_wallet_in_debt_is_refused_with_402(stack: Stack) -> None:
    account_id = stack.create_account(credit_usd=1e-6)
    key = stack.create_key(account_id)
    assert chat(stack, key).status_code == 200  # 1 micro-USD left was not below the minimum of 0
    applied(stack, account_id, 1)
    resp = chat(stack, key)
    assert resp.status_code == 402, resp.text
    err = resp.json()["error"]
    assert err["type"] == "insufficient_balance" and "below the minimum" in err["message"]
    assert resp.headers["x-request-id"].startswith("req_")
    assert chat(stack, key, model="faregate/echo").status_code == 200  # free models need no funds
    stack.admin("PUT", f"/admin/accounts/{account_id}/credit_limit", {"credit_limit_usd": 0.001})
    assert chat(stack, key).status_code == 200  # granted credit counts as funds


def test_a_request_in_flight_holds_its_worst_case_until_its_usage_is_applied(stack: Stack, fake_upstream: Any) -> None:
    account_id = stack.create_account(credit_usd=1)
    key = stack.create_key(account_id)
    fake_upstream.set_behavior("slow", model="fake-upstream-model", delay=2.0, times=1)
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(chat(stack, key).status_code))
    worker.start()
    try:
        held = wait_for(lambda: wallet(stack, key)["held_usd"] or None, what="a hold while the request runs")
        assert micros(held) == WORST
    finally:
        worker.join(30)
        fake_upstream.reset()
    assert results == [200]
    applied(stack, account_id, 1)
    after = wallet(stack, key)
    assert after["held_usd"] == 0 and micros(after["balance_usd"]) == 1_000_000 - COST


def test_holds_of_requests_that_never_reach_the_upstream_are_given_back(stack: Stack, fake_upstream: Any) -> None:
    account_id = stack.create_account(credit_usd=1)
    key = stack.create_key(account_id)
    assert chat(stack, key).status_code == 200  # learn the key's account: the next holds go with auth
    fake_upstream.set_behavior("error", model="fake-upstream-model", status=500, times=1)
    try:
        assert chat(stack, key).status_code == 502
    finally:
        fake_upstream.reset()
    assert chat(stack, key, model="fake-down").status_code in (502, 503)
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    other = stack.create_key(account_id)
    assert stack.http.delete(f"/v1/keys/{key_id}", headers=auth(other)).status_code == 200
    time.sleep(1.1)  # auth's documented revocation bound
    assert chat(stack, key).status_code == 401  # the hold went out beside auth's refusal
    wait_for(lambda: wallet(stack, other)["held_usd"] == 0, what="every hold given back")
    applied(stack, account_id, 1)
    assert micros(wallet(stack, other)["balance_usd"]) == 1_000_000 - COST


def test_test_keys_and_guests_place_no_hold_and_pay_nothing(stack: Stack) -> None:
    account_id = stack.create_account()
    test_key = stack.create_key(account_id, mode="test")
    assert chat(stack, test_key, model="faregate/echo").status_code == 200
    assert wallet(stack, test_key)["balance_usd"] == 0
    resp = stack.http.post("/v1/billing/checkout", json={"amount_usd": 5}, headers=auth(test_key))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "live_key_required"


def test_views_show_the_accounts_own_metadata_page_by_page(stack: Stack) -> None:
    account_id = stack.create_account(plan="pro", credit_usd=2)
    stack.admin("POST", f"/admin/accounts/{account_id}/credit", {"amount_usd": 0.5, "note": "bonus"})
    key = stack.create_key(account_id)
    ids = [chat(stack, key, user="x").headers["x-request-id"] for _ in range(3)]
    streamed = stack.http.post(
        "/v1/chat/completions",
        json={"model": "fake-model", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True},
        headers=auth(key),
    )
    ids.append(streamed.headers["x-request-id"])
    applied(stack, account_id, 4)

    pages, cursor = [], ""
    while True:
        page = stack.http.get("/v1/requests", params={"limit": 3, "cursor": cursor}, headers=auth(key)).json()
        pages.append(page)
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    listed = [r for p in pages for r in p["data"]]
    assert [r["id"] for r in listed] == ids[::-1] and len(pages) == 2
    assert all("quokka" not in str(r) and "fake reply" not in str(r) for r in listed)  # never text
    first = listed[-1]
    assert first["model"] == "fake-model" and first["provider"] == "fake" and first["status"] == "ok"
    assert (first["prompt_tokens"], first["completion_tokens"], micros(first["cost_usd"])) == (8, 11, COST)
    assert first["latency_ms"] >= 0 and first["key_id"].startswith("key_") and listed[0]["stream"] is True

    txns, cursor = [], ""
    while True:
        page = stack.http.get(
            "/v1/billing/transactions", params={"limit": 2, "cursor": cursor}, headers=auth(key)
        ).json()
        txns += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert [t["type"] for t in txns] == ["usage"] * 4 + ["credit_grant"] * 2
    assert (
        sum(micros(t["amount_usd"]) for t in txns) == 2_500_000 - 4 * COST == micros(wallet(stack, key)["balance_usd"])
    )

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    by_model = stack.http.get("/v1/usage", params={"group_by": "model"}, headers=auth(key)).json()
    assert by_model["data"] == [
        {
            "model": "fake-model",
            "requests": 4,
            "prompt_tokens": 32,
            "completion_tokens": 44,
            "total_tokens": 76,
            "cost_usd": 4 * COST / 1e6,
        }
    ]
    by_day = stack.http.get(
        "/v1/usage", params={"group_by": "day", "start": today, "end": str(time.time() + 60)}, headers=auth(key)
    ).json()
    assert [(d["day"], d["requests"]) for d in by_day["data"]] == [(today, 4)]
    by_key = stack.http.get("/v1/usage", params={"group_by": "key"}, headers=auth(key)).json()
    assert [k["key_id"] for k in by_key["data"]] == [first["key_id"]]

    balance = stack.http.get("/v1/balance", headers=auth(key)).json()
    assert balance["plan"] == "pro" and balance["used_this_month"] == 76
    assert balance["quota_this_month"] == 50_000_000 and balance["quota_remaining"] == 50_000_000 - 76
    reset = datetime.fromtimestamp(balance["quota_reset_at"], UTC)
    assert reset.day == 1 and reset > datetime.now(UTC) and (reset.hour, reset.minute) == (0, 0)
    assert micros(balance["balance"]) == 2_500_000 - 4 * COST

    stranger = stack.create_key(stack.create_account(name="stranger"))
    assert stack.http.get("/v1/requests", headers=auth(stranger)).json()["data"] == []
    assert stack.http.get("/v1/usage", headers=auth(stranger)).json()["data"] == []
    assert stack.http.get("/v1/billing/transactions", headers=auth(stranger)).json()["data"] == []
    assert wallet(stack, stranger)["recent_requests"] == []


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/requests", {"cursor": "not-a-cursor"}),
        ("/v1/billing/transactions", {"limit": 0}),
        ("/v1/requests", {"limit": 101}),
        ("/v1/usage", {"group_by": "hour"}),
        ("/v1/usage", {"start": "yesterday"}),
        ("/v1/usage", {"start": "2026-02-01", "end": "2026-01-01"}),
    ],
)
def test_views_refuse_bad_input(stack: Stack, path: str, params: dict[str, Any]) -> None:
    key = stack.create_key(stack.create_account())
    resp = stack.http.get(path, params=params, headers=auth(key))
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request", resp.text
    assert stack.http.get(path).status_code == 401


def test_without_stripe_keys_payments_answer_503(stack: Stack) -> None:
    key = stack.create_key(stack.create_account())
    for path, body in (
        ("/v1/billing/checkout", {"amount_usd": 10, "success_url": "https://a/ok", "cancel_url": "https://a/no"}),
        ("/v1/billing/portal", {"return_url": "https://a/back"}),
    ):
        resp = stack.http.post(path, json=body, headers=auth(key))
        assert resp.status_code == 503 and "Stripe is not configured" in resp.json()["error"]["message"], resp.text
    resp = stack.http.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
    assert resp.status_code == 503 and "FAREGATE_STRIPE_WEBHOOK_SECRET" in resp.json()["error"]["message"]


def test_admin_credit_limits_are_checked(stack: Stack) -> None:
    account_id = stack.create_account()
    resp = stack.admin("PUT", f"/admin/accounts/{account_id}/credit_limit", {"credit_limit_usd": 2.5})
    assert resp.status_code == 200 and resp.json()["available_usd"] == 2.5
    assert stack.admin("PUT", f"/admin/accounts/{account_id}/credit_limit", {"credit_limit_usd": -1}).status_code == 400
    assert stack.admin("PUT", "/admin/accounts/acc_nope/credit_limit", {"credit_limit_usd": 1}).status_code == 404
    key = stack.create_key(account_id)
    assert stack.http.put(f"/admin/accounts/{account_id}/credit_limit", json={}, headers=auth(key)).status_code == 401


def test_a_record_of_an_unknown_account_is_dead_lettered_with_its_reason(stack: Stack) -> None:
    before = stack.http.get("/health").json()["metering"]["dead_lettered"]
    rid = f"req_{time.time_ns()}"
    record = UsageRecord(request_id=rid, account_id="acc_nobody_knows", key_id="key_x", model="m", cost_micros=5)

    async def publish_and_read_back() -> dict[str, str]:
        nc = await nats.connect(stack.infra.nats_url)
        try:
            js = nc.jetstream()
            await js.publish(stack.usage_subject, record.SerializeToString(), headers={"Nats-Msg-Id": rid})
            wait = time.monotonic() + 20
            while time.monotonic() < wait:
                try:
                    msg = await js.get_last_msg(stack.usage_stream, f"{stack.usage_subject}.dead")
                except nats.js.errors.NotFoundError:
                    msg = None
                if msg is not None and UsageRecord.FromString(msg.data).request_id == rid:
                    return dict(msg.headers or {})
                await asyncio.sleep(0.1)
            raise AssertionError("no dead letter for the record")
        finally:
            await nc.close()

    headers = asyncio.run(publish_and_read_back())
    assert headers["Faregate-Reason"] == "unknown account 'acc_nobody_knows'"
    wait_for(
        lambda: stack.http.get("/health").json()["metering"]["dead_lettered"] > before, what="dead letters counted"
    )
