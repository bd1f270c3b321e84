"""Exactly-once metering under faults: billing SIGKILLed again and again, NATS restarted once.

The stack has its own nats-server (restarted in place mid-run) and its own database. A few
thousand live requests on a priced model go through while billing is killed with SIGKILL
and restarted several times; the edge keeps answering (holds fail open), the router's
records wait in JetStream, and billing's durable consumer applies them when it is back.
Then: one usage entry per answered request and no other, each for the exact cost the
client was told, the balance exact, no hold left, and `faregate ledger verify` clean.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest

from faregate import processes
from faregate.money import token_cost
from faregate.pb.billing.v1 import billing_pb2, billing_pb2_grpc
from tests.conftest import fake_catalog
from tests.harness import Infra, PrivateNats, Stack, create_postgres_database, drop_postgres_database, wait_for

pytestmark = pytest.mark.e2e

REQUESTS = 2000
CONCURRENCY = 32
KILL_AT = (0.12, 0.32, 0.52, 0.8)  # fractions of the run at which billing is SIGKILLed
NATS_RESTART_AT = 0.6
CREDIT_MICROS = 50_000_000


def all_usage(stack: Stack, account_id: str) -> list[billing_pb2.LedgerEntry]:
    entries: list[billing_pb2.LedgerEntry] = []
    cursor = ""
    with grpc.insecure_channel(stack.addrs["billing"]) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        while True:
            page = stub.ListLedger(
                billing_pb2.ListLedgerRequest(account_id=account_id, limit=1000, cursor=cursor), timeout=10
            )
            entries += [e for e in page.entries if e.kind == "usage"]
            if not page.next_cursor:
                return entries
            cursor = page.next_cursor


def duplicates_ignored(stack: Stack) -> int:
    """Records billing found already applied (each one an ack lost to a SIGKILL, then redelivered)."""
    log = (stack.home / "logs" / "billing.log").read_text(errors="replace")
    found = re.findall(r"(\d+) usage records were already applied", log)
    return sum(int(n) for n in found)


def wallet(stack: Stack, account_id: str) -> billing_pb2.Wallet:
    with grpc.insecure_channel(stack.addrs["billing"]) as channel:
        return billing_pb2_grpc.BillingServiceStub(channel).GetWallet(
            billing_pb2.GetWalletRequest(account_id=account_id), timeout=10
        )


class Chaos(threading.Thread):
    """Kills billing (and restarts NATS once) as the load passes the planned points."""

    def __init__(self, stack: Stack, nats: PrivateNats, progress: Any) -> None:
        super().__init__(daemon=True, name="chaos")
        self.stack, self.nats, self.progress = stack, nats, progress
        self.kills = 0
        self.nats_restarts = 0
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            plan = sorted([(f, "kill") for f in KILL_AT] + [(NATS_RESTART_AT, "nats")])
            for at, what in plan:
                while self.progress() < at * REQUESTS:
                    time.sleep(0.02)
                if what == "kill":
                    self.stack.kill("billing")  # SIGKILL, mid-batch or not: no warning, no cleanup
                    self.kills += 1
                    time.sleep(0.3)
                    self.stack.start_service("billing")
                else:
                    self.nats.restart()
                    self.nats_restarts += 1
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


@pytest.fixture
def fault_stack(tmp_path: Path, fake_upstream: Any) -> Any:
    nats = PrivateNats(tmp_path / "nats").start()
    admin_db = os.environ.get("FAREGATE_TEST_DATABASE_URL")
    db_url, db_name = create_postgres_database(admin_db) if admin_db else (None, None)
    infra = Infra(nats_url=nats.url, database_url=db_url, redis_url=os.environ.get("FAREGATE_TEST_REDIS_URL"))
    env = {
        "FAKE_UPSTREAM_KEY": "sk-fake-upstream",
        "FAREGATE_CONSUMER_ACK_WAIT": "3",  # records a killed billing had fetched come back after 3 s
    }
    catalog = fake_catalog(fake_upstream.base_url, processes.free_port())
    stack = Stack(tmp_path / "stack", infra, catalog=catalog, env=env)
    try:
        stack.start()
        yield stack, nats
    except Exception:
        print(stack.logs())
        raise
    finally:
        stack.stop()
        nats.stop()
        if admin_db and db_name:
            drop_postgres_database(admin_db, db_name)


def test_every_answered_request_is_billed_exactly_once_through_billing_crashes_and_a_nats_restart(
    fault_stack: tuple[Stack, PrivateNats],
) -> None:
    stack, nats = fault_stack
    account_id = stack.create_account(credit_usd=CREDIT_MICROS / 1e6)
    key = stack.create_key(account_id)
    answered: dict[str, int] = {}  # request id → the cost the client's usage implies
    failures: Counter[str] = Counter()
    chaos = Chaos(stack, nats, lambda: len(answered) + sum(failures.values()))

    async def load() -> None:
        client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                words = " ".join(f"w{i}-{k}" for k in range(1 + i % 7))
                try:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="fake-model", messages=[{"role": "user", "content": words}], max_tokens=16
                    )
                except openai.APIError as exc:
                    failures[type(exc).__name__] += 1
                    continue
                usage = raw.parse().usage
                assert usage is not None
                answered[raw.headers["x-request-id"]] = token_cost(
                    usage.prompt_tokens, usage.completion_tokens, 1_000_000, 2_000_000
                )

        try:
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        finally:
            await client.close()

    started = time.monotonic()
    chaos.start()
    asyncio.run(load())
    assert chaos.done.wait(60), "the chaos plan did not finish"
    assert chaos.error is None, chaos.error
    loaded = time.monotonic() - started

    entries = wait_for(
        lambda: u if len(u := all_usage(stack, account_id)) >= len(answered) else None,
        timeout=60,
        interval=0.5,
        what=f"{len(answered)} usage entries",
    )
    time.sleep(4)  # one more ack-wait: any duplicate still to come would land now
    entries = all_usage(stack, account_id)
    per_request = Counter(e.request_id for e in entries)
    twice = [rid for rid, n in per_request.items() if n > 1]
    unexpected = set(per_request) - set(answered)
    missing = set(answered) - set(per_request)
    wrong = [e.request_id for e in entries if e.request_id in answered and -e.amount_micros != answered[e.request_id]]
    w = wallet(stack, account_id)
    verify = stack.cli("ledger", "verify")
    again = duplicates_ignored(stack)
    print(
        f"\nfault test: {len(answered)} answered, {sum(failures.values())} failed {dict(failures)}, "
        f"{chaos.kills} billing SIGKILLs, {chaos.nats_restarts} NATS restart, {again} redelivered records ignored, "
        f"{len(entries)} usage entries, "
        f"{len(twice)} twice, {len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong amounts, "
        f"balance {w.balance_micros} (expected {CREDIT_MICROS - sum(answered.values())}), held {w.held_micros}; "
        f"load {loaded:.1f}s, total {time.monotonic() - started:.1f}s; verify: {verify.stdout.strip()}"
    )
    assert chaos.kills == len(KILL_AT) and chaos.nats_restarts == 1
    assert not failures and len(answered) == REQUESTS
    assert not twice and not missing and not unexpected and not wrong
    assert len(entries) == len(answered)
    assert w.balance_micros == CREDIT_MICROS - sum(answered.values())
    assert w.held_micros == 0
    assert verify.returncode == 0, verify.stdout + verify.stderr
