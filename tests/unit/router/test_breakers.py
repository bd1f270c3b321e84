from __future__ import annotations

from services.router.breakers import Breakers


def test_breaker_transitions() -> None:
    now = [0.0]
    b = Breakers(threshold=3, open_seconds=600, clock=lambda: now[0], wall=lambda: 1_700_000_000.0)
    for _ in range(2):
        assert b.allow("p")
        b.failure("p")
    assert b.allow("p")
    b.success("p")  # a success resets the count
    for _ in range(3):
        b.failure("p")
    state = b.snapshot(["p"])["p"]
    assert state.state == "open" and state.consecutive_failures == 3 and state.last_failure == 1_700_000_000.0
    assert not b.allow("p")
    assert b.retry_after("p") == 600
    now[0] = 599.0
    assert not b.allow("p")
    now[0] = 600.0
    assert b.allow("p")  # the one probe
    assert not b.allow("p")  # others wait for it
    b.failure("p")  # probe failed: open again for a full period
    assert not b.allow("p")
    now[0] = 1200.0
    assert b.allow("p")
    b.success("p")
    assert b.snapshot(["p"])["p"].state == "closed" and b.allow("p") and b.allow("p")


def test_abandoned_probe_and_reset() -> None:
    now = [0.0]
    b = Breakers(threshold=1, open_seconds=10, clock=lambda: now[0])
    b.failure("a")
    b.failure("b")
    now[0] = 10.0
    assert b.allow("a")
    b.release_probe("a")  # the client left: someone else may probe
    assert b.allow("a")
    assert sorted(b.reset()) == ["a", "b"]
    assert b.allow("b") and b.snapshot(["b"])["b"].consecutive_failures == 0
