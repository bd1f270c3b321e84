"""A migrated billing database for the domain tests: SQLite, or PostgreSQL in the infra suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from faregate import db
from tests.harness import create_postgres_database, drop_postgres_database


@pytest.fixture(scope="module")
def billing_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    admin = os.environ.get("FAREGATE_TEST_DATABASE_URL")
    if admin:
        url, name = create_postgres_database(admin)
        db.upgrade("billing", url)
        yield url
        drop_postgres_database(admin, name)
        return
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('billing') / 'billing.db'}"
    db.upgrade("billing", url)
    yield url


@pytest.fixture
async def sessions(billing_url: str) -> AsyncIterator[async_sessionmaker[Any]]:
    engine = db.make_engine(billing_url)
    yield db.make_sessionmaker(engine)
    await engine.dispose()
