"""ADR 11: billing settles the funds grants it owns. A grant whose edge never reported its
spends nor its end (the edge crashed) is freed by billing's sweep once it expires; what its
requests cost still reaches the wallet through the ledger, once."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from services.billing.ledger import Ledger
from services.billing.wallets import GRANT_GRACE_S, MemoryWallets, Spend
from tests.unit.billing.test_wallets import usage


async def test_a_grant_its_edge_never_settled_is_freed_when_it_expires(sessions: async_sessionmaker[Any]) -> None:
    now = [1_000.0]
    wallets = MemoryWallets(sessions, grant_s=1.0, clock=lambda: now[0])
    ledger = Ledger(sessions, on_applied=wallets.settled, on_credit=wallets.forget)
    acc = f"acc_{secrets.token_hex(6)}"
    await ledger.credit(acc, 10_000)
    first = f"req_{secrets.token_hex(6)}"
    await wallets.reserve(acc, first, 100)
    grant = wallets.grant(acc, 5_000, 100)
    assert grant is not None
    assert (await wallets.funds(acc)).held_micros == 100 + grant.micros
    # the edge admitted two requests against the grant, then died without reporting them
    spent = [f"req_{secrets.token_hex(6)}" for _ in range(2)]
    now[0] += 1.0 + GRANT_GRACE_S - 0.1
    assert await wallets.expire() == 0  # not yet: the edge may still report
    await ledger.apply_usage([usage(acc, first, 60), usage(acc, spent[0], 70)])
    now[0] += 0.2
    assert await wallets.expire() == 1  # the grant, by billing's sweep
    funds = await wallets.funds(acc)
    assert (funds.balance_micros, funds.held_micros) == (10_000 - 60 - 70, 0)
    # a spend reported after that holds nothing; its usage still debits, once
    wallets.settle_grants([Spend(grant.id, spent[1], 100)], [grant.id])
    assert (await wallets.funds(acc)).held_micros == 0
    await ledger.apply_usage([usage(acc, spent[1], 80), usage(acc, spent[1], 80)])
    funds = await wallets.funds(acc)
    assert (funds.balance_micros, funds.held_micros) == (10_000 - 60 - 70 - 80, 0)
