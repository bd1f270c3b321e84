"""The drill's set-ups: where its stack's state lives, and which NATS it may restart.

``embedded``: SQLite files and a private nats-server that the drill owns, so it may restart
it. ``machine``: the machine's PostgreSQL (a fresh database, dropped afterwards), Redis (a
key prefix of its own) and NATS (a stream of its own, deleted afterwards); the machine's
NATS is never stopped, so that set-up has no NATS restarts.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from faregate import processes
from tests.harness import Infra, create_postgres_database, drop_postgres_database

MACHINE_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
MACHINE_NATS = "nats://127.0.0.1:4222"


class OwnNats:
    """A private nats-server the drill started and may restart (same port, same store)."""

    def __init__(self, store: Path) -> None:
        self._launcher = processes.Launcher(dict(os.environ))
        self._store = store
        self._port = processes.free_port()
        self.proc, self.url = self._launcher.nats(store, self._port)

    def restart(self) -> int:
        """SIGKILL it and start it again at once; the killed PID."""
        pid = self.proc.pid
        self.proc.kill()
        self.proc, _ = self._launcher.nats(self._store, self._port)
        return pid

    def stop(self) -> None:
        self._launcher.stop_all()


@dataclass
class Setup:
    name: str
    infra: Infra
    database_url: str | None  # None: SQLite files under the stack's home
    nats: OwnNats | None  # None: NATS is not ours to restart


@contextlib.contextmanager
def own_nats_setup(name: str, home: Path, database_admin_url: str | None, redis_url: str | None) -> Iterator[Setup]:
    """A private nats-server; SQLite, or a fresh database on ``database_admin_url``'s server."""
    nats = OwnNats(home / "nats")
    db_url, db_name = create_postgres_database(database_admin_url) if database_admin_url else (None, None)
    try:
        yield Setup(name, Infra(nats.url, db_url, redis_url), db_url, nats)
    finally:
        nats.stop()
        if database_admin_url and db_name:
            drop_postgres_database(database_admin_url, db_name)


@contextlib.contextmanager
def embedded(home: Path) -> Iterator[Setup]:
    with own_nats_setup("embedded (sqlite, own nats)", home, None, None) as setup:
        yield setup


@contextlib.contextmanager
def machine(home: Path, database_admin_url: str, redis_url: str, nats_url: str) -> Iterator[Setup]:
    db_url, db_name = create_postgres_database(database_admin_url)
    try:
        yield Setup("machine (postgresql, redis, nats)", Infra(nats_url, db_url, redis_url), db_url, None)
    finally:
        drop_postgres_database(database_admin_url, db_name)


def machine_urls() -> tuple[str, str, str]:
    """The machine's servers, as ``make test-infra`` names them (its variables win)."""
    env = os.environ
    return (
        env.get("FAREGATE_TEST_DATABASE_URL", MACHINE_DATABASE),
        env.get("FAREGATE_TEST_REDIS_URL", MACHINE_REDIS),
        env.get("FAREGATE_TEST_NATS_URL", MACHINE_NATS),
    )


def unreachable(*urls: str) -> str | None:
    """The first of the servers that does not accept a TCP connection, or None."""
    for url in urls:
        parsed = make_url(url) if "+" in url.split(":")[0] else None
        host, port = (parsed.host, parsed.port or 5432) if parsed else _host_port(url)
        try:
            with socket.create_connection((host or "127.0.0.1", port), timeout=2):
                pass
        except OSError:
            return url
    return None


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    return processes.split_host_port(rest)
