"""Limits that survive a kill -9 of auth (ADR 16), and the X-RateLimit-* headers of a 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import fake_catalog
from tests.harness import Infra, Stack, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]
LONG = [{"role": "user", "content": "word " * 100}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(stack: Stack, key: str, messages: list[dict[str, str]] = HELLO) -> httpx.Response:
    return stack.http.post(
        "/v1/chat/completions", json={"model": "faregate/echo", "messages": messages}, headers=auth(key)
    )


def limited_key(stack: Stack, **limits: int) -> str:
    key = stack.create_key(stack.create_account(plan="unlimited"))
    key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
    assert stack.admin("PATCH", f"/admin/keys/{key_id}", limits).status_code == 200
    return key


def well_inside_a_minute(needed: float = 40) -> None:
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.5)


async def _burst(url: str, key: str, n: int, in_flight: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        gate = asyncio.Semaphore(in_flight)

        async def one() -> httpx.Response:
            async with gate:
                return await client.post(
                    "/v1/chat/completions", headers=auth(key), json={"model": "faregate/echo", "messages": HELLO}
                )

        return await asyncio.gather(*(one() for _ in range(n)))


@pytest.fixture(scope="module")
def restartable(infra: Infra, fake_upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: its auth is killed and started again."""
    s = Stack(
        Path(tmp_path_factory.mktemp("restarts")),
        infra,
        catalog=fake_catalog(fake_upstream.base_url, 9),
        env={"FAKE_UPSTREAM_KEY": "sk-fake-upstream"},
    )
    with s.running():
        yield s


def test_requests_per_minute_and_per_day_stay_exact_across_a_kill_of_auth(restartable: Stack) -> None:
    s = restartable
    well_inside_a_minute()
    per_minute = limited_key(s, rpm=10)
    per_day = limited_key(s, requests_per_day=4)
    busy = limited_key(s, rpm=40)  # busy enough for the edge to be granted admissions (ADR 11)
    fresh = limited_key(s, rpm=10)
    assert [post(s, per_minute).status_code for _ in range(10)] == [200] * 10
    assert [post(s, per_day).status_code for _ in range(4)] == [200] * 4
    assert [r.status_code for r in asyncio.run(_burst(s.url, busy, 60, in_flight=4))].count(200) == 40
    s.kill("auth")  # SIGKILL: nothing is flushed on the way out
    s.start_service("auth")
    # the edge reconnects to the new process; every limit counts what the old one admitted
    first = wait_for(lambda: (r := post(s, per_minute)).status_code != 503 and r, what="auth back")
    assert first.status_code == 429 and first.json()["error"]["code"] == "rpm_exceeded"
    assert post(s, per_day).json()["error"]["code"] == "daily_requests_exceeded"
    assert [post(s, busy).status_code for _ in range(5)] == [429] * 5
    assert post(s, fresh).status_code == 200


def test_tokens_per_day_stay_counted_across_a_kill_of_auth(restartable: Stack) -> None:
    s = restartable
    key = limited_key(s, tokens_per_day=30)
    first = post(s, key, LONG)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 30
    refused = wait_for(lambda: (r := post(s, key, LONG)).status_code == 429 and r, what="the daily token limit")
    assert refused.json()["error"]["code"] == "daily_tokens_exceeded"
    s.kill("auth")
    s.start_service("auth")  # serving only once today's usage is counted again
    again = wait_for(lambda: (r := post(s, key, LONG)).status_code != 503 and r, what="auth back")
    assert again.status_code == 429 and again.json()["error"]["code"] == "daily_tokens_exceeded"


def test_a_429_carries_the_rate_limit_headers(stack: Stack) -> None:
    well_inside_a_minute(20)
    key = limited_key(stack, rpm=3)
    answers = [post(stack, key) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert refused.headers["x-ratelimit-limit"] == "3"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-reset"] == answers[0].headers["x-ratelimit-reset"]
    assert "retry-after" in refused.headers and refused.headers["x-request-id"]

    daily = limited_key(stack, requests_per_day=1)
    assert post(stack, daily).status_code == 200
    refused = post(stack, daily)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "daily_requests_exceeded"
    midnight = int(time.time()) // 86_400 * 86_400 + 86_400
    assert refused.headers["x-ratelimit-limit"] == "1" and refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) in (midnight, midnight + 86_400)  # the test may cross it


def test_every_429_of_a_granted_key_carries_the_headers(stack: Stack) -> None:
    """A busy key's requests are admitted from grants at the edge (ADR 11); its 429s, whether
    the edge's grant was spent or auth refused, say the same window."""
    well_inside_a_minute(20)
    key = limited_key(stack, rpm=40)
    answers = asyncio.run(_burst(stack.url, key, 60, in_flight=4))
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 20
    assert {(a.headers.get("x-ratelimit-limit"), a.headers.get("x-ratelimit-remaining")) for a in refused} == {
        ("40", "0")
    }
    assert len({a.headers["x-ratelimit-reset"] for a in refused}) == 1
