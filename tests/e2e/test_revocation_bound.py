"""Revocation bounded without NATS: two auth replicas, the change message lost for one of
them (it listens on a nats-server of its own), and ``DELETE`` answering only once every
replica refuses the key (ADR 16)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faregate import processes
from tests.conftest import fake_catalog
from tests.harness import Infra, Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def deaf_replica(infra: Infra, fake_upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = Path(tmp_path_factory.mktemp("revocation"))
    s = Stack(
        home, infra, catalog=fake_catalog(fake_upstream.base_url, 9), env={"FAKE_UPSTREAM_KEY": "sk-fake-upstream"}
    )
    second = s.add_replica_address("auth")

    def start(s: Stack) -> None:
        s.start_service("auth")
        # the second replica hears nothing the first announces: another nats-server
        _, other_nats = s.launcher.nats(home / "other-nats")
        proc = s.launcher.service("auth", {"FAREGATE_AUTH_ADDR": second, "FAREGATE_NATS_URL": other_nats})
        s.procs[second] = proc
        processes.wait_grpc_serving(second, proc)
        for name in ("billing", "router", "edge"):
            s.start_service(name)

    with s.running(start):
        yield s


async def _busy(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        gate = asyncio.Semaphore(2)

        async def one() -> int:
            async with gate:
                r = await client.post(
                    "/v1/chat/completions", headers=auth(key), json={"model": "faregate/echo", "messages": HELLO}
                )
                return r.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_a_revoke_answers_once_every_replica_refuses_without_the_message(deaf_replica: Stack) -> None:
    s = deaf_replica
    key = s.create_key(s.create_account())
    # both replicas' caches warm and the edge granted admissions (the edge balances over both)
    assert asyncio.run(_busy(s.url, key, 30)) == [200] * 30
    key_id = s.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    gone = s.http.delete(f"/v1/keys/{key_id}", headers=auth(key))
    assert gone.status_code == 200 and gone.json()["status"] == "revoked"
    # right after the answer: refused through both replicas (round-robin), none admitted
    answers = [
        s.http.post("/v1/chat/completions", json={"model": "faregate/echo", "messages": HELLO}, headers=auth(key))
        for _ in range(8)
    ]
    assert [a.status_code for a in answers] == [401] * 8
    assert {a.json()["error"]["code"] for a in answers} == {"revoked_api_key"}
