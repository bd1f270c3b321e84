"""Revocation bounded without the change message: two replicas on one database, the
announcement lost, clocks injected (ADR 16)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faregate import db
from faregate.errors import AuthenticationFailed
from services.auth.admission import Authenticator
from services.auth.keys import KeyHasher
from services.auth.limits import LocalCounters
from services.auth.storage import AuthStore
from tests.unit.auth.test_admission import Clock


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Authenticator, Authenticator, Clock]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    clock = Clock()

    def replica() -> Authenticator:
        store = AuthStore(db.make_sessionmaker(engine))
        return Authenticator(
            store, KeyHasher(b"k" * 32), LocalCounters(clock), clock=clock, monotonic=clock, sleep=clock.sleep
        )

    yield replica(), replica(), clock  # no announce: the change message is lost
    await engine.dispose()


async def test_a_revoke_answers_only_once_the_other_replica_and_its_grants_refuse(
    replicas: tuple[Authenticator, Authenticator, Clock],
) -> None:
    a, b, clock = replicas
    account = await a.create_account("acme", "unlimited")
    row, secret = await a.create_key(account.id, "", "live", None)
    clock.now += 0.5  # b's copy is read now and is fresh for its TTL
    granted = (await b.admit(secret, grant=100)).grant
    assert granted is not None and granted.valid_ms > 0
    grant_ends = clock.now + granted.valid_ms / 1000
    await a.revoke_key(account.id, row.id)
    answered = clock.now
    # the edge's grant ended before the answer, with room for its reply's transit
    assert grant_ends + 0.1 <= answered
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await b.admit(secret)
    assert a.revocation_bounded and clock.slept == [pytest.approx(1.0)]


async def test_a_long_key_cache_answers_at_once_and_says_it_is_not_bounded(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    clock = Clock()
    try:
        auth = Authenticator(
            AuthStore(db.make_sessionmaker(engine)), KeyHasher(b"k" * 32), LocalCounters(clock), cache_ttl=3600,
            clock=clock, monotonic=clock, sleep=clock.sleep,
        )  # fmt: skip
        account = await auth.create_account("acme", "unlimited")
        row, _ = await auth.create_key(account.id, "", "live", None)
        await auth.revoke_key(account.id, row.id)
        assert not auth.revocation_bounded and clock.slept == []
    finally:
        await engine.dispose()


async def test_a_grant_never_outlives_the_keys_expiry(replicas: tuple[Authenticator, Authenticator, Clock]) -> None:
    a, _, clock = replicas
    account = await a.create_account("acme", "unlimited")
    expires_ms = int((clock.now + 0.3) * 1000)
    # create_key checks expiry against the wall clock: this one is far in the future there
    row, secret = await a.create_key(account.id, "", "live", 4_000_000_000_000)
    await a._store.update_key(row.id, {"expires_at_ms": expires_ms})
    granted = (await a.admit(secret, grant=100)).grant
    assert granted is not None and clock.now + granted.valid_ms / 1000 <= expires_ms / 1000
