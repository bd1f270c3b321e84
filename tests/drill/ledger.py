"""What billing's database says about the drill's account: usage entries per request id,
and the lowest balance its ledger ever reached."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@dataclass
class Books:
    usage: dict[str, tuple[int, int]]  # request id -> (usage entries, micro-USD charged)
    lowest_micros: int  # the ledger's running balance at its lowest (0 or above if never overdrawn)
    balance_micros: int | None  # the wallet's balance now


def billing_database_url(home: Path, database_url: str | None) -> str:
    """Billing's database: the configured one, or its SQLite file under the stack's home
    (faregate.settings.DatabaseSettings.database_url_for)."""
    return database_url or f"sqlite+aiosqlite:///{(home / 'billing.db').resolve()}"


async def _read(url: str, account_id: str) -> Books:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT request_id, COUNT(*), SUM(amount_micros) FROM ledger_entries "
                    "WHERE account_id = :a AND kind = 'usage' GROUP BY request_id"
                ),
                {"a": account_id},
            )
            usage = {str(rid): (int(n), -int(amount)) for rid, n, amount in rows}
            amounts = await conn.execute(
                text("SELECT amount_micros FROM ledger_entries WHERE account_id = :a ORDER BY id"), {"a": account_id}
            )
            running, lowest = 0, 0
            for (amount,) in amounts:
                running += int(amount)
                lowest = min(lowest, running)
            wallet = await conn.execute(
                text("SELECT balance_micros FROM wallets WHERE account_id = :a"), {"a": account_id}
            )
            balance = wallet.scalar()
    finally:
        await engine.dispose()
    return Books(usage, lowest, None if balance is None else int(balance))


def read_books(url: str, account_id: str) -> Books:
    return asyncio.run(_read(url, account_id))
