"""Auth's tables (accounts, api_keys, key_events) and the queries on them."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate.values import KeyMode, KeyStatus, RoutingMode

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("plan", String(40), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("mode", String(8), nullable=False),
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("status", String(12), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("last_used_at_ms", BigInteger),
    Column("expires_at_ms", BigInteger),
    Column("revoked_at_ms", BigInteger),
    Column("rpm_limit", BigInteger),
    Column("requests_per_day_limit", BigInteger),
    Column("tokens_per_day_limit", BigInteger),
    Column("concurrency_limit", BigInteger),
    Column("routing_mode", String(12)),  # auto | preferred | failover; NULL = auto
    Column("preferred_provider", String(100)),
)

LIMIT_COLUMNS = ("rpm_limit", "requests_per_day_limit", "tokens_per_day_limit", "concurrency_limit")

key_events = Table(
    "key_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("key_id", String(40), nullable=False),
    Column("account_id", String(40), nullable=False),
    Column("event", String(40), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("detail", String(400), nullable=False),
)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    plan: str
    created_at_ms: int


@dataclass(frozen=True)
class KeyRow:
    id: str
    account_id: str
    name: str
    mode: KeyMode
    key_hash: bytes
    prefix: str
    last4: str
    status: KeyStatus
    created_at_ms: int
    last_used_at_ms: int | None
    expires_at_ms: int | None
    plan: str = ""
    rpm_limit: int | None = None
    requests_per_day_limit: int | None = None
    tokens_per_day_limit: int | None = None
    concurrency_limit: int | None = None
    routing_mode: RoutingMode | None = None
    preferred_provider: str | None = None

    def __post_init__(self) -> None:  # the columns hold the enums' strings
        object.__setattr__(self, "mode", KeyMode(self.mode))
        object.__setattr__(self, "status", KeyStatus(self.status))
        if self.routing_mode is not None:
            object.__setattr__(self, "routing_mode", RoutingMode(self.routing_mode))

    @property
    def masked(self) -> str:
        return f"{self.prefix}…{self.last4}"

    def effective_status(self, at_ms: int) -> KeyStatus:
        if self.status is KeyStatus.ACTIVE and self.expires_at_ms and self.expires_at_ms <= at_ms:
            return KeyStatus.EXPIRED
        return self.status


class AuthStore:
    def __init__(self, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions

    async def create_account(self, name: str, plan: str) -> AccountRow:
        row = AccountRow(new_id("acc"), name, plan, now_ms())
        async with self._sessions.begin() as s:
            await s.execute(insert(accounts).values(**row.__dict__))
        return row

    async def get_account(self, account_id: str) -> AccountRow | None:
        async with self._sessions() as s:
            r = (await s.execute(select(accounts).where(accounts.c.id == account_id))).first()
        return AccountRow(**r._mapping) if r else None

    async def create_key(
        self,
        account_id: str,
        name: str,
        mode: KeyMode,
        key_hash: bytes,
        prefix: str,
        last4: str,
        expires_at_ms: int | None,
        routing: dict[str, str | None] | None = None,
    ) -> KeyRow:
        at = now_ms()
        row = KeyRow(
            new_id("key"),
            account_id,
            name,
            mode,
            key_hash,
            prefix,
            last4,
            KeyStatus.ACTIVE,
            at,
            None,
            expires_at_ms,
            **(routing or {}),  # type: ignore[arg-type]
        )
        values = {k: v.value if isinstance(v, StrEnum) else v for k, v in row.__dict__.items() if k != "plan"}
        async with self._sessions.begin() as s:
            await s.execute(insert(api_keys).values(**values))
            await s.execute(
                insert(key_events).values(
                    key_id=row.id, account_id=account_id, event="created", at_ms=at, detail=f"mode={mode}"
                )
            )
        return row

    async def key_by_hash(self, key_hash: bytes) -> KeyRow | None:
        q = (
            select(api_keys, accounts.c.plan)
            .join(accounts, accounts.c.id == api_keys.c.account_id)
            .where(api_keys.c.key_hash == key_hash)
        )
        async with self._sessions() as s:
            r = (await s.execute(q)).first()
        if r is None:
            return None
        m = dict(r._mapping)
        m.pop("revoked_at_ms", None)
        return KeyRow(**m)

    async def list_keys(self, account_id: str) -> list[KeyRow]:
        q = select(api_keys).where(api_keys.c.account_id == account_id).order_by(api_keys.c.created_at_ms)
        async with self._sessions() as s:
            rows = (await s.execute(q)).all()
        out = []
        for r in rows:
            m = dict(r._mapping)
            m.pop("revoked_at_ms", None)
            out.append(KeyRow(**m))
        return out

    async def revoke_key(self, account_id: str, key_id: str) -> KeyRow | None:
        at = now_ms()
        async with self._sessions.begin() as s:
            result = await s.execute(
                update(api_keys)
                .where(
                    api_keys.c.id == key_id,
                    api_keys.c.account_id == account_id,
                    api_keys.c.status == KeyStatus.ACTIVE.value,
                )
                .values(status=KeyStatus.REVOKED.value, revoked_at_ms=at)
            )
            if result.rowcount:  # not another account's key, nor one already revoked
                await s.execute(
                    insert(key_events).values(
                        key_id=key_id, account_id=account_id, event="revoked", at_ms=at, detail=""
                    )
                )
        keys = [k for k in await self.list_keys(account_id) if k.id == key_id]
        return keys[0] if keys else None

    async def update_key(
        self, key_id: str, values: dict[str, int | str | None], account_id: str | None = None
    ) -> KeyRow | None:
        """Change limit or routing columns; with ``account_id``, only a key of that account."""
        where = [api_keys.c.id == key_id]
        if account_id is not None:
            where.append(api_keys.c.account_id == account_id)
        async with self._sessions.begin() as s:
            result = await s.execute(update(api_keys).where(*where).values(**values))
            if result.rowcount == 0:
                return None
            r = (await s.execute(select(api_keys.c.account_id).where(api_keys.c.id == key_id))).first()
            await s.execute(
                insert(key_events).values(
                    key_id=key_id,
                    account_id=r.account_id if r else "",
                    event="settings_changed",
                    at_ms=now_ms(),
                    detail=",".join(f"{k}={v}" for k, v in sorted(values.items()))[:400],
                )
            )
        return next(k for k in await self.list_keys(r.account_id if r else "") if k.id == key_id)

    async def touch_keys(self, last_used: dict[str, int]) -> None:
        """Record last-used times, batched (called periodically, off the request path)."""
        if not last_used:
            return
        async with self._sessions.begin() as s:
            for key_id, at in last_used.items():
                await s.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at_ms=at))

    async def audit(self, key_id: str, account_id: str, event: str, detail: str = "") -> None:
        async with self._sessions.begin() as s:
            await s.execute(
                insert(key_events).values(
                    key_id=key_id, account_id=account_id, event=event, at_ms=now_ms(), detail=detail
                )
            )
