"""The fault drill, small (tests/drill): a few hundred mixed requests while each of edge,
router, auth and billing is SIGKILLed once and the stack's own nats-server restarted once;
then no answered request is unmetered, none is metered twice, and the wallet never went
further below zero than one request's worst case.

Embedded by default (SQLite); under ``make test-infra`` on the machine's PostgreSQL (a fresh
database) and Redis. NATS is always the test's own nats-server, so that it may restart it.
``make faults`` runs the full drill.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.drill.run import SERVICES, Config, Row, run_drill, table
from tests.drill.setups import Setup, own_nats_setup
from tests.harness import Infra

pytestmark = pytest.mark.e2e

CONFIG = Config(requests=300, clients=16, kills=1, nats_restarts=1, seed=int(os.environ.get("FAREGATE_DRILL_SEED", 21)))


@pytest.fixture
def setup(infra: Infra, tmp_path: Path) -> Iterator[Setup]:
    admin_db = os.environ.get("FAREGATE_TEST_DATABASE_URL") if infra.database_url else None
    with own_nats_setup(f"ci ({infra.label})", tmp_path / "setup", admin_db, infra.redis_url) as s:
        yield s


@pytest.mark.xfail(
    strict=True,
    reason="issue 21 item 1: a router kill loses the requests answered in the ~50 ms before it "
    "(their usage records linger before publishing)",
)
def test_no_answered_request_unmetered_through_kills_of_every_process(setup: Setup, tmp_path: Path) -> None:
    row: Row = run_drill(setup, CONFIG, tmp_path / "stack")
    print(f"\nfault drill (seed {CONFIG.seed}):\n{table([row])}\n" + "\n".join(row.notes))
    assert not row.stalled, "the load ended before every fault was injected and recovered from"
    assert all(row.faults[name] == CONFIG.kills for name in SERVICES), row.faults
    assert row.faults["nats"] == CONFIG.nats_restarts, row.faults
    assert not row.doubled, f"metered twice: {row.doubled[:10]}"
    assert row.overdraft <= 1, f"overdrawn by {row.overdraft:.2f} worst cases"
    assert not row.lost, f"{len(row.lost)} answered requests never metered: {row.lost[:10]}"
