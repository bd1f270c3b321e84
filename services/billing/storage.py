"""Billing's tables: wallets, the append-only ledger, and the request log (metadata only)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, Integer, MetaData, String, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

metadata = MetaData()

wallets = Table(
    "wallets",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("balance_micros", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
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
    Column("reference", String(100)),  # the Stripe payment intent a top-up, refund or dispute belongs to
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
)


holds = Table(
    "holds",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
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
}


def insert_for(dialect: str) -> Any:
    """The dialect's INSERT (with ON CONFLICT support)."""
    return pg_insert if dialect == "postgresql" else sqlite_insert


def add_to_wallet(dialect: str, account_id: str, delta: int, at_ms: int) -> Any:
    """One statement that creates the wallet or moves its balance by ``delta``."""
    insert = insert_for(dialect)
    stmt = insert(wallets).values(account_id=account_id, balance_micros=delta, updated_at_ms=at_ms)
    return stmt.on_conflict_do_update(
        index_elements=[wallets.c.account_id],
        set_={"balance_micros": wallets.c.balance_micros + delta, "updated_at_ms": at_ms},
    )
