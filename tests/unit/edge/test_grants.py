"""The edge's grants (ADR 11): admissions and funds spent locally, and everything given back."""

from __future__ import annotations

import asyncio

from services.edge.callers import (
    AdmissionAsk,
    AdmissionGrant,
    Admitted,
    Caller,
    Credentials,
    FundsGrant,
    GrantReturn,
    GrantSpend,
    SlotRelease,
)
from services.edge.gateway import key_digest
from services.edge.grants import AdmissionGrants, FundsGrants, Grants
from services.edge.slots import SlotReleases
from tests.unit.edge.fakes import FakeAuth, FakeBilling


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Releases:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.returned: list[GrantReturn] = []

    def add(self, release: SlotRelease) -> None:
        self.sent.append(release.slot_id)

    def add_return(self, returned: GrantReturn) -> None:
        self.returned.append(returned)

    def take_returns(self) -> list[GrantReturn]:
        taken, self.returned = self.returned, []
        return taken


CALLER = Caller("acc_1", "key_1", billable=True)


def granted(admissions: int, slots: list[str], own_slot: str = "s", valid_ms: int = 1000) -> Admitted:
    return Admitted(CALLER, own_slot, AdmissionGrant(admissions, tuple(slots), valid_ms, 60))


def asking() -> AdmissionAsk:
    return AdmissionAsk(Credentials("gw_live_example"), "req_1")


def admissions() -> tuple[AdmissionGrants, Releases, Clock]:
    releases, clock = Releases(), Clock()
    return AdmissionGrants(releases, clock), releases, clock  # type: ignore[arg-type]


KEY = key_digest("gw_live_example")


def test_a_grant_admits_as_many_as_it_holds_with_a_slot_each() -> None:
    grants, releases, _ = admissions()
    assert grants.take(KEY) is None  # nothing granted yet: ask auth
    grants.install(KEY, granted(3, ["a", "b"]))
    first, second = grants.take(KEY), grants.take(KEY)
    assert first is not None and second is not None
    assert {first[1], second[1]} == {"a", "b"} and first[0].key_id == "key_1"
    assert first[0] == CALLER  # the admission the grant repeats
    assert grants.take(KEY) is None  # a third admission is left, but no free slot: ask auth
    assert grants.release_slot("a")  # a granted request ended: its slot serves the next one
    assert grants.take(KEY) == (first[0], "a")
    assert grants.take(KEY) is None  # all three spent
    assert releases.sent == []


async def test_an_ended_grant_gives_back_its_slots_and_unspent_admissions() -> None:
    grants, releases, clock = admissions()
    grants.install(KEY, granted(5, ["a", "b", "c"]))
    taken = grants.take(KEY)
    assert taken is not None
    clock.now += 1.0
    grants.sweep()
    assert sorted(releases.sent) == sorted({"a", "b", "c"} - {taken[1]})  # the free ones at once
    assert not grants.release_slot(taken[1])  # the one in use goes to auth when its request ends
    assert releases.take_returns() == [GrantReturn("key_1", 4, 60)]
    assert releases.take_returns() == []  # returned once


def test_a_changed_key_loses_its_grant_at_once() -> None:
    grants, releases, _ = admissions()
    grants.install(KEY, granted(5, ["a"]))
    grants.forget("key_other")
    assert grants.take(KEY) is not None
    grants.install(KEY, granted(5, ["b"]))  # a new grant ends the old one
    assert "a" not in releases.sent  # "a" is in use: it goes back when its request ends
    grants.forget("key_1")
    assert grants.take(KEY) is None and releases.sent == ["b"]


def test_a_key_without_a_concurrency_limit_needs_no_slots() -> None:
    grants, _, _ = admissions()
    grants.install(KEY, granted(2, [], own_slot=""))
    assert grants.take(KEY) is not None and grants.take(KEY) is not None
    assert grants.take(KEY) is None


async def test_what_is_asked_for_follows_the_recent_rate_and_requests_in_flight() -> None:
    grants, _, clock = admissions()
    request = asking()
    grants.take(KEY)
    assert not grants.ask(KEY, request)
    assert request.grant_wanted == 0  # one request a second: no grant
    for _ in range(9):
        grants.take(KEY)
        grants.started(KEY)
    assert grants.ask(KEY, request)
    assert request.grant_wanted == 10 and request.grant_slots_wanted == 10
    assert not grants.ask(KEY, asking())  # one ask at a time per key
    waiting = asyncio.create_task(grants.pending(KEY))
    await asyncio.sleep(0)
    assert not waiting.done()
    grants.answered(KEY)
    await waiting
    for _ in range(9):
        grants.ended(KEY)
    assert grants.ask(KEY, request)
    assert request.grant_slots_wanted == 1
    grants.answered(KEY)
    clock.now += 2.5  # two quiet periods: the rate is forgotten
    grants.take(KEY)
    fresh = asking()
    assert not grants.ask(KEY, fresh)
    assert fresh.grant_wanted == 0


def grant(micros: int, grant_id: str = "gr_1") -> FundsGrant:
    return FundsGrant(grant_id, micros, 1000)


async def test_funds_grants_admit_up_to_their_amount_and_report_every_spend() -> None:
    billing, clock = FakeBilling(), Clock()
    funds = FundsGrants(billing, clock)
    assert not funds.take("acc_1", "r0", 10)
    funds.install("acc_1", grant(25))
    assert funds.take("acc_1", "r1", 10) and funds.take("acc_1", "r2", 10)
    assert not funds.take("acc_1", "r3", 10)  # 5 left: billing holds this one itself
    assert funds.release("r2")  # ended without an answer before billing heard of it
    assert funds.take("acc_1", "r4", 10)
    funds.install("acc_1", grant(100, "gr_2"))  # a new grant ends the old one
    await funds.close()
    assert sorted(billing.spends, key=lambda s: s.request_id) == [
        GrantSpend("gr_1", "r1", 10),
        GrantSpend("gr_1", "r4", 10),
    ]
    assert sorted(billing.ended) == ["gr_1", "gr_2"]
    assert not funds.release("r1")  # reported: billing drops the hold it became


async def test_an_expired_funds_grant_is_not_spent() -> None:
    billing, clock = FakeBilling(), Clock()
    funds = FundsGrants(billing, clock)
    funds.install("acc_1", grant(100))
    clock.now += 1.0
    assert not funds.take("acc_1", "r1", 10)
    assert funds.wanted("acc_1") == 10  # the rate of spend sizes the next grant
    await funds.close()
    assert billing.ended == ["gr_1"] and billing.spends == []


async def test_an_edge_that_stops_gives_back_its_grants_unspent_admissions_and_free_slots() -> None:
    """No later Authenticate will carry them: closing the grants hands them to the slot
    releases, whose close sends them in one ReleaseMany."""
    auth = FakeAuth()
    releases = SlotReleases(auth, delay=60)  # only the close can send them
    admissions = AdmissionGrants(releases)
    grants = Grants(admissions, FundsGrants(FakeBilling()))
    admissions.install(KEY, granted(5, ["a", "b"]))
    taken = admissions.take(KEY)  # one spent, its slot in use
    assert taken is not None
    await grants.close()
    await releases.close()
    assert auth.returned == [GrantReturn("key_1", 4, 60)]
    assert [r.slot_id for r in auth.released] == [{"a", "b"}.difference(taken[1]).pop()]  # the one in use ends later


def test_one_funds_grant_is_asked_for_per_account_at_a_time() -> None:
    """A burst of reservations (every client retrying after billing restarts) must not each
    ask billing for a share of the account's funds: until the first ask is answered, the rest
    ask for none."""
    funds = FundsGrants(FakeBilling(), Clock())
    for n in range(3):
        funds.take("acc_1", f"r{n}", 10)  # misses that make a recent rate
    first = funds.wanted("acc_1")
    assert first > 0
    assert funds.wanted("acc_1") == 0 and funds.wanted("acc_1") == 0  # asked already, not answered
    assert funds.wanted("acc_2") == 0  # another account: nothing spent there yet
    funds.answered("acc_1")
    assert funds.wanted("acc_1") == first  # answered: the next reservation may ask again
