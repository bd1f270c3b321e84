"""Grants: admissions and funds an edge spends locally, renewed as they run out (ADR 11).

Most requests of a busy key need neither auth nor billing to decide anything new: the key
was valid a moment ago, its limits had room, its account had funds. So when an edge asks
auth to admit a request it may also ask for a *grant*: admissions counted in the key's
limits in the same step (and concurrency slots for them), to spend here for up to a second.
Likewise billing's ``Reserve`` may return a *funds grant*: a hold on the account the edge
admits requests against until it is spent or a second has passed. A request that finds
both (or a grant and no price) goes straight to the router.

The bounds, written down in ADR 11:

- An admission grant is counted before it is spent: a key's window counts up to one grant
  ahead of its requests, and the unspent rest is given back to the window when the grant
  ends (``returned``: carried by this edge's next Authenticate, or with the slot releases
  when none comes in time, and at the latest when the edge stops). auth sizes grants at most
  1/8 of a window's budget and half the key's concurrency, and only as large as this
  edge's recent rate for the key.
- A revoked or changed key stops being admitted here as soon as auth's change message
  arrives on NATS (``faregate.keys.changed``), and within a grant's life (1 s) without it.
- Funds: each request spent of a funds grant is reported to billing within
  ``REPORT_S`` and becomes a hold of its own there; until then the grant's hold covers it.
  So the account's held sum never dips while a request is in flight, and the overdraft
  bound stays one request's worst case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from services.edge.callers import AdmissionAsk, Admitted, Caller, FundsGrant, GrantReturn, GrantSpend, SlotRelease
from services.edge.slots import Flusher, SlotReleases

SWEEP_S = 0.25  # ended grants give back their free slots at least this often
REPORT_S = 0.1  # spends of funds grants reach billing within about this
MAX_WANTED = 1_000


class _Rate:
    """How much a subject used in the current and the last period of ``period`` seconds."""

    def __init__(self, period: float, clock: Callable[[], float]) -> None:
        self._period, self._clock = period, clock
        self._started = clock()
        self._now: dict[object, int] = {}
        self._last: dict[object, int] = {}

    def add(self, subject: object, amount: int = 1) -> None:
        now = self._clock()
        if now - self._started >= self._period:
            self._last = self._now if now - self._started < 2 * self._period else {}
            self._now, self._started = {}, now
        self._now[subject] = self._now.get(subject, 0) + amount

    def recent(self, subject: object) -> int:
        return max(self._now.get(subject, 0), self._last.get(subject, 0))


class _Grant:
    until: float  # monotonic


G = TypeVar("G", bound=_Grant)


class _Book(Generic[G]):
    """Live grants by subject (a key's digest, an account), each until its ``until``; the
    subject's recent use sizes its next one. ``_ended`` gives back what an ended one held."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._grants: dict[Any, G] = {}
        self._rate = _Rate(1.0, clock)

    def _live(self, subject: Any) -> G | None:
        grant = self._grants.get(subject)
        if grant is not None and self._clock() >= grant.until:
            self._end(subject, grant)
            return None
        return grant

    def _install(self, subject: Any, grant: G) -> None:
        old = self._grants.pop(subject, None)
        if old is not None:
            self._ended(old)
        self._grants[subject] = grant

    def sweep(self) -> None:
        now = self._clock()
        for subject, grant in list(self._grants.items()):
            if now >= grant.until:
                self._end(subject, grant)

    def end_all(self) -> None:
        for subject, grant in list(self._grants.items()):
            self._end(subject, grant)

    def _end(self, subject: Any, grant: G) -> None:
        if self._grants.get(subject) is grant:
            del self._grants[subject]
        self._ended(grant)

    def _ended(self, grant: G) -> None:
        raise NotImplementedError


@dataclass
class _KeyGrant(_Grant):
    caller: Caller  # the admission the grant repeats
    left: int
    free: list[str]  # slots held for the grant and not in use
    needs_slot: bool  # the key has a concurrency limit
    until: float
    window: int
    id: str = ""
    ended: bool = False


class AdmissionGrants(_Book[_KeyGrant]):
    """Admission grants of auth, per presented key (by digest: never the key itself)."""

    def __init__(self, releases: SlotReleases, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._releases = releases
        self._by_slot: dict[str, _KeyGrant] = {}
        self._in_flight: dict[bytes, int] = {}
        self._asking: dict[bytes, asyncio.Future[None]] = {}  # one grant asked for per key at a time

    def take(self, key: bytes) -> tuple[Caller, str] | None:
        """A granted admission for the key and its slot, or None (ask auth)."""
        self._rate.add(key)
        grant = self._live(key)
        if grant is None:
            return None
        if grant.left <= 0:
            self._end(key, grant)
            return None
        if grant.needs_slot and not grant.free:
            return None  # more in flight here than the grant has slots for: ask auth for this one
        grant.left -= 1
        self.started(key)
        return grant.caller, grant.free.pop() if grant.needs_slot else ""

    def started(self, key: bytes) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def ended(self, key: bytes) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def ask(self, key: bytes, ask: AdmissionAsk) -> bool:
        """Fill in the grant to ask auth for: as large as this edge's recent rate for the key,
        with slots for as many requests as it has in flight. True when a grant is asked for:
        the caller calls ``answered`` once auth has replied."""
        wanted = min(self._rate.recent(key), MAX_WANTED)
        if wanted < 2 or key in self._asking:
            return False
        ask.grant_wanted = wanted
        ask.grant_slots_wanted = min(self._in_flight.get(key, 0) + 1, wanted)
        self._asking[key] = asyncio.get_running_loop().create_future()
        return True

    def answered(self, key: bytes) -> None:
        asking = self._asking.pop(key, None)
        if asking is not None and not asking.done():
            asking.set_result(None)

    async def pending(self, key: bytes) -> None:
        """Wait for the key's grant asked for and not answered yet, if there is one."""
        asking = self._asking.get(key)
        if asking is not None:
            await asyncio.shield(asking)

    def install(self, key: bytes, admitted: Admitted) -> None:
        """Keep the grant auth sent with this admission (ending the key's earlier one)."""
        g = admitted.grant
        if g is None:
            return
        grant = _KeyGrant(
            admitted.caller,
            g.admissions,
            list(g.slot_ids),
            bool(admitted.slot_id),
            self._clock() + g.valid_ms / 1000,
            g.window,
            g.id,
        )
        self._install(key, grant)
        for slot in g.slot_ids:
            self._by_slot[slot] = grant

    def release_slot(self, slot_id: str) -> bool:
        """A granted request ended: its slot goes back to its grant while the grant lasts
        (True), and otherwise to auth with the other releases (False)."""
        grant = self._by_slot.get(slot_id)
        if grant is None:
            return False
        if grant.ended:
            del self._by_slot[slot_id]
            return False
        grant.free.append(slot_id)
        return True

    def forget(self, key_id: str) -> None:
        """The key changed (revoked, new limits or routing): end its grants at once."""
        for key, grant in list(self._grants.items()):
            if grant.caller.key_id == key_id:
                self._end(key, grant)

    def _ended(self, grant: _KeyGrant) -> None:
        if grant.ended:
            return
        grant.ended = True
        key_id = grant.caller.key_id
        if grant.left > 0:
            self._releases.add_return(GrantReturn(key_id, grant.left, grant.window, grant.id))
            grant.left = 0
        for slot in grant.free:
            del self._by_slot[slot]
            self._releases.add(SlotRelease(key_id, slot))
        grant.free = []


@dataclass
class _FundsGrant(_Grant):
    id: str
    left: int
    until: float


class GrantSettlement(Protocol):
    async def settle_grants(self, spent: Sequence[GrantSpend], ended: Sequence[str]) -> None: ...


Report = tuple[list[GrantSpend], list[str]]


class FundsGrants(_Book[_FundsGrant]):
    """Funds grants of billing, per account; spends are reported in batches off the path."""

    def __init__(self, billing: GrantSettlement, clock: Callable[[], float] = time.monotonic, **flusher: Any) -> None:
        super().__init__(clock)
        self._billing = billing
        self._pending: dict[str, tuple[_FundsGrant, int]] = {}  # request id → (its grant, amount), unreported
        self._ended_ids: list[str] = []
        self._asking: set[str] = set()  # accounts with a grant asked for and not answered yet
        self.flusher: Flusher[Report] = Flusher("funds-grant spends", REPORT_S, self._report, self._send, **flusher)

    def take(self, account_id: str, request_id: str, amount: int) -> bool:
        """Admit the request against the account's grant (True), or not (ask billing)."""
        self._rate.add(account_id, amount)
        grant = self._live(account_id)
        if grant is None or grant.left < amount:
            return False
        grant.left -= amount
        self._pending[request_id] = (grant, amount)
        self.flusher.schedule()
        return True

    def wanted(self, account_id: str) -> int:
        """The grant to ask billing for with a reservation: this edge's recent rate for the
        account, or 0 while another reservation already asks for one. Concurrent asks would
        each be granted a share of what is left (and each but the last ended only with the
        next report), so a burst — every client retrying at once after billing restarts —
        would hold the account's whole balance and be refused with 402. The caller calls
        ``answered`` once billing replied when this returned more than 0."""
        if account_id in self._asking:
            return 0
        wanted = self._rate.recent(account_id)
        if wanted > 0:
            self._asking.add(account_id)
        return wanted

    def answered(self, account_id: str) -> None:
        self._asking.discard(account_id)

    def install(self, account_id: str, grant: FundsGrant | None) -> None:
        if grant is not None:
            self._install(account_id, _FundsGrant(grant.id, grant.micros, self._clock() + grant.valid_ms / 1000))

    def release(self, request_id: str) -> bool:
        """A granted request ended without an answer: if billing has not heard of it yet,
        its amount simply goes back to the grant (True); otherwise billing must drop the
        hold it became (False)."""
        spent = self._pending.pop(request_id, None)
        if spent is None:
            return False
        grant, amount = spent
        grant.left += amount
        return True

    def _ended(self, grant: _FundsGrant) -> None:
        self._ended_ids.append(grant.id)
        grant.left = 0
        self.flusher.schedule()

    def _report(self) -> Report | None:
        """What to tell billing since the last report (None: nothing)."""
        if not self._pending and not self._ended_ids:
            return None
        spent = [GrantSpend(grant.id, request_id, amount) for request_id, (grant, amount) in self._pending.items()]
        report = (spent, self._ended_ids)
        self._pending, self._ended_ids = {}, []
        return report

    async def _send(self, report: Report) -> None:
        # Retried until billing has it (the flusher): until then the grant's hold, which
        # billing keeps ~30 s past the grant, is all that covers the spends.
        await self._billing.settle_grants(*report)

    async def close(self) -> bool:
        self.end_all()
        return await self.flusher.close()


class Grants:
    """Both kinds, swept together: ``sweep`` is a supervised component."""

    def __init__(self, admissions: AdmissionGrants, funds: FundsGrants) -> None:
        self.admissions = admissions
        self.funds = funds

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            self.admissions.sweep()
            self.funds.sweep()

    async def close(self) -> bool:
        """End every grant: their free slots and unspent admissions go to the releases (sent
        at their close, after this), the spends and ends of funds grants to billing."""
        self.admissions.end_all()
        return await self.funds.close()
