"""Wallets, holds and the account views, through the public API against real processes."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from faregate.money import token_cost
from tests.harness import Stack, ledger, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello there"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def settled(stack: Stack, key: str) -> dict:
    """The balance once every request's usage is applied (no holds left)."""
    return wait_for(
        lambda: (b := stack.http.get("/v1/balance", headers=auth(key)).json())["held"] == 0 and b,
        what="holds to settle",
    )


def test_an_empty_wallet_gets_402_and_free_models_still_work(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(plan="basic"))
    resp = stack.http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=auth(key))
    assert resp.status_code == 402, resp.text
    assert resp.json()["error"]["type"] == "insufficient_balance"
    with pytest.raises(openai.APIStatusError) as info:
        stack.sdk(key).chat.completions.create(model="fake-model", messages=HELLO)
    assert info.value.status_code == 402
    ok = stack.http.post("/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key))
    assert ok.status_code == 200


async def _flood(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=n)) as client:

        async def one() -> int:
            r = await client.post(
                "/v1/chat/completions",
                headers=auth(key),
                json={"model": "fake-model", "messages": HELLO, "max_tokens": 50},
            )
            return r.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_64_concurrent_requests_on_a_nearly_empty_wallet_overdraw_by_at_most_one(stack: Stack) -> None:
    # fake-model: 1 USD / 2 USD per 1M tokens. A request's worst case here is a few hundred
    # micro-USD; the wallet holds 300 micro-USD, enough for about one.
    acc = stack.create_account(plan="unlimited", credit_usd=0.0003)
    key = stack.create_key(acc)
    statuses = asyncio.run(_flood(stack.url, key, 64))
    assert set(statuses) <= {200, 402}, statuses
    assert statuses.count(402) > 0
    answered = statuses.count(200)
    assert answered >= 1
    body = b'{"model":"fake-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":50}'
    worst = token_cost(len(body), 50, 1_000_000, 2_000_000)
    balance = settled(stack, key)["balance"]
    assert balance * 1e6 >= -worst, f"overdraft {balance} USD beyond one request's worst case {worst} µUSD"
    usage = [e for e in ledger(stack, acc) if e.kind == "usage"]
    assert len(usage) == answered


def test_views_show_what_was_used_and_nothing_else(stack: Stack) -> None:
    acc = stack.create_account(plan="pro", credit_usd=3)
    key = stack.create_key(acc)
    client = stack.sdk(key)
    for i in range(3):
        client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"secret {i}"}])
    list(client.chat.completions.create(model="fake-model", messages=HELLO, stream=True))
    client.chat.completions.create(model="faregate/echo", messages=HELLO)  # free: holds nothing
    wait_for(
        lambda: len(stack.http.get("/v1/requests", headers=auth(key)).json()["data"]) == 5,
        what="all five requests metered",
    )
    bal = settled(stack, key)
    assert (
        bal["plan"] == "pro"
        and 0 < bal["spent_this_month"] < 3
        and bal["balance"] == pytest.approx(3 - bal["spent_this_month"])
    )
    assert bal["quota_reset_at"] > 0

    page1 = stack.http.get("/v1/requests?limit=3", headers=auth(key)).json()
    assert page1["has_more"] and len(page1["data"]) == 3
    page2 = stack.http.get(f"/v1/requests?limit=3&cursor={page1['next_cursor']}", headers=auth(key)).json()
    rows = page1["data"] + page2["data"]
    assert len(rows) == 5 and not page2["has_more"]
    assert len({r["id"] for r in rows}) == 5
    assert "secret" not in str(rows)
    assert {r["model"] for r in rows} == {"fake-model", "faregate/echo"}
    streamed = [r for r in rows if r["stream"]]
    assert len(streamed) == 1 and streamed[0]["time_to_first_token_ms"] is not None
    assert all(r["status"] == "ok" and r["latency_ms"] >= 0 for r in rows)

    usage = stack.http.get("/v1/usage?group_by=model", headers=auth(key)).json()["data"]
    by_model = {u["model"]: u for u in usage}
    assert by_model["fake-model"]["requests"] == 4 and by_model["faregate/echo"]["cost_usd"] == 0
    assert sum(u["cost_usd"] for u in usage) == pytest.approx(bal["spent_this_month"])
    billable_tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage if u["model"] != "faregate/echo")
    assert bal["used_this_month"] == billable_tokens > 0  # tokens, against the plan's monthly token quota
    assert bal["quota_this_month"] == 50_000_000 and bal["quota_remaining"] == 50_000_000 - billable_tokens
    assert stack.http.get("/v1/usage?group_by=day", headers=auth(key)).json()["data"][0]["requests"] == 5
    assert stack.http.get("/v1/usage?group_by=key", headers=auth(key)).json()["data"][0]["requests"] == 5

    tx = stack.http.get("/v1/billing/transactions?limit=2", headers=auth(key)).json()
    assert len(tx["data"]) == 2 and tx["has_more"]
    summary = stack.http.get("/v1/billing", headers=auth(key)).json()
    assert summary["balance_usd"] == bal["balance"] and len(summary["recent_usage"]) == 5


def test_views_are_scoped_to_the_callers_account(stack: Stack) -> None:
    a = stack.create_key(stack.create_account(name="a", credit_usd=1))
    b = stack.create_key(stack.create_account(name="b", credit_usd=1))
    stack.http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=auth(a))
    wait_for(lambda: stack.http.get("/v1/requests", headers=auth(a)).json()["data"], what="a's request")
    assert stack.http.get("/v1/requests", headers=auth(b)).json()["data"] == []
    assert stack.http.get("/v1/usage", headers=auth(b)).json()["data"] == []
    assert [t["kind"] for t in stack.http.get("/v1/billing/transactions", headers=auth(b)).json()["data"]] == [
        "credit_grant"
    ]


@pytest.mark.parametrize(
    "query",
    [
        "/v1/usage?group_by=color",
        "/v1/usage?start=yesterday",
        "/v1/usage?start=2000&end=1000",
        "/v1/requests?limit=0",
        "/v1/requests?cursor=abc",
        "/v1/billing/transactions?limit=9999",
    ],
)
def test_views_refuse_bad_parameters(stack: Stack, query: str) -> None:
    key = stack.create_key(stack.create_account())
    resp = stack.http.get(query, headers=auth(key))
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request", resp.text


def test_views_need_a_key(stack: Stack) -> None:
    for path in ("/v1/balance", "/v1/billing", "/v1/requests", "/v1/usage", "/v1/billing/transactions"):
        assert stack.http.get(path).status_code == 401


def _chat(stack: Stack, key: str, model: str = "fake-model") -> httpx.Response:
    return stack.http.post(
        "/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 20}, headers=auth(key)
    )


def test_holds_of_requests_that_never_reach_an_answer_are_given_back(stack: Stack, fake_upstream) -> None:
    acc = stack.create_account(credit_usd=1)
    key, other = stack.create_key(acc), stack.create_key(acc)
    assert _chat(stack, key).status_code == 200  # the edge learns the key's account: holds now go beside auth
    fake_upstream.set_behavior("error", model="fake-upstream-model", status=500, times=1)
    try:
        assert _chat(stack, key).status_code == 502  # the router failed before answering
    finally:
        fake_upstream.reset()
    mine = stack.http.get("/v1/keys", headers=auth(key)).json()["data"]
    key_id = next(k["id"] for k in mine if k["masked"] == f"{key[:12]}…{key[-4:]}")
    assert stack.http.delete(f"/v1/keys/{key_id}", headers=auth(other)).status_code == 200
    wait_for(lambda: _chat(stack, key).status_code == 401, what="the revoked key refused")  # its hold went too
    wait_for(
        lambda: stack.http.get("/v1/billing", headers=auth(other)).json()["held_usd"] == 0,
        what="every hold given back",
    )
    assert len([e for e in ledger(stack, acc) if e.kind == "usage"]) == 1


def test_payments_need_a_live_key_and_stripe_keys(stack: Stack) -> None:
    acc = stack.create_account()
    live, test = stack.create_key(acc), stack.create_key(acc, mode="test")
    checkout = {"amount_usd": 10, "success_url": "https://a.example/ok", "cancel_url": "https://a.example/no"}
    resp = stack.http.post("/v1/billing/checkout", json=checkout, headers=auth(test))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "live_key_required"
    for path, body in (("/v1/billing/checkout", checkout), ("/v1/billing/portal", {"return_url": "https://a/b"})):
        resp = stack.http.post(path, json=body, headers=auth(live))
        assert resp.status_code == 503 and "Stripe is not configured" in resp.json()["error"]["message"], resp.text
    resp = stack.http.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
    assert resp.status_code == 503 and "FAREGATE_STRIPE_WEBHOOK_SECRET" in resp.json()["error"]["message"]
