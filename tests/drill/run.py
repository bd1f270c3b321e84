"""One drill on one set-up: a stack, the load, the kills at random moments, the reconciliation."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from faregate import processes
from faregate.money import token_cost
from tests.conftest import fake_catalog
from tests.drill.ledger import Books, billing_database_url, read_books
from tests.drill.load import MODELS, Load
from tests.drill.setups import Setup
from tests.fakes.upstream import FakeUpstream
from tests.harness import Stack

SERVICES = ("edge", "router", "auth", "billing")
CREDIT_USD = 100
SETTLE_QUIET_S = 10.0  # the ledger stopped growing for this long: metering has settled
SETTLE_MAX_S = 120.0


@dataclass(frozen=True)
class Config:
    requests: int = 10_000
    clients: int = 16
    kills: int = 3  # SIGKILLs of each of edge, router, auth, billing
    nats_restarts: int = 2  # only where the NATS is the drill's own
    seed: int = 0


@dataclass
class Fault:
    target: str
    pid: int
    at: float  # time.monotonic() of the kill
    back_after_s: float  # until the restarted process served again
    recovered_s: float | None = None  # until the next complete answer to a request sent after the kill


@dataclass
class Row:
    setup: str
    sent: int
    served: int  # answers the fake upstream served
    answered: int
    metered: int  # answered requests with a usage entry (distinct request ids)
    lost: list[str]  # request ids answered and not metered
    doubled: list[str]  # request ids with more than one usage entry
    overdraft: float  # the lowest balance, in worst cases below zero
    recover_s: float | None
    faults: Counter[str]
    stalled: bool
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.doubled or self.overdraft > 1 or self.stalled)


def schedule(config: Config, nats: bool) -> list[tuple[float, str, float]]:
    """(answered count that triggers it, target, jitter seconds) for each fault, in order."""
    rng = random.Random(config.seed)
    targets = [name for name in SERVICES for _ in range(config.kills)]
    targets += ["nats"] * (config.nats_restarts if nats else 0)
    rng.shuffle(targets)
    triggers = sorted(rng.uniform(0.05, 0.85) * config.requests for _ in targets)
    return [(t, name, rng.uniform(0.0, 0.5)) for t, name in zip(triggers, targets, strict=True)]


def run_drill(setup: Setup, config: Config, home: Path, say: Callable[[str], None] = print) -> Row:
    fake = FakeUpstream(api_key="sk-fake-upstream").start()
    catalog = fake_catalog(fake.base_url, processes.free_port(), fake.anthropic_base_url)
    env = {"FAKE_UPSTREAM_KEY": "sk-fake-upstream", "FAREGATE_LOG_LEVEL": "WARNING"}
    stack = Stack(home, setup.infra, catalog=catalog, env=env, database_url=setup.database_url)
    try:
        with stack.running():
            account = stack.create_account("drill", plan="unlimited", credit_usd=CREDIT_USD)
            key = stack.create_key(account)
            load = Load(stack.url, key, config.requests, config.clients, cap=10 * config.requests)
            faults = _inject(stack, setup, config, load, say)
            say(f"[{setup.name}] load done: sent {load.sent}, answered {load.answered}; waiting for metering")
            books = _settle(billing_database_url(home, setup.database_url), account, load)
    finally:
        fake.stop()
    return _reconcile(setup, load, faults, books, fake.served)


def _inject(stack: Stack, setup: Setup, config: Config, load: Load, say: Callable[[str], None]) -> list[Fault]:
    plan = schedule(config, setup.nats is not None)
    faults: list[Fault] = []
    started = time.monotonic()
    thread = load.start()
    stop_progress = threading.Event()

    def progress() -> None:
        while not stop_progress.wait(5.0):
            say(f"[{setup.name}] {time.monotonic() - started:5.0f}s sent {load.sent} answered {load.answered}")

    threading.Thread(target=progress, daemon=True).start()
    try:
        for trigger, target, jitter in plan:
            if not _wait_recovered(load, faults, trigger):
                break
            time.sleep(jitter)
            at = time.monotonic()
            if target == "nats":
                assert setup.nats is not None
                pid = setup.nats.restart()
            else:
                pid = stack.procs[target].pid
                stack.kill(target)  # SIGKILL
                stack.start_service(target)  # at once, as a supervisor would
            fault = Fault(target, pid, at, time.monotonic() - at)
            faults.append(fault)
            say(
                f"[{setup.name}] {at - started:5.1f}s kill -9 {target} (pid {pid}) at answered {load.answered}"
                f" -> serving again after {fault.back_after_s:.1f}s ({len(faults)}/{len(plan)})"
            )
        _wait_recovered(load, faults, 0)  # the last fault too, before the load may end
    finally:
        load.faults_done.set()
        thread.join()
        stop_progress.set()
    return faults


def _wait_recovered(load: Load, faults: list[Fault], answered: float) -> bool:
    """Wait until ``answered`` answers and one to a request sent after the latest fault (so
    each fault strikes a serving stack); False if the load ended first."""
    since = faults[-1].at if faults else 0.0
    while load.answered < answered or load.last_answer_started <= since:
        if load.finished.is_set():
            return False
        time.sleep(0.02)
    return True


def _settle(url: str, account: str, load: Load) -> Books:
    answered = {r.request_id for r in load.replies if r.complete}
    deadline = time.monotonic() + SETTLE_MAX_S
    last_count, quiet_since = -1, time.monotonic()
    while True:
        books = read_books(url, account)
        if answered <= books.usage.keys() or time.monotonic() > deadline:
            return books
        if len(books.usage) != last_count:
            last_count, quiet_since = len(books.usage), time.monotonic()
        elif time.monotonic() - quiet_since > SETTLE_QUIET_S:
            return books
        time.sleep(1.0)


def _reconcile(setup: Setup, load: Load, faults: list[Fault], books: Books, served: list[dict]) -> Row:
    answered = {r.request_id: r for r in load.replies if r.complete}
    for fault in faults:
        after = [r.ended for r in load.replies if r.complete and r.started >= fault.at]
        fault.recovered_s = min(after) - fault.at if after else None
    recoveries = [f.recovered_s for f in faults if f.recovered_s is not None]
    lowest = min(books.lowest_micros, books.balance_micros or 0)
    notes = []
    if any(f.recovered_s is None for f in faults):
        notes.append("no complete answer after a kill: " + ", ".join(f.target for f in faults if f.recovered_s is None))
    if load.stalled:
        notes.append("the load stalled or hit its cap before the faults were all injected")
    # The upstream's log against the ledger: each answered request charged what its usage costs.
    by_prompt = {int(s["prompt"].split()[1]): s for s in served if s["prompt"].startswith("drill ")}
    mispriced = 0
    for rid, reply in answered.items():
        entry, log = books.usage.get(rid), by_prompt.get(reply.i)
        if entry and log:
            u = log["usage"]
            mispriced += entry[1] != token_cost(u["prompt_tokens"], u["completion_tokens"], *MODELS[reply.model])
    if mispriced:
        notes.append(f"{mispriced} answered requests charged other than their upstream usage's price")
    lost = answered.keys() - books.usage.keys()
    if lost:  # each lost answer put down to the first fault after it
        causes = Counter(
            next((f.target for f in faults if f.at >= answered[rid].ended), "no later fault") for rid in lost
        )
        notes.append("lost answers by the next fault after them: " + ", ".join(f"{t} {n}" for t, n in causes.items()))
    unanswered_metered = len(books.usage.keys() - answered.keys())
    notes.append(
        f"{unanswered_metered} metered without a complete answer (cut or failed on the client's side); "
        f"statuses {dict(sorted(Counter(r.status for r in load.replies).items()))}"
    )
    return Row(
        setup=setup.name,
        sent=load.sent,
        served=len(served),
        answered=len(answered),
        metered=len(answered.keys() & books.usage.keys()),
        lost=sorted(lost),
        doubled=sorted(rid for rid, (n, _) in books.usage.items() if n > 1),
        overdraft=max(0, -lowest) / max(1, load.worst_case_micros),
        recover_s=max(recoveries) if recoveries else None,
        faults=Counter(f.target for f in faults),
        stalled=load.stalled,
        notes=notes,
    )


def table(rows: list[Row]) -> str:
    head = ("set-up", "sent", "served", "answered", "metered", "lost", "doubled", "overdraft", "recover s", "kills")
    lines: list[tuple[str, ...]] = [head]
    for r in rows:
        kills = " ".join(f"{t}={r.faults.get(t, 0)}" for t in (*SERVICES, "nats"))
        recover = f"{r.recover_s:.1f}" if r.recover_s is not None else "-"
        cells = (r.sent, r.served, r.answered, r.metered, len(r.lost), len(r.doubled), f"{r.overdraft:.2f}", recover)
        lines.append((r.setup, *map(str, cells), kills))
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    left = (0, len(head) - 1)  # names left-aligned, figures right-aligned
    out = [
        "  ".join(
            cell.ljust(w) if c in left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    return "\n".join([out[0], "-" * len(out[0]), *out[1:]])
