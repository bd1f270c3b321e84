"""The Supervisor: restarts with backoff, health, serving flips, stop order (no real sleeps)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from faregate.runtime import State, Supervisor, stop_in_order
from tests.waiting import Sleeps
from tests.waiting import settled as settle


async def test_a_failing_component_is_restarted_with_exponential_backoff_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps = Sleeps()
    flips: list[bool] = []
    runs = 0
    healed = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 5:
            raise ConnectionError("redis is down")
        healed.set()
        await asyncio.Event().wait()

    sup = Supervisor("svc", on_change=flips.append, sleep=sleeps, backoff=(0.1, 0.5))
    sup.add("follower", flaky)
    with caplog.at_level(logging.DEBUG, logger="faregate.runtime"):
        sup.start()
        await asyncio.wait_for(healed.wait(), 5)
        await asyncio.sleep(0)
    assert sleeps.delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    [h] = sup.health()
    assert (h.name, h.state, h.required, h.restarts, h.last_error) == (
        "follower",
        State.RUNNING,
        True,
        5,
        "ConnectionError: redis is down",
    )
    assert sup.serving and flips[-1] is True and False in flips
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "follower failed" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info  # one traceback for the streak, not five
    await sup.stop()
    assert sup.health()[0].state is State.STOPPED and flips[-1] is False


async def test_backoff_starts_again_after_a_healthy_run() -> None:
    now = [0.0]
    sleeps = Sleeps()
    runs = 0

    async def fails_after_a_while() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            now[0] += 10.0  # the third run lasts longer than the backoff's maximum
        if runs < 5:
            raise OSError("lost")
        await asyncio.Event().wait()

    sup = Supervisor("svc", sleep=sleeps, backoff=(0.1, 1.0), clock=lambda: now[0])
    sup.add("c", fails_after_a_while)
    sup.start()
    await settle(lambda: runs == 5)
    assert sleeps.delays == [0.1, 0.2, 0.1, 0.2]
    await sup.stop()


async def test_a_component_that_returns_is_stopped_not_restarted() -> None:
    sleeps = Sleeps()
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    sup = Supervisor("svc", sleep=sleeps)
    sup.add("once", once, required=False)
    sup.add("forever", lambda: asyncio.Event().wait())
    sup.start()
    await settle(lambda: sup.health()[0].state is State.STOPPED)
    for _ in range(20):
        await asyncio.sleep(0)
    assert runs == 1 and sleeps.delays == []
    assert sup.serving  # an optional component stopping does not stop the service
    await sup.stop()


async def test_serving_needs_every_required_component_running_and_ready() -> None:
    flips: list[bool] = []
    connected = [True]
    sup = Supervisor("svc", on_change=flips.append, sleep=Sleeps())
    sup.add("consumer", lambda: asyncio.Event().wait(), ready=lambda: connected[0])
    sup.add("optional", lambda: asyncio.Event().wait(), required=False, ready=lambda: False)
    assert not sup.serving  # not started
    sup.start()
    await asyncio.sleep(0)
    assert sup.serving and flips == [False, True]
    connected[0] = False
    sup.refresh()  # what the supervisor's readiness poll does
    assert not sup.serving and flips[-1] is False
    states = {h.name: h.state for h in sup.health()}
    assert states == {"consumer": State.BACKOFF, "optional": State.BACKOFF}  # not ready is reported down
    connected[0] = True
    sup.refresh()
    assert sup.serving and flips[-1] is True
    await sup.stop()


async def test_a_readiness_probe_that_raises_means_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("probe")

    sup = Supervisor("svc", sleep=Sleeps())
    sup.add("c", lambda: asyncio.Event().wait(), ready=broken)
    sup.start()
    await asyncio.sleep(0)
    assert not sup.serving
    await sup.stop()


async def test_stop_cancels_components_in_reverse_order_of_add() -> None:
    stopped: list[str] = []

    def component(name: str) -> object:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                stopped.append(name)

        return run

    sup = Supervisor("svc", sleep=Sleeps())
    for name in ("first", "second", "third"):
        sup.add(name, component(name))  # type: ignore[arg-type]
    sup.start()
    await asyncio.sleep(0)
    await sup.stop()
    assert stopped == ["third", "second", "first"]
    assert {h.state for h in sup.health()} == {State.STOPPED}


async def test_a_component_added_after_start_starts_at_once_and_names_are_unique() -> None:
    sup = Supervisor("svc", sleep=Sleeps())
    sup.start()
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await asyncio.Event().wait()

    sup.add("late", run)
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(ValueError, match="added twice"):
        sup.add("late", run)
    await sup.stop()


async def test_the_stop_order_runs_every_step_even_when_one_fails() -> None:
    order: list[str] = []

    def step(name: str, fail: bool = False) -> object:
        async def run() -> None:
            order.append(name)
            if fail:
                raise ConnectionError(name)

        return run

    class Server:
        async def stop(self, grace: float | None) -> None:
            order.append(f"server.stop({grace})")

    sup = Supervisor("svc", sleep=Sleeps())

    async def component() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            order.append("component stopped")

    sup.add("c", component)
    sup.start()
    await asyncio.sleep(0)
    await stop_in_order(
        sup,
        Server(),
        stop_admitting=[step("calls.close")],  # type: ignore[list-item]
        grace=3.0,
        flush=[step("publisher.flush", fail=True)],  # type: ignore[list-item]
        close=[step("nc.drain"), step("engine.dispose")],  # type: ignore[list-item]
    )
    assert order == [
        "calls.close",
        "server.stop(3.0)",
        "publisher.flush",
        "component stopped",
        "nc.drain",
        "engine.dispose",
    ]


async def test_not_serving_is_a_warning_only_when_it_follows_serving_and_the_process_is_not_stopping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starting (nothing served yet) and stopping (going down on purpose) are not outages."""
    healthy = True
    sup = Supervisor("svc", sleep=Sleeps())

    async def steady() -> None:
        await asyncio.Event().wait()

    sup.add("consumer", steady, ready=lambda: healthy)
    with caplog.at_level(logging.INFO, logger="faregate.runtime"):
        sup.start()
        await settle(lambda: sup.serving)
        healthy = False
        sup.refresh()
        healthy = True
        sup.refresh()
        await sup.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["svc: not serving; down: consumer"]  # the outage only
