"""Breaker transitions, the same for the in-process book and the one shared through Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from services.router.breakers import Breakers, LocalBreakers, RedisBreakers

OPEN_S = 0.4  # real seconds: Redis scripts read Redis's own clock


def _book(kind: str, *, threshold: int = 3, probe_seconds: float = 30.0) -> Breakers:
    if kind == "local":
        return LocalBreakers(threshold, OPEN_S, probe_seconds)
    import redis.asyncio as aioredis

    url = os.environ["FAREGATE_TEST_REDIS_URL"]
    return RedisBreakers(
        aioredis.Redis.from_url(url), f"faregate-test-{secrets.token_hex(4)}:", threshold, OPEN_S, probe_seconds
    )


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Breakers]]:
    if request.param == "redis" and not os.environ.get("FAREGATE_TEST_REDIS_URL"):
        pytest.skip("Redis breakers run in the infrastructure suite (FAREGATE_TEST_REDIS_URL)")
    made: list[Breakers] = []

    def factory(**kw: float) -> Breakers:
        made.append(_book(request.param, **kw))  # type: ignore[arg-type]
        return made[-1]

    yield factory
    for book in made:
        await book.close()


async def test_closed_open_half_open_closed(make: Callable[..., Breakers]) -> None:
    b = make()
    for _ in range(2):
        assert (await b.allow("p")).allowed
        await b.failure("p")
    permit = await b.allow("p")
    assert permit.allowed and not permit.clean
    await b.success("p", permit)  # a success resets the count
    assert (await b.allow("p")).clean
    for _ in range(3):
        await b.failure("p")
    state = (await b.snapshot(["p"]))["p"]
    assert state.state == "open" and state.consecutive_failures == 3 and state.last_failure > 0
    refused = await b.allow("p")
    assert not refused.allowed and 0 < refused.wait <= OPEN_S
    await asyncio.sleep(OPEN_S + 0.05)
    assert (await b.snapshot(["p"]))["p"].state == "half_open"
    assert (await b.allow("p")).allowed  # the one probe …
    assert not (await b.allow("p")).allowed  # … the others wait for it
    await b.failure("p")  # the probe failed: open again for a full period
    assert (await b.snapshot(["p"]))["p"].state == "open"
    assert not (await b.allow("p")).allowed
    await asyncio.sleep(OPEN_S + 0.05)
    probe = await b.allow("p")
    assert probe.allowed
    await b.success("p", probe)
    assert (await b.snapshot(["p"]))["p"].state == "closed"
    assert (await b.allow("p")).allowed and (await b.allow("p")).allowed


async def test_abandoned_probe_frees_the_slot_and_reset_clears(make: Callable[..., Breakers]) -> None:
    b = make(threshold=1, probe_seconds=0.2)
    await b.failure("a")
    await b.failure("b")
    await asyncio.sleep(OPEN_S + 0.05)
    assert (await b.allow("a")).allowed
    await b.release_probe("a")  # the client left: someone else may probe
    assert (await b.allow("a")).allowed
    assert not (await b.allow("a")).allowed
    await asyncio.sleep(0.25)  # a probe that never reports back is a lease that lapses
    assert (await b.allow("a")).allowed
    await b.reset(["a", "b"])
    states = await b.snapshot(["a", "b"])
    assert all(s.state == "closed" and s.consecutive_failures == 0 for s in states.values())


async def test_retry_after_skips_the_provider_until_then(make: Callable[..., Breakers]) -> None:
    b = make()
    await b.failure("p", retry_after=0.3)  # one failure: still closed, but asked us to wait
    state = (await b.snapshot(["p"]))["p"]
    assert state.state == "closed" and state.cooling_until > 0
    refused = await b.allow("p")
    assert not refused.allowed and 0 < refused.wait <= 0.3
    await asyncio.sleep(0.35)
    assert (await b.allow("p")).allowed


async def test_replicas_sharing_redis_see_one_state() -> None:
    if not os.environ.get("FAREGATE_TEST_REDIS_URL"):
        pytest.skip("Redis breakers run in the infrastructure suite (FAREGATE_TEST_REDIS_URL)")
    import redis.asyncio as aioredis

    url, prefix = os.environ["FAREGATE_TEST_REDIS_URL"], f"faregate-test-{secrets.token_hex(4)}:"
    one = RedisBreakers(aioredis.Redis.from_url(url), prefix, 2, OPEN_S)
    two = RedisBreakers(aioredis.Redis.from_url(url), prefix, 2, OPEN_S)
    try:
        await one.failure("p")
        await two.failure("p")  # the two replicas' failures add up
        assert not (await one.allow("p")).allowed and not (await two.allow("p")).allowed
        await asyncio.sleep(OPEN_S + 0.05)
        probes = await asyncio.gather(one.allow("p"), two.allow("p"))
        assert sorted(p.allowed for p in probes) == [False, True]  # exactly one probe between them
    finally:
        await one.reset(["p"])
        await one.close()
        await two.close()


async def test_a_failure_that_is_not_the_providers_only_cools(make: Callable[..., Breakers]) -> None:
    b = make()
    for _ in range(5):
        await b.failure("p", None, counts=False)
    [state] = (await b.snapshot(["p"])).values()
    assert state.state == "closed" and state.consecutive_failures == 0
    assert (await b.allow("p")).allowed
    await b.failure("p", 30, counts=False)  # its Retry-After still holds
    assert not (await b.allow("p")).allowed
