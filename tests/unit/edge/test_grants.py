"""The edge's grants (ADR 11): admissions and funds spent locally, and everything given back."""

from __future__ import annotations

import asyncio
from typing import Any

from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from services.edge.funds import key_digest
from services.edge.grants import AdmissionGrants, FundsGrants, Grants
from services.edge.slots import SlotReleases
from tests.unit.edge.test_slots import RecordingAuth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Releases:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.returned: list[auth_pb2.GrantReturn] = []

    def add(self, release: auth_pb2.ReleaseRequest) -> None:
        self.sent.append(release.slot_id)

    def add_return(self, returned: auth_pb2.GrantReturn) -> None:
        self.returned.append(returned)

    def take_returns(self) -> list[auth_pb2.GrantReturn]:
        taken, self.returned = self.returned, []
        return taken


def granted(admissions: int, slots: list[str], own_slot: str = "s", valid_ms: int = 1000) -> Any:
    reply = auth_pb2.AuthenticateResponse(account_id="acc_1", key_id="key_1", slot_id=own_slot, billable=True)
    reply.grant.CopyFrom(auth_pb2.Grant(admissions=admissions, slot_ids=slots, valid_ms=valid_ms, window=60))
    return reply


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
    assert first[0].slot_id == "" and not first[0].HasField("grant")  # the template carries neither
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
    request = auth_pb2.AuthenticateRequest()
    grants.ask(KEY, request)
    assert [(r.key_id, r.unused, r.window) for r in request.returned] == [("key_1", 4, 60)]
    again = auth_pb2.AuthenticateRequest()
    grants.ask(KEY, again)
    assert not again.returned  # returned once only


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
    request = auth_pb2.AuthenticateRequest()
    grants.take(KEY)
    assert not grants.ask(KEY, request)
    assert request.grant_wanted == 0  # one request a second: no grant
    for _ in range(9):
        grants.take(KEY)
        grants.started(KEY)
    assert grants.ask(KEY, request)
    assert request.grant_wanted == 10 and request.grant_slots_wanted == 10
    assert not grants.ask(KEY, auth_pb2.AuthenticateRequest())  # one ask at a time per key
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
    fresh = auth_pb2.AuthenticateRequest()
    assert not grants.ask(KEY, fresh)
    assert fresh.grant_wanted == 0


class Billing:
    def __init__(self) -> None:
        self.reports: list[billing_pb2.GrantSpends] = []

    async def SettleGrants(self, report: billing_pb2.GrantSpends, timeout: float) -> None:
        self.reports.append(report)


def wallet(micros: int, grant_id: str = "gr_1") -> billing_pb2.Wallet:
    reply = billing_pb2.Wallet(account_id="acc_1")
    reply.grant.CopyFrom(billing_pb2.FundsGrant(id=grant_id, micros=micros, valid_ms=1000))
    return reply


async def test_funds_grants_admit_up_to_their_amount_and_report_every_spend() -> None:
    billing, clock = Billing(), Clock()
    funds = FundsGrants(billing, clock)  # type: ignore[arg-type]
    assert not funds.take("acc_1", "r0", 10)
    funds.install("acc_1", wallet(25))
    assert funds.take("acc_1", "r1", 10) and funds.take("acc_1", "r2", 10)
    assert not funds.take("acc_1", "r3", 10)  # 5 left: billing holds this one itself
    assert funds.release("r2")  # ended without an answer before billing heard of it
    assert funds.take("acc_1", "r4", 10)
    funds.install("acc_1", wallet(100, "gr_2"))  # a new grant ends the old one
    await funds.close()
    assert len(billing.reports) == 1
    report = billing.reports[0]
    assert sorted((s.grant_id, s.request_id, s.amount_micros) for s in report.spent) == [
        ("gr_1", "r1", 10),
        ("gr_1", "r4", 10),
    ]
    assert sorted(report.ended) == ["gr_1", "gr_2"]
    assert not funds.release("r1")  # reported: billing drops the hold it became


async def test_an_expired_funds_grant_is_not_spent() -> None:
    billing, clock = Billing(), Clock()
    funds = FundsGrants(billing, clock)  # type: ignore[arg-type]
    funds.install("acc_1", wallet(100))
    clock.now += 1.0
    assert not funds.take("acc_1", "r1", 10)
    assert funds.wanted("acc_1") == 10  # the rate of spend sizes the next grant
    await funds.close()
    assert [list(r.ended) for r in billing.reports] == [["gr_1"]]


async def test_an_edge_that_stops_gives_back_its_grants_unspent_admissions_and_free_slots() -> None:
    """No later Authenticate will carry them: closing the grants hands them to the slot
    releases, whose close sends them in one ReleaseMany."""
    auth: Any = RecordingAuth()
    releases = SlotReleases(auth, delay=60)  # only the close can send them
    admissions = AdmissionGrants(releases)
    grants = Grants(admissions, FundsGrants(billing=None))  # type: ignore[arg-type]  # no funds grants here
    admissions.install(KEY, granted(5, ["a", "b"]))
    assert admissions.take(KEY) is not None  # one spent, its slot in use
    await grants.close()
    await releases.close()
    assert auth.returned == [("key_1", 4, 60)]
    assert len(auth.batches) == 1 and len(auth.batches[0]) == 1  # the free slot; the one in use ends with its request
