"""The usage stream into billing's ledger: idempotent on request id, dead letters counted."""

from __future__ import annotations

import asyncio
import secrets

import nats
import pytest

from faregate.events import BATCH_HEADER
from faregate.pb.events.v1.usage_pb2 import UsageBatch, UsageRecord
from tests.harness import Stack, ledger, wait_for

pytestmark = pytest.mark.e2e


async def publish(stack: Stack, payloads: list[tuple[bytes, str | None]], *, batch: bool = False) -> None:
    nc = await nats.connect(stack.infra.nats_url)
    try:
        js = nc.jetstream()
        for data, msg_id in payloads:
            headers = {"Nats-Msg-Id": msg_id} if msg_id else {}
            if batch:
                headers[BATCH_HEADER] = "1"
            await js.publish(stack.usage_subject, data, headers=headers or None)
    finally:
        await nc.close()


def record(account_id: str, request_id: str, cost: int) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        account_id=account_id,
        key_id="key_test",
        model="fake-model",
        provider="fake",
        provider_model="fake-upstream-model",
        endpoint="chat.completions",
        prompt_tokens=10,
        completion_tokens=5,
        cost_micros=cost,
        billable=True,
        status=UsageRecord.STATUS_OK,
    )


def test_a_record_delivered_twice_is_applied_once(stack: Stack) -> None:
    account_id = stack.create_account(credit_usd=1)
    rid = f"req_{secrets.token_hex(8)}"
    data = record(account_id, rid, 1234).SerializeToString()
    # Different message ids defeat JetStream's own de-duplication: the ledger must hold the line.
    asyncio.run(publish(stack, [(data, f"{rid}-a"), (data, f"{rid}-b"), (data, None)]))
    wait_for(lambda: any(e.request_id == rid for e in ledger(stack, account_id)), what="the usage entry")
    marker = f"req_{secrets.token_hex(8)}"
    asyncio.run(publish(stack, [(record(account_id, marker, 1).SerializeToString(), marker)]))
    wait_for(lambda: any(e.request_id == marker for e in ledger(stack, account_id)), what="the marker entry")
    entries = [e for e in ledger(stack, account_id) if e.request_id == rid]
    assert len(entries) == 1 and entries[0].amount_micros == -1234
    assert stack.balance_usd(account_id) == pytest.approx(1 - 1235 / 1e6)


def test_malformed_records_are_dead_lettered_and_counted(stack: Stack) -> None:
    before = stack.http.get("/health").json()["metering"]["dead_lettered"]
    asyncio.run(
        publish(
            stack,
            [
                (b"\xff\xff not a protobuf", None),
                (UsageRecord(request_id="req_x").SerializeToString(), None),  # no account
            ],
        )
    )
    wait_for(
        lambda: stack.http.get("/health").json()["metering"]["dead_lettered"] >= before + 2,
        what="dead-letter count in /health",
    )


def test_a_record_of_an_unknown_account_is_dead_lettered_with_its_reason(stack: Stack) -> None:
    before = stack.http.get("/health").json()["metering"]["dead_lettered"]
    rid = f"req_{secrets.token_hex(8)}"
    asyncio.run(publish(stack, [(record("acc_nobody_knows", rid, 5).SerializeToString(), rid)]))

    async def dead_letter() -> dict[str, str] | None:
        nc = await nats.connect(stack.infra.nats_url)
        try:
            msg = await nc.jetstream().get_last_msg(stack.usage_stream, f"{stack.usage_subject}.dead")
        except nats.js.errors.NotFoundError:
            return None
        finally:
            await nc.close()
        return dict(msg.headers or {}) if UsageRecord.FromString(msg.data).request_id == rid else None

    headers = wait_for(lambda: asyncio.run(dead_letter()), what="the dead letter")
    assert headers["Faregate-Reason"] == "unknown account 'acc_nobody_knows'"
    wait_for(lambda: stack.http.get("/health").json()["metering"]["dead_lettered"] > before, what="it counted")
    assert not [e for e in ledger(stack, "acc_nobody_knows")]


def test_a_batch_applies_its_good_records_and_dead_letters_the_others_alone(stack: Stack) -> None:
    """The router publishes records in batches (UsageBatch): one bad record must neither
    block nor take with it the others of its message."""
    account_id = stack.create_account(credit_usd=1)
    before = stack.http.get("/health").json()["metering"]["dead_lettered"]
    good = [record(account_id, f"req_{secrets.token_hex(8)}", cost) for cost in (100, 200)]
    negative = record(account_id, f"req_{secrets.token_hex(8)}", -5)
    stranger = record("acc_nobody_knows", f"req_{secrets.token_hex(8)}", 7)
    data = UsageBatch(records=[good[0], negative, stranger, good[1]]).SerializeToString()
    msg_id = f"{good[0].request_id}+3"
    asyncio.run(publish(stack, [(data, msg_id), (data, msg_id)], batch=True))  # the second: a retry
    wait_for(
        lambda: {r.request_id for r in good} <= {e.request_id for e in ledger(stack, account_id)},
        what="the batch's good records",
    )
    wait_for(
        lambda: stack.http.get("/health").json()["metering"]["dead_lettered"] >= before + 2,
        what="the two bad records dead-lettered",
    )
    entries = [e for e in ledger(stack, account_id) if e.kind == "usage"]
    assert sorted(e.amount_micros for e in entries) == [-200, -100]
    assert stack.balance_usd(account_id) == pytest.approx(1 - 300 / 1e6)
