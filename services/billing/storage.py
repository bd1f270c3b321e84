"""Billing's tables: wallets, the append-only ledger, holds, the request log (metadata only)
and Stripe customers. Migrations: ``migrations/billing/``.

Billing talks to its database through :class:`Store`: SQLAlchemy Core connections (the ORM
session costs several times more per transaction on the hot path, and billing maps no
objects), and, on SQLite, one writer at a time inside the process — SQLite takes one writer
anyway, and waiting on an asyncio lock is far cheaper than SQLite's busy-wait sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Integer, MetaData, String, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

metadata = MetaData()

wallets = Table(
    "wallets",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("balance_micros", BigInteger, nullable=False),  # always the sum of the account's entries
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("credit_limit_micros", BigInteger, nullable=False, server_default="0"),  # granted credit
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("account_id", String(40), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("request_id", String(64)),
    Column("note", String(400), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("reference", String(100)),  # e.g. the Stripe payment intent a top-up, refund or dispute belongs to
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("model", String(200), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("provider_model", String(200), nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("estimated", Boolean, nullable=False),
    Column("cost_micros", BigInteger, nullable=False),
    Column("billable", Boolean, nullable=False),
    Column("status", String(24), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("latency_ms", BigInteger, nullable=False),
    Column("ttft_ms", BigInteger, nullable=False),
    Column("hold_id", String(64)),
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(64), primary_key=True),  # the request id
    Column("account_id", String(40), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
)

stripe_customers = Table(
    "stripe_customers",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("customer_id", String(100), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
)

# What a UsageRecord's strings may hold (longer ones are dead-lettered, never truncated).
USAGE_STRING_LIMITS = {
    "request_id": 64,
    "account_id": 40,
    "key_id": 40,
    "model": 200,
    "provider": 100,
    "provider_model": 200,
    "endpoint": 40,
    "hold_id": 64,
}


def insert_for(dialect: str) -> Any:
    return pg_insert if dialect == "postgresql" else sqlite_insert


def add_to_wallet(dialect: str, account_id: str, delta: int, at_ms: int) -> Any:
    """One statement that creates the wallet or moves its balance by ``delta``.

    It also takes the wallet's row lock (PostgreSQL) or the write lock (SQLite), so
    everything after it in the transaction is serialised per account.
    """
    stmt = insert_for(dialect)(wallets).values(account_id=account_id, balance_micros=delta, updated_at_ms=at_ms)
    return stmt.on_conflict_do_update(
        index_elements=[wallets.c.account_id],
        set_={"balance_micros": wallets.c.balance_micros + delta, "updated_at_ms": at_ms},
    )


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = asyncio.Lock() if self.dialect == "sqlite" else None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends (rolls back on an exception)."""
        if self._writer is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._writer, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn
