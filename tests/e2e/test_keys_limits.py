"""Keys, tenancy and limits through the public API, against real processes."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.harness import Stack, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]
LONG = [{"role": "user", "content": "word " * 100}]  # a reply long enough to stream for seconds


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_account_manages_its_own_keys(stack: Stack) -> None:
    acc = stack.create_account()
    key = stack.create_key(acc)
    created = stack.http.post("/v1/keys", json={"name": "ci", "expires_at": int(time.time()) + 3600}, headers=auth(key))
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["key"].startswith("gw_live_") and new["name"] == "ci" and new["account_id"] == acc
    listed = stack.http.get("/v1/keys", headers=auth(key)).json()["data"]
    assert {k["id"] for k in listed} >= {new["id"]}
    # the account's two keys, each shown only masked: its prefix and last four characters
    assert all("key" not in k for k in listed)
    assert sorted(k["masked"] for k in listed) == sorted(f"{s[:12]}…{s[-4:]}" for s in (key, new["key"]))
    mine = next(k for k in listed if k["id"] == new["id"])
    assert mine["masked"] == f"{new['key'][:12]}…{new['key'][-4:]}" and mine["status"] == "active"
    assert stack.http.delete(f"/v1/keys/{new['id']}", headers=auth(key)).json()["status"] == "revoked"
    time.sleep(1.1)  # the documented bound for revocation
    resp = stack.http.post(
        "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(new["key"])
    )
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "revoked_api_key"


def test_tenants_are_isolated(stack: Stack) -> None:
    a_key = stack.create_key(stack.create_account(name="a"))
    b_acc = stack.create_account(name="b")
    b_key = stack.create_key(b_acc)
    b_key_id = stack.http.get("/v1/keys", headers=auth(b_key)).json()["data"][0]["id"]
    assert all(k["account_id"] != b_acc for k in stack.http.get("/v1/keys", headers=auth(a_key)).json()["data"])
    resp = stack.http.delete(f"/v1/keys/{b_key_id}", headers=auth(a_key))
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found"
    assert stack.http.get("/v1/keys", headers=auth(b_key)).json()["data"][0]["status"] == "active"
    for path in ("/admin/accounts", f"/admin/accounts/{b_acc}"):
        assert stack.http.get(path, headers=auth(a_key)).status_code in (401, 405)
    assert stack.http.patch(f"/admin/keys/{b_key_id}", json={"rpm": 1}, headers=auth(a_key)).status_code == 401


def test_key_endpoints_refuse_bad_input(stack: Stack) -> None:
    key = stack.create_key(stack.create_account())
    assert stack.http.get("/v1/keys").status_code == 401
    assert stack.http.get("/v1/keys", headers=auth("gw_live_nope")).status_code == 401
    for body in (b"{nope", b"[]", b'{"mode": "prod"}', b'{"expires_at": -5}', b'{"name": 7}'):
        resp = stack.http.post("/v1/keys", content=body, headers=auth(key))
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["type"] == "invalid_request"
    test_key = stack.create_key(stack.create_account(), mode="test")
    resp = stack.http.post("/v1/keys", json={"mode": "live"}, headers=auth(test_key))
    assert resp.status_code == 403


def test_rate_limit_headers_and_429_with_retry_after(stack: Stack) -> None:
    acc = stack.create_account(plan="basic")
    key = stack.create_key(acc)
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    assert stack.admin("PATCH", f"/admin/keys/{key_id}", {"rpm": 3}).json()["limits"]["rpm"] == 3
    remaining = []
    for _ in range(3):
        resp = stack.http.post(
            "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key)
        )
        assert resp.status_code == 200
        assert resp.headers["x-ratelimit-limit"] == "3"
        assert int(resp.headers["x-ratelimit-reset"]) > time.time()
        remaining.append(int(resp.headers["x-ratelimit-remaining"]))
    assert remaining == [2, 1, 0]
    resp = stack.http.post(
        "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key)
    )
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert "requests per minute" in resp.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError):
        stack.sdk(key).chat.completions.create(model="faregate/echo", messages=HELLO)


async def _burst(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one() -> int:
            r = await client.post(
                "/v1/chat/completions", headers=auth(key), json={"model": "faregate/echo", "messages": HELLO}
            )
            return r.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_a_concurrent_burst_gets_no_more_than_the_limit(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(plan="basic"))
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    stack.admin("PATCH", f"/admin/keys/{key_id}", {"rpm": 10})
    statuses = asyncio.run(_burst(stack.url, key, 40))
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 30


def test_daily_request_limit(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(plan="basic"))
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    stack.admin("PATCH", f"/admin/keys/{key_id}", {"requests_per_day": 2})
    codes = [
        stack.http.post(
            "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key)
        ).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]


def test_daily_token_limit_is_learned_from_the_usage_stream(stack: Stack) -> None:
    """Auth counts a key's tokens from the UsageRecords on NATS (services/auth/usage.py):
    once the day's tokens reach the limit, the next request is refused."""
    key = stack.create_key(stack.create_account(plan="basic"))
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    stack.admin("PATCH", f"/admin/keys/{key_id}", {"tokens_per_day": 30})

    def send() -> httpx.Response:
        return stack.http.post(
            "/v1/chat/completions", json={"model": "faregate/echo", "messages": LONG}, headers=auth(key)
        )

    first = send()
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 30
    refused = wait_for(lambda: (r := send()).status_code == 429 and r, what="the daily token limit")
    assert refused.json()["error"]["code"] == "daily_tokens_exceeded"


def test_concurrency_ceiling_and_slots_come_back(stack: Stack, fake_upstream) -> None:
    acc = stack.create_account(plan="basic", credit_usd=5)
    key = stack.create_key(acc)
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    stack.admin("PATCH", f"/admin/keys/{key_id}", {"concurrency": 2})
    body = {"model": "fake-model", "messages": LONG, "stream": True}
    fake_upstream.set_behavior("ok", model="fake-upstream-model", chunks=50, chunk_interval=0.05)
    try:
        with (
            httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=auth(key)) as s1,
            httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=auth(key)) as s2,
        ):
            assert s1.status_code == 200 and s2.status_code == 200
            third = stack.http.post("/v1/chat/completions", json=body, headers=auth(key))
            assert third.status_code == 429 and "concurrency" in third.json()["error"]["message"]
            next(s1.iter_lines())
        # both clients went away mid-stream: their slots are released
        wait_for(
            lambda: (
                stack.http.post("/v1/chat/completions", json={**body, "stream": False}, headers=auth(key)).status_code
                == 200
            ),
            what="a freed slot",
        )
    finally:
        fake_upstream.reset()


def test_guest_sandbox(stack: Stack) -> None:
    # The guest budget is per client address; this stack's clients are all 127.0.0.1.
    resp = stack.http.post(
        "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO, "max_tokens": 10_000}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "hello"
    resp = stack.http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "guest_model_not_allowed"
    long = [{"role": "user", "content": "w " * 400}]
    resp = stack.http.post("/v1/chat/completions", json={"model": "faregate/echo", "messages": long})
    assert resp.json()["usage"]["completion_tokens"] == 256  # max_tokens capped for guests
    codes = [
        stack.http.post("/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}).status_code
        for _ in range(5)
    ]
    assert 429 in codes and codes.count(200) <= 2  # 5 per minute per address, 3 already used
    resp = stack.http.post("/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO})
    assert resp.status_code == 429 and "guest" in resp.json()["error"]["message"]
    assert int(resp.headers["retry-after"]) >= 1
    # a forwarded address is believed only from a trusted proxy (none configured here)
    resp = stack.http.post(
        "/v1/chat/completions",
        json={"model": "faregate/echo", "messages": HELLO},
        headers={"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"},
    )
    assert resp.status_code == 429, "a client must not pick its own address with X-Forwarded-For"
