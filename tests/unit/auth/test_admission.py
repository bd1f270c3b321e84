"""The auth domain against a real (SQLite) database migrated by Alembic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faregate import db
from faregate.errors import AuthenticationFailed, NotFound
from services.auth.admission import Authenticator
from services.auth.keys import KeyHasher
from services.auth.storage import AuthStore


@pytest.fixture
async def auth(tmp_path: Path) -> AsyncIterator[Authenticator]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    yield Authenticator(AuthStore(db.make_sessionmaker(engine)), KeyHasher(b"k" * 32), cache_ttl=0)
    await engine.dispose()


async def test_a_key_admits_its_account_and_is_stored_only_hashed(auth: Authenticator, tmp_path: Path) -> None:
    account = await auth.create_account("acme", "pro")
    row, secret = await auth.create_key(account.id, "ci", "live", None)
    admitted = await auth.admit(secret)
    assert admitted.key.account_id == account.id and admitted.billable
    assert admitted.window is not None and admitted.window.limit == 120
    assert secret.encode() not in (tmp_path / "auth.db").read_bytes()
    assert row.masked == f"{secret[:12]}…{secret[-4:]}"


async def test_revoked_and_expired_keys_are_refused(auth: Authenticator) -> None:
    account = await auth.create_account("acme", "basic")
    row, secret = await auth.create_key(account.id, "", "live", None)
    await auth.revoke_key(account.id, row.id)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await auth.admit(secret)
    _, expired = await auth.create_key(account.id, "", "test", 1000)
    with pytest.raises(AuthenticationFailed, match="expired"):
        await auth.admit(expired)


async def test_unknown_key_and_foreign_revocation(auth: Authenticator) -> None:
    with pytest.raises(AuthenticationFailed):
        await auth.admit("gw_live_" + "Z" * 32)
    a = await auth.create_account("a", "basic")
    b = await auth.create_account("b", "basic")
    row, secret = await auth.create_key(a.id, "", "live", None)
    with pytest.raises(NotFound):
        await auth.revoke_key(b.id, row.id)  # B cannot revoke A's key
    assert (await auth.admit(secret)).key.status == "active"


async def test_test_keys_are_not_billable(auth: Authenticator) -> None:
    account = await auth.create_account("acme", "unlimited")
    _, secret = await auth.create_key(account.id, "", "test", None)
    admitted = await auth.admit(secret)
    assert not admitted.billable and admitted.window is None
