"""Grants (ADR 11) through the public API against real processes: a busy key's requests are
admitted at the edge from what auth and billing granted it, and nothing about limits,
revocation or money may change because of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from faregate import processes
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.conftest import fake_catalog
from tests.harness import Infra, Stack, ledger, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def key_id_of(stack: Stack, key: str) -> str:
    value: str = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    return value


def well_inside_a_minute(needed: float = 20) -> None:
    """The per-minute count must not roll over mid-test: start with ``needed`` s of the window left."""
    left = 60 - time.time() % 60
    if left < needed:
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
    # Each request holds its worst case (16,000 tokens at 2 USD/M: 0.032 USD) until the ledger
    # applies its usage, which trails the answers; 50 USD leaves room for all 80 and the
    # grants even when the ledger lags far behind (5 USD did not, on a loaded machine: 402).
    acc = stack.create_account(plan="unlimited", credit_usd=50)
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
    assert round(stack.balance_usd(acc) * 1e6) == 50_000_000 - spent


@pytest.fixture(scope="module")
def long_grants(infra: Infra, fake_upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose grants last up to a minute: only auth's change message on NATS can end
    an edge's grant in time for the test below."""
    catalog = fake_catalog(fake_upstream.base_url, processes.free_port())
    env = {"FAKE_UPSTREAM_KEY": "sk-fake-upstream", "FAREGATE_GRANT_SECONDS": "60"}
    with Stack(Path(tmp_path_factory.mktemp("grants")), infra, catalog=catalog, env=env).running() as s:
        yield s


def test_a_key_revoked_elsewhere_loses_its_grant_through_the_change_message(long_grants: Stack) -> None:
    """Revoked over auth's API (another edge, a tool), not through this edge: the edge hears
    faregate.keys.changed on NATS and ends the key's grant long before the grant would end."""
    stack = long_grants
    acc = stack.create_account(plan="unlimited")
    key = stack.create_key(acc)
    key_id = key_id_of(stack, key)
    well_inside_a_minute(needed=40)  # the grant lives to the minute's end: at least 40 s
    assert asyncio.run(_requests(stack.url, key, 30, in_flight=2)) == [200] * 30  # busy: granted
    with grpc.insecure_channel(stack.addrs["auth"]) as channel:
        auth_pb2_grpc.AuthServiceStub(channel).RevokeKey(
            auth_pb2.RevokeKeyRequest(account_id=acc, key_id=key_id), timeout=10
        )

    def refused() -> bool:
        resp = stack.http.post(
            "/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key)
        )
        return resp.status_code == 401

    wait_for(refused, timeout=20, what="the edge to end the revoked key's grant")


def test_an_edge_that_stops_gives_back_what_its_grants_did_not_spend(long_grants: Stack) -> None:
    """Grants are counted in the key's day before they are spent. An edge stopped (a deploy,
    a restart) ends its grants and returns their unspent admissions to auth, so the key keeps
    every request of its day it did not send."""
    stack = long_grants
    key = stack.create_key(stack.create_account(plan="unlimited"))
    stack.admin("PATCH", f"/admin/keys/{key_id_of(stack, key)}", {"requests_per_day": 200})
    well_inside_a_minute(needed=40)  # grants live to the minute's end: the restart happens within one
    assert asyncio.run(_requests(stack.url, key, 60, in_flight=4)) == [200] * 60  # busy: granted
    stack.procs["edge"].stop()
    stack.start_service("edge")
    statuses = asyncio.run(_requests(stack.url, key, 160, in_flight=4))
    assert statuses.count(200) == 140, statuses  # 200 a day, 60 sent before the restart
    assert statuses.count(429) == 20
