from __future__ import annotations

import pytest

from faregate.errors import AuthenticationFailed, InvalidRequest, RateLimited
from services.auth import keys
from services.auth.limits import RpmLimiter, plan_named


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


def test_rpm_limiter_counts_per_key_and_resets_each_minute() -> None:
    now = [1_000_020.0]
    limiter = RpmLimiter(clock=lambda: now[0])
    windows = [limiter.hit("k1", 3) for _ in range(3)]
    assert [w.remaining for w in windows if w] == [2, 1, 0]
    assert windows[0] is not None and windows[0].reset_at == 1_000_080
    with pytest.raises(RateLimited) as info:
        limiter.hit("k1", 3)
    assert info.value.retry_after == 60 and "3 requests per minute" in info.value.message
    assert limiter.hit("k2", 3) is not None  # another key, its own window
    now[0] += 60
    assert limiter.hit("k1", 3) is not None
    assert limiter.hit("k1", None) is None  # unlimited


def test_plans() -> None:
    assert plan_named("basic").rpm == 60 and plan_named("BASIC").concurrency == 64
    assert plan_named("unlimited").rpm is None
    with pytest.raises(InvalidRequest):
        plan_named("platinum")
