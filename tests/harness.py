"""Starts real Faregate processes for tests: real gRPC, real NATS, a real database.

Infrastructure comes from the environment when CI points at the machine's servers
(FAREGATE_TEST_DATABASE_URL, FAREGATE_TEST_NATS_URL, FAREGATE_TEST_REDIS_URL); otherwise
the embedded default is used: SQLite files and a private nats-server. Every stack gets its
own database, JetStream stream and subject, so stacks never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
from sqlalchemy.engine import make_url

from faregate import processes

SERVICE_ORDER = ("auth", "billing", "router", "edge")


@dataclass
class Infra:
    nats_url: str
    database_url: str | None  # None: SQLite files per service under the stack's home
    redis_url: str | None
    cleanup: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        db = "postgresql" if self.database_url else "sqlite"
        return f"{db}, redis={'yes' if self.redis_url else 'no'}"


async def _admin_execute(admin_url: str, sql: str) -> None:
    import asyncpg

    url = make_url(admin_url)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_postgres_database(admin_url: str) -> tuple[str, str]:
    """A fresh, uniquely named database on the server of ``admin_url``: (url, name)."""
    name = f"faregate_test_{secrets.token_hex(6)}"
    asyncio.run(_admin_execute(admin_url, f'CREATE DATABASE "{name}"'))
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def drop_postgres_database(admin_url: str, name: str) -> None:
    asyncio.run(_admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def delete_stream(nats_url: str, stream: str, bucket: str | None = None) -> None:
    """Delete a test stack's usage stream (and its catalog bucket) from a shared NATS."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        if bucket:
            with contextlib.suppress(Exception):
                await js.delete_key_value(bucket)
    finally:
        await nc.close()


class Stack:
    """One Faregate installation: each service a real process, on free ports."""

    def __init__(
        self,
        home: Path,
        infra: Infra,
        *,
        catalog: str | None = None,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.home = home
        self.infra = infra
        tag = secrets.token_hex(4)
        self.usage_stream = f"FG_TEST_{tag.upper()}"
        self.usage_subject = f"faregate.test.{tag}.usage"
        self.admin_token = secrets.token_urlsafe(24)
        http_port = processes.free_port()
        self.url = f"http://127.0.0.1:{http_port}"
        self.addrs = {name: f"127.0.0.1:{processes.free_port()}" for name in ("auth", "router", "billing")}
        self.env = {
            **os.environ,
            "FAREGATE_HOME": str(home),
            "FAREGATE_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "FAREGATE_AUTH_ADDR": self.addrs["auth"],
            "FAREGATE_ROUTER_ADDR": self.addrs["router"],
            "FAREGATE_BILLING_ADDR": self.addrs["billing"],
            "FAREGATE_NATS_URL": infra.nats_url,
            "FAREGATE_USAGE_STREAM": self.usage_stream,
            "FAREGATE_USAGE_SUBJECT": self.usage_subject,
            "FAREGATE_CATALOG_BUCKET": f"{self.usage_stream}_CATALOG",
            "FAREGATE_ADMIN_TOKEN": self.admin_token,
            "FAREGATE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        for var in ("FAREGATE_DATABASE_URL", "FAREGATE_REDIS_URL", "FAREGATE_CONFIG"):
            self.env.pop(var, None)
        db_url = database_url or infra.database_url
        if db_url:
            self.env["FAREGATE_DATABASE_URL"] = db_url
        if infra.redis_url:
            self.env["FAREGATE_REDIS_URL"] = infra.redis_url
            self.env["FAREGATE_REDIS_PREFIX"] = f"faregate-test-{tag}:"
        if catalog is not None:
            path = home / "catalog.yaml"
            home.mkdir(parents=True, exist_ok=True)
            path.write_text(catalog)
            self.env["FAREGATE_CONFIG"] = str(path)
        self.env.update(env or {})
        self.launcher = processes.Launcher(self.env, log_dir=home / "logs")
        self.procs: dict[str, processes.Proc] = {}
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self._sdks: list[Any] = []

    # -- processes ------------------------------------------------------------------

    def start(self) -> Stack:
        for name in SERVICE_ORDER:
            self.start_service(name)
        return self

    @contextlib.contextmanager
    def running(self, start: Callable[[Stack], object] | None = None) -> Iterator[Stack]:
        """Start every service (or whatever ``start`` starts), yield, and stop them all;
        when starting fails, the services' logs are printed first."""
        try:
            (start or Stack.start)(self)
        except Exception:
            print(self.logs())
            self.stop()
            raise
        try:
            yield self
        finally:
            self.stop()

    def start_service(self, name: str, *, replica: str | None = None) -> processes.Proc:
        """Start a service; ``replica`` starts one more replica of it listening there."""
        env = None
        if replica is not None:
            env = {f"FAREGATE_{name.upper()}_ADDR": replica}
        proc = self.launcher.service(name, env)
        self.procs[replica or name] = proc
        if name == "edge":
            processes.wait_http_ok(f"{self.url}/health", proc)
        else:
            processes.wait_grpc_serving(replica or self.addrs[name].split(",")[0], proc)
        return proc

    def add_replica_address(self, name: str) -> str:
        """Make the stack's clients balance over one more replica address (before starting)."""
        extra = f"127.0.0.1:{processes.free_port()}"
        self.addrs[name] = f"{self.addrs[name]},{extra}"
        self.env[f"FAREGATE_{name.upper()}_ADDR"] = self.addrs[name]
        self.launcher.env = self.env
        return extra

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``faregate <args>`` with this stack's configuration (e.g. ``ledger verify``)."""
        return subprocess.run(
            [sys.executable, "-m", "faregate.cli", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def sdk(self, key: str) -> Any:
        """An OpenAI SDK client of this stack's edge, closed when the stack stops (clients the
        garbage collector finds with open sockets would warn, and warnings fail the tests)."""
        import openai

        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)
        self._sdks.append(client)
        return client

    def stop(self) -> None:
        for client in self._sdks:
            client.close()
        self.http.close()
        self.launcher.stop_all()
        asyncio.run(delete_stream(self.infra.nats_url, self.usage_stream, self.env["FAREGATE_CATALOG_BUCKET"]))

    def logs(self) -> str:
        out = []
        for log in sorted((self.home / "logs").glob("*.log")):
            out.append(f"----- {log.name} -----\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    # -- admin API --------------------------------------------------------------------

    def admin(self, method: str, path: str, json: Any = None) -> httpx.Response:
        return self.http.request(method, path, json=json, headers={"Authorization": f"Bearer {self.admin_token}"})

    def create_account(self, name: str = "acme", plan: str = "unlimited", credit_usd: float | None = None) -> str:
        resp = self.admin("POST", "/admin/accounts", {"name": name, "plan": plan})
        assert resp.status_code == 201, resp.text
        account_id: str = resp.json()["id"]
        if credit_usd:
            resp = self.admin("POST", f"/admin/accounts/{account_id}/credit", {"amount_usd": credit_usd})
            assert resp.status_code == 200, resp.text
        return account_id

    def create_key(self, account_id: str, mode: str = "live") -> str:
        resp = self.admin("POST", f"/admin/accounts/{account_id}/keys", {"mode": mode})
        assert resp.status_code == 201, resp.text
        key: str = resp.json()["key"]
        return key

    def balance_usd(self, account_id: str) -> float:
        resp = self.admin("GET", f"/admin/accounts/{account_id}")
        assert resp.status_code == 200, resp.text
        value: float = resp.json()["balance_usd"]
        return value


def ledger(stack: Stack, account_id: str) -> list[Any]:
    """The account's ledger entries, newest first, read from the real billing service (each
    entry's fields, its kind as faregate.values.EntryKind: it compares equal to "usage", …)."""
    import types

    import grpc

    from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
    from faregate.values import EntryKind

    with grpc.insecure_channel(stack.addrs["billing"]) as channel:
        reply = billing_pb2_grpc.BillingServiceStub(channel).ListLedger(
            billing_pb2.ListLedgerRequest(account_id=account_id, limit=1000), timeout=10
        )
    return [
        types.SimpleNamespace(
            **{**{f.name: getattr(e, f.name) for f in e.DESCRIPTOR.fields}, "kind": EntryKind.from_pb(e.kind)}
        )
        for e in reply.entries
    ]


def wait_for(predicate: Any, *, timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy (metering is asynchronous by design)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
