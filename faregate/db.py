"""Database engines and migrations (SQLAlchemy 2 async, Alembic).

Each service owns its tables and its own Alembic history (``migrations/<service>/``, with
its own version table), and upgrades it at start-up. SQLite is the embedded default; it is
put in WAL mode with a busy timeout so readers never block the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_URL_VAR = "FAREGATE_MIGRATE_URL"


def private_sqlite_file(url: str) -> None:
    """Create a SQLite database file readable only by its owner (0600; SQLite gives its WAL
    and shared-memory files the database file's mode), in a 0700 directory it creates."""
    database = make_url(url).database if url.startswith("sqlite") else None
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(service: str, url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS / service))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("version_table", f"alembic_version_{service}")
    cfg.set_main_option("service", service)
    return cfg


def upgrade(service: str, url: str) -> None:
    """Bring ``service``'s tables to the newest revision (blocking)."""
    from alembic import command

    private_sqlite_file(url)
    command.upgrade(alembic_config(service, url), "head")


async def upgrade_async(service: str, url: str) -> None:
    """Upgrade from a child process: Alembic (and Mako) would otherwise stay in the service's
    memory for its whole life, ~15 MB per service. The URL travels in the environment, never
    in the process list."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faregate.db", service, env={**os.environ, _URL_VAR: url}
    )
    if code := await proc.wait():
        raise RuntimeError(f"migrating the {service} database failed (exit code {code}); see the log above")


if __name__ == "__main__":
    upgrade(sys.argv[1], os.environ[_URL_VAR])
