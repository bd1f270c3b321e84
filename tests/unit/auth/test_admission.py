"""The auth domain against a real (SQLite) database migrated by Alembic."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faregate import db
from faregate.errors import AuthenticationFailed, NotFound, RateLimited
from services.auth.admission import Authenticator
from services.auth.keys import KeyHasher
from services.auth.limits import LocalCounters
from services.auth.storage import AuthStore


class Clock:
    """The limits' clock: windows move only when a test moves it (never across a minute by chance)."""

    def __init__(self) -> None:
        self.now = 1_800_000_010.0  # 10 s into a minute
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept.append(seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def auth(tmp_path: Path, clock: Clock) -> AsyncIterator[Authenticator]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    store = AuthStore(db.make_sessionmaker(engine))
    yield Authenticator(
        store, KeyHasher(b"k" * 32), LocalCounters(clock), clock=clock, monotonic=clock, sleep=clock.sleep
    )
    await engine.dispose()


async def test_a_key_admits_its_account_and_is_stored_only_hashed(auth: Authenticator, tmp_path: Path) -> None:
    account = await auth.create_account("acme", "pro")
    row, secret = await auth.create_key(account.id, "ci", "live", None)
    admitted = await auth.admit(secret)
    assert admitted.account_id == account.id and admitted.billable
    assert admitted.window is not None and admitted.window.limit == 120
    assert secret.encode() not in (tmp_path / "auth.db").read_bytes()
    assert row.masked == f"{secret[:12]}…{secret[-4:]}"


async def test_revoked_and_expired_keys_are_refused(auth: Authenticator) -> None:
    account = await auth.create_account("acme", "basic")
    row, secret = await auth.create_key(account.id, "", "live", None)
    await auth.revoke_key(account.id, row.id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.admit(secret)
    _, soon = await auth.create_key(account.id, "", "test", int(time.time() * 1000) + 300)
    time.sleep(0.4)
    with pytest.raises(AuthenticationFailed, match="expired"):
        await auth.admit(soon)


async def test_unknown_key_and_foreign_revocation(auth: Authenticator) -> None:
    with pytest.raises(AuthenticationFailed):
        await auth.admit("gw_live_" + "Z" * 32)
    a = await auth.create_account("a", "basic")
    b = await auth.create_account("b", "basic")
    row, secret = await auth.create_key(a.id, "", "live", None)
    with pytest.raises(NotFound):
        await auth.revoke_key(b.id, row.id)  # B cannot revoke A's key
    assert (await auth.admit(secret)).key_id == row.id


async def test_test_keys_are_not_billable(auth: Authenticator) -> None:
    account = await auth.create_account("acme", "unlimited")
    _, secret = await auth.create_key(account.id, "", "test", None)
    admitted = await auth.admit(secret)
    assert not admitted.billable and admitted.window is None and admitted.slot_id == ""


async def test_guest_requests_are_limited_per_address(auth: Authenticator, clock: Clock) -> None:
    for _ in range(5):
        guest = await auth.admit("", "10.0.0.1")
        assert guest.guest and guest.account_id == "acc_guest" and not guest.billable
        await auth.release(guest.key_id, guest.slot_id)
    with pytest.raises(RateLimited, match="guest") as refused:
        await auth.admit("", "10.0.0.1")
    assert refused.value.retry_after == 50  # the rest of the minute
    assert (await auth.admit("", "10.0.0.2")).guest  # another address has its own budget
    clock.now += 50  # the next minute
    assert (await auth.admit("", "10.0.0.1")).guest


async def test_concurrency_slots_and_daily_tokens(auth: Authenticator, clock: Clock) -> None:
    account = await auth.create_account("acme", "basic")
    row, secret = await auth.create_key(account.id, "", "live", None)
    await auth.update_key(row.id, {"concurrency_limit": 2, "tokens_per_day_limit": 100, "rpm_limit": -1})
    a, b = await auth.admit(secret), await auth.admit(secret)
    assert a.window is None  # rpm override -1: no per-minute limit
    with pytest.raises(RateLimited, match="concurrency"):
        await auth.admit(secret)
    await auth.release(a.key_id, a.slot_id)
    c = await auth.admit(secret)
    await auth.release(b.key_id, b.slot_id)
    await auth.release(c.key_id, c.slot_id)
    await auth.record_tokens(row.id, 100, clock())
    with pytest.raises(RateLimited, match="tokens per UTC day"):
        await auth.admit(secret)


async def test_a_burst_of_bad_keys_is_capped(auth: Authenticator, clock: Clock) -> None:
    for i in range(60):
        with pytest.raises(AuthenticationFailed):
            await auth.admit(f"gw_live_{i:032d}", "10.9.9.9")
    with pytest.raises(RateLimited, match="failed authentications") as capped:
        await auth.admit("gw_live_" + "Q" * 32, "10.9.9.9")
    assert capped.value.retry_after == 50
    clock.now += 50  # the next minute: a bad key is refused as bad again, not capped
    with pytest.raises(AuthenticationFailed):
        await auth.admit("gw_live_" + "Q" * 32, "10.9.9.9")


async def test_a_grant_is_sized_by_the_limits_and_refunded_when_unspent(auth: Authenticator) -> None:
    """ADR 11: a grant never holds more than 1/8 of a window or half the concurrency, is
    counted with the request, and what an edge returns unspent goes back to the window."""
    account = await auth.create_account("acme", "basic")  # 60 rpm, 1,000 a day, 64 in flight
    row, secret = await auth.create_key(account.id, "", "live", None)
    admitted = await auth.admit(secret, grant=100, grant_slots=100)
    grant = admitted.grant
    assert grant is not None and grant.admissions == 60 // 8
    assert len(grant.slot_ids) == 7 and len(set(grant.slot_ids) | {admitted.slot_id}) == 8
    assert 0 < grant.valid_ms <= 1000 and grant.window % 60 == 0
    assert admitted.window is not None and admitted.window.remaining == 60 - 8  # counted already
    await auth.refund(row.id, grant.admissions, grant.window)
    again = await auth.admit(secret)
    assert again.window is not None and again.window.reset_at - 60 == grant.window  # the same minute
    assert again.window.remaining == 60 - 2
    assert again.grant is None  # none asked for
    await auth.update_key(row.id, {"concurrency_limit": 1})
    for slot in (admitted.slot_id, again.slot_id, *grant.slot_ids):
        await auth.release(row.id, slot)
    lone = await auth.admit(secret, grant=10, grant_slots=10)
    assert lone.grant is None  # one request at a time: no slots to spare, no grant
    guest = await auth.admit("", "10.0.0.9", grant=10)
    assert guest.grant is None  # guests never get one


async def test_a_grant_returned_twice_is_refunded_once(auth: Authenticator) -> None:
    """An edge resends a return it could not confirm (ADR 14): auth refunds each grant once."""
    account = await auth.create_account("acme", "basic")  # 60 rpm
    row, secret = await auth.create_key(account.id, "", "live", None)
    admitted = await auth.admit(secret, grant=100, grant_slots=100)
    grant = admitted.grant
    assert grant is not None and grant.id.startswith("gr_")
    for _ in range(3):
        await auth.refund(row.id, grant.admissions, grant.window, grant.id)
    again = await auth.admit(secret)
    assert again.window is not None and again.window.remaining == 60 - 2  # not 60 - 2 + 2 × 7
    other = await auth.admit(secret, grant=100, grant_slots=100)
    assert other.grant is not None and other.grant.id != grant.id
