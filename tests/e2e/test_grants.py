"""Grants (ADR 11) through the public API against real processes: a busy key's requests are
admitted at the edge from what auth and billing granted it, and nothing about limits,
revocation or money may change because of it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.harness import Stack, ledger, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def key_id_of(stack: Stack, key: str) -> str:
    value: str = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    return value


def well_inside_a_minute() -> None:
    """The per-minute count must not roll over mid-test: start with 20 s of the window left."""
    left = 60 - time.time() % 60
    if left < 20:
        time.sleep(left + 0.5)


async def _requests(url: str, key: str, n: int, in_flight: int, model: str = "faregate/echo") -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        gate = asyncio.Semaphore(in_flight)

        async def one() -> int:
            async with gate:
                r = await client.post(
                    "/v1/chat/completions", headers=auth(key), json={"model": model, "messages": HELLO}
                )
                return r.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_granted_admissions_never_pass_the_limit(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(plan="basic"))
    stack.admin("PATCH", f"/admin/keys/{key_id_of(stack, key)}", {"rpm": 40})
    well_inside_a_minute()
    statuses = asyncio.run(_requests(stack.url, key, 60, in_flight=4))
    assert statuses.count(200) == 40, statuses
    assert statuses.count(429) == 20


def test_a_revoked_key_is_refused_at_once_even_with_a_grant(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(plan="unlimited"))
    assert asyncio.run(_requests(stack.url, key, 30, in_flight=2)) == [200] * 30  # busy: granted
    gone = stack.http.delete(f"/v1/keys/{key_id_of(stack, key)}", headers=auth(key))
    assert gone.status_code == 200, gone.text
    resp = stack.http.post(
        "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key)
    )
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "revoked_api_key"


def test_requests_admitted_on_funds_grants_are_each_metered_and_nothing_stays_held(stack: Stack) -> None:
    acc = stack.create_account(plan="unlimited", credit_usd=5)
    key = stack.create_key(acc)
    statuses = asyncio.run(_requests(stack.url, key, 80, in_flight=8, model="fake-model"))
    assert statuses == [200] * 80
    wait_for(
        lambda: stack.http.get("/v1/balance", headers=auth(key)).json()["held"] == 0,
        what="the grants and holds to be given back",
    )
    usage = [e for e in ledger(stack, acc) if e.kind == "usage"]
    assert len(usage) == 80 and len({e.request_id for e in usage}) == 80
    spent = -sum(e.amount_micros for e in usage)
    assert spent > 0
    assert round(stack.balance_usd(acc) * 1e6) == 5_000_000 - spent
