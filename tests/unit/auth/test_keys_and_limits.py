from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from faregate.errors import AuthenticationFailed, InvalidRequest
from services.auth import keys
from services.auth.limits import Counters, Limits, LocalCounters, Plans, RedisCounters


def test_generated_keys_have_the_documented_format() -> None:
    live, test = keys.generate("live"), keys.generate("test")
    assert live.startswith("gw_live_") and test.startswith("gw_test_")
    assert keys.mode_of(live) == "live" and keys.mode_of(test) == "test"
    assert len({keys.generate("live") for _ in range(100)}) == 100


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "gw_live_",
        "gw_prod_" + "a" * 32,
        "sk-" + "a" * 32,
        "gw_live_" + "a" * 31,
        "gw_live_" + "a" * 33,
        "gw_live_" + "!" * 32,
        "x" * 10_000,
    ],
)
def test_malformed_keys_are_refused_without_lookup(bad: str) -> None:
    with pytest.raises(AuthenticationFailed):
        keys.mode_of(bad)


def test_hashes_are_keyed() -> None:
    key = keys.generate("live")
    a, b = keys.KeyHasher(b"a" * 32), keys.KeyHasher(b"b" * 32)
    assert a.digest(key) != b.digest(key)
    assert keys.KeyHasher.matches(a.digest(key), a.digest(key))
    assert key.encode() not in a.digest(key)
    with pytest.raises(ValueError):
        keys.KeyHasher(b"short")


@pytest.fixture(params=["local", "redis"])
async def counters(request: pytest.FixtureRequest):
    if request.param == "local":
        yield LocalCounters()
        return
    url = os.environ.get("FAREGATE_TEST_REDIS_URL")
    if not url:
        pytest.skip("Redis counters run in the infrastructure suite (FAREGATE_TEST_REDIS_URL)")
    c = RedisCounters.from_url(url, f"faregate-test-{secrets.token_hex(4)}:")
    yield c
    await c.close()


async def test_take_never_exceeds_the_limit_under_concurrency(counters: Counters) -> None:
    results = await asyncio.gather(*(counters.take("b", 10, 60) for _ in range(50)))
    assert sorted(r for r in results if r > 0) == list(range(1, 11))
    assert results.count(-1) == 40
    assert await counters.get("b") == 10


async def test_slots_are_leases(counters: Counters) -> None:
    from services.auth.limits import AdmitCheck

    async def take(slot: str, now: float) -> bool:
        """A slot of at most 2, leased for 30 s (no other limit)."""
        check = AdmitCheck("l", None, None, None, 2, "conc:{l}", slot, 30, now)
        return (await counters.admit(check)).refused is None

    assert await take("s1", 1000)
    assert await take("s2", 1000)
    assert not await take("s3", 1001)
    await counters.release("conc:{l}", "s1")
    assert await take("s3", 1002)
    # s2 was never renewed: after its lease it no longer counts; s3 is renewed and still does.
    await counters.renew("conc:{l}", "s3", 30, now=1025)
    assert await take("s4", 1040)
    assert not await take("s5", 1041)


async def test_add_accumulates(counters: Counters) -> None:
    await counters.add("t", 5, 60)
    await counters.add("t", 7, 60)
    assert await counters.get("t") == 12


def test_plans_defaults_and_overrides() -> None:
    plans = Plans.from_json(None)
    assert plans.named("basic") == Limits(60, 1_000, 500_000, 64, tokens_per_month=10_000_000)
    assert plans.named("PRO").rpm == 120 and plans.named("enterprise").tokens_per_day == 6_000_000
    assert plans.named("unlimited") == Limits(None, None, None, None)
    with pytest.raises(InvalidRequest):
        plans.named("platinum")
    custom = Plans.from_json('{"basic": {"rpm": 100}, "team": {"rpm": 10, "concurrency": 2}}')
    assert custom.named("basic").rpm == 100 and custom.named("basic").requests_per_day == 1_000
    assert custom.named("team") == Limits(10, None, None, 2)
    with pytest.raises(ValueError):
        Plans.from_json('{"basic": {"rpn": 1}}')
    assert plans.named("basic").overridden(rpm=-1, concurrency=5, tokens_per_day=None) == Limits(
        None, 1_000, 500_000, 5, tokens_per_month=10_000_000
    )


async def test_admit_is_all_or_nothing(counters: Counters) -> None:
    from services.auth.limits import AdmitCheck

    def check(slot: str, now: float = 1_000_020.0) -> AdmitCheck:
        return AdmitCheck(
            "k",
            rpm=3,
            requests_per_day=10,
            tokens_per_day=None,
            concurrency=2,
            concurrency_bucket="conc:{k}",
            slot=slot,
            lease=30,
            now=now,
        )

    assert await counters.admit(check("a")) == (None, 1, 0, 0)
    assert await counters.admit(check("b")) == (None, 2, 0, 0)
    assert await counters.admit(check("c")) == ("concurrency", 2, 0, 0)  # refused: nothing counted
    await counters.release("conc:{k}", "a")
    assert await counters.admit(check("c")) == (None, 3, 0, 0)
    await counters.release("conc:{k}", "b")
    assert await counters.admit(check("d")) == ("rpm", 3, 0, 0)
    assert (await counters.admit(check("d", now=1_000_080.0))).refused is None  # next minute


async def test_a_grant_takes_what_room_is_left(counters: Counters) -> None:
    """ADR 11: a grant counts up to what it asks for in the same step as the request, never
    past a limit, and its unspent admissions can be given back."""
    from services.auth.limits import AdmitCheck

    def check(slot: str, grant: int, slots: tuple[str, ...]) -> AdmitCheck:
        return AdmitCheck("g", 10, 8, None, 4, "conc:{g}", slot, 30, 2_000_010.0, grant, slots)

    rpm_bucket, rpd_bucket = check("x", 0, ()).buckets()[:2]
    # 5 more admissions and 2 more slots asked: all fit (1 + 5 <= 8 today, 1 + 2 <= 4 slots)
    assert await counters.admit(check("a", 5, ("a.0", "a.1"))) == (None, 6, 5, 2)
    await counters.release("conc:{g}", "a.0")
    await counters.release("conc:{g}", "a.1")
    # 5 more asked, but the day has room for 2: the request's own and 1 more
    assert await counters.admit(check("b", 5, ("b.0", "b.1"))) == (None, 8, 1, 2)
    assert await counters.admit(check("c", 0, ())) == ("requests_per_day", 8, 0, 0)
    await counters.refund(rpd_bucket, 3)
    await counters.refund(rpm_bucket, 3)
    assert await counters.get(rpd_bucket) == 5 and await counters.get(rpm_bucket) == 5
    # room in the day, but only the request's own slot is free: a grant could not be spent
    await counters.release("conc:{g}", "b")
    assert await counters.admit(check("d", 5, ("d.0",))) == (None, 6, 0, 0)
    await counters.refund("never-counted", 3)
    assert await counters.get("never-counted") == 0
