"""The gateway core, driven with fake auth, billing and router clients given to its
constructor: one test per outcome of an admission, and what it gives back in each."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from faregate.errors import (
    AuthenticationFailed,
    FaregateError,
    InsufficientBalance,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    Reason,
    UpstreamError,
)
from services.edge.callers import AdmissionGrant, Admitted, Credentials, FundsGrant, GrantReturn, SlotRelease
from services.edge.gateway import Endpoint, Gateway, Opened, key_digest
from tests.unit.edge.fakes import CALLER, LIVE_KEY, FakeRouter, FakeStream, down, gateway
from tests.waiting import Sleeps, settled

LIVE = Credentials(LIVE_KEY, "10.0.0.1")
TEST = Credentials("gw_test_" + "t" * 32)


def auth_admitted(grant: AdmissionGrant) -> Admitted:
    return Admitted(CALLER, "s", grant)


def chat(**fields: object) -> bytes:
    return orjson.dumps({"model": "priced", "messages": [{"role": "user", "content": "hi"}], **fields})


@contextlib.asynccontextmanager
async def running(gw: Gateway) -> AsyncIterator[None]:
    """The gateway's components, as the edge's supervisor runs them."""
    tasks = [asyncio.create_task(run()) for name, run in gw.components().items() if name != "prices"]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_json_answer_is_routed_as_the_caller_and_keeps_its_hold_for_the_usage_record() -> None:
    gw, auth, billing, router = await gateway()
    async with gw.admit(LIVE, chat(max_tokens=10), request_id="req_1") as admission:
        assert not admission.streamed and admission.caller == CALLER
        assert await admission.complete() == b'{"id": "chatcmpl-1"}'
    assert [(c.request_id, c.caller) for c in router.calls] == [("req_1", CALLER)]
    assert list(billing.held) == ["req_1"]  # the router's usage record settles it in billing
    assert auth.asks[0].credentials == LIVE
    await gw.close()
    assert billing.dropped == [] and [r.slot_id for r in auth.released] == ["slot_1"]


async def test_a_key_auth_refuses_reaches_no_one_else() -> None:
    gw, auth, billing, router = await gateway()
    auth.refuse = AuthenticationFailed("invalid API key")
    with pytest.raises(AuthenticationFailed):
        async with gw.admit(LIVE, chat(), request_id="req_1"):
            raise AssertionError("a refused request is not admitted")
    assert router.calls == [] and billing.held == {}


async def test_funds_refused_in_the_same_round_as_auth_give_the_slot_back() -> None:
    gw, auth, billing, router = await gateway()
    async with gw.admit(LIVE, chat(), request_id="req_1") as first:  # learns the key's account
        await first.complete()
    billing.refuse = InsufficientBalance("insufficient balance")
    with pytest.raises(InsufficientBalance):
        async with gw.admit(LIVE, chat(), request_id="req_2"):
            raise AssertionError("not admitted")
    assert len(auth.asks) == 2  # auth and billing were asked together
    await gw.close()
    assert sorted(r.slot_id for r in auth.released) == ["slot_1", "slot_2"]
    assert len(router.calls) == 1


async def test_auth_refusing_in_the_same_round_as_a_hold_drops_the_hold() -> None:
    gw, auth, billing, _ = await gateway()
    async with gw.admit(LIVE, chat(), request_id="req_1") as first:
        await first.complete()
    auth.refuse = RateLimited("rate limit exceeded", reason=Reason.CONCURRENCY_EXCEEDED, retry_after=1)
    with pytest.raises(RateLimited):
        async with gw.admit(LIVE, chat(), request_id="req_2"):
            raise AssertionError("not admitted")
    await gw.close()
    assert "req_2" in billing.dropped and "req_2" not in billing.held


async def test_an_upstream_that_fails_before_answering_frees_the_slot_and_the_hold() -> None:
    gw, auth, billing, _ = await gateway(router=FakeRouter(answer=UpstreamError("upstream unreachable")))
    with pytest.raises(UpstreamError):
        async with gw.admit(LIVE, chat(), request_id="req_1") as admission:
            await admission.complete()
    await gw.close()
    assert billing.dropped == ["req_1"] and billing.held == {}
    assert [r.slot_id for r in auth.released] == ["slot_1"]


async def test_a_stream_keeps_its_slot_until_the_end_and_its_hold_for_the_usage_record() -> None:
    stream = FakeStream(Opened(True, [b'{"n": 1}']), [[b'{"n": 2}', b'{"n": 3}']])
    gw, _, billing, _ = await gateway(router=FakeRouter(stream_with=stream))
    async with gw.admit(LIVE, chat(stream=True), request_id="req_1") as admission:
        assert admission.streamed
        relay = await admission.stream()
        got = []
        async for batch in relay:
            got.append(batch)
            if len(got) == 2:
                stream.more.set()  # the upstream ends
            assert gw.releases.take() == []  # the slot is held while the stream runs
    assert got == [[b'{"n": 1}'], [b'{"n": 2}', b'{"n": 3}']]
    assert stream.closed and list(billing.held) == ["req_1"]
    assert [r.slot_id for r in gw.releases.take()] == ["slot_1"]


async def test_a_stream_that_fails_after_the_first_byte_raises_from_the_relay_and_is_metered() -> None:
    stream = FakeStream(Opened(True, [b'{"n": 1}']), [UpstreamError("the upstream went away")])
    gw, _, billing, _ = await gateway(router=FakeRouter(stream_with=stream))
    got = []
    with pytest.raises(UpstreamError):
        async with gw.admit(LIVE, chat(stream=True), request_id="req_1") as admission:
            async for batch in await admission.stream():
                got.append(batch)
    assert got == [[b'{"n": 1}']]
    await gw.close()
    assert billing.dropped == [] and "req_1" in billing.held  # the router meters what was sent


async def test_a_stream_refused_before_the_first_byte_frees_the_hold() -> None:
    stream = FakeStream(UpstreamError("no provider answered"), [])
    gw, _, billing, _ = await gateway(router=FakeRouter(stream_with=stream))
    with pytest.raises(UpstreamError):
        async with gw.admit(LIVE, chat(stream=True), request_id="req_1") as admission:
            await admission.stream()
    await gw.close()
    assert billing.dropped == ["req_1"] and stream.closed


async def test_a_client_that_goes_away_mid_stream_ends_the_call() -> None:
    stream = FakeStream(Opened(True, [b'{"n": 1}']), [])
    gw, _, billing, _ = await gateway(router=FakeRouter(stream_with=stream))
    async with gw.admit(LIVE, chat(stream=True), request_id="req_1") as admission:
        relay = await admission.stream()
        batches = relay.__aiter__()
        assert await anext(batches) == [b'{"n": 1}']
        reading = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)
        relay.close()  # the client disconnected
        with pytest.raises(StopAsyncIteration):
            await reading
    assert stream.closed and "req_1" in billing.held  # metered as cancelled by the router


async def test_a_stream_answered_whole_frees_the_slot_at_once() -> None:
    stream = FakeStream(Opened(False, [b'{"id": "x"}']), [])
    gw, _, _, _ = await gateway(router=FakeRouter(stream_with=stream))
    async with gw.admit(LIVE, chat(stream=True), request_id="req_1") as admission:
        relay = await admission.stream()
        assert not relay.streamed and relay.body == b'{"id": "x"}'
        assert [r.slot_id for r in gw.releases.take()] == ["slot_1"]


async def test_an_exception_in_the_adapter_gives_everything_back() -> None:
    gw, auth, billing, _ = await gateway()
    with pytest.raises(KeyError):
        async with gw.admit(LIVE, chat(), request_id="req_1"):
            raise KeyError("a bug in an adapter")
    await gw.close()
    assert billing.dropped == ["req_1"] and [r.slot_id for r in auth.released] == ["slot_1"]


async def test_a_body_over_the_limit_is_refused_before_any_call() -> None:
    gw, auth, billing, _ = await gateway(max_body_bytes=10)
    with pytest.raises(PayloadTooLarge):
        async with gw.admit(LIVE, chat(), request_id="req_1"):
            raise AssertionError("not admitted")
    assert auth.asks == [] and billing.held == {}


async def test_test_keys_and_free_models_hold_nothing() -> None:
    gw, _, billing, router = await gateway()
    for creds, body in ((TEST, chat()), (LIVE, chat(model="faregate/echo"))):
        async with gw.admit(creds, body, request_id="req_x") as admission:
            await admission.complete()
    assert billing.held == {} and len(router.calls) == 2


@pytest.mark.parametrize("body", [b"not json", b"[1]", chat(messages=[1, 2]), chat(n=-1)])
async def test_a_malformed_body_is_refused_before_any_call(body: bytes) -> None:
    gw, auth, billing, router = await gateway()
    with pytest.raises(InvalidRequest):
        async with gw.admit(LIVE, body, request_id="req_x"):
            raise AssertionError("not admitted")
    assert auth.asks == [] and billing.held == {} and router.calls == []


async def test_embeddings_go_to_the_router_as_embeddings() -> None:
    gw, _, billing, router = await gateway()
    async with gw.admit(LIVE, b'{"model": "priced", "input": "hi"}', request_id="r", endpoint=Endpoint.EMBEDDINGS) as a:
        assert await a.complete() == b'{"id": "chatcmpl-1"}'
    assert list(billing.held) == ["r"] and len(router.calls) == 1


async def test_grants_admit_without_a_call_until_spent() -> None:
    gw, auth, billing, router = await gateway()
    auth.grant = AdmissionGrant(2, ("g1", "g2"), 1000, 60)
    billing.grant = FundsGrant("fg_1", 10_000_000, 1000)
    async with gw.admit(LIVE, chat(max_tokens=1), request_id="req_1") as first:
        await first.complete()
    for n in (2, 3):
        async with gw.admit(LIVE, chat(max_tokens=1), request_id=f"req_{n}") as admission:
            await admission.complete()
    assert len(auth.asks) == 1 and list(billing.held) == ["req_1"]  # the rest from the grants
    assert len(router.calls) == 3
    await gw.close()
    assert sorted(s.request_id for s in billing.spends) == ["req_2", "req_3"] and billing.ended == ["fg_1"]


async def test_a_refusal_for_a_window_the_edge_holds_a_grant_of_spends_the_grant() -> None:
    """auth counted the grant's admissions before this request reached it: refused for that
    window, the request is admitted from the grant (ADR 11), never past it."""
    gw, auth, _, _ = await gateway()
    auth.grant = AdmissionGrant(1, ("g1",), 1000, 60)
    async with gw.admit(TEST, chat(), request_id="req_1") as first:
        await first.complete()
    grant_caller, slot = gw.grants.admissions.take(key_digest(TEST.key)) or (None, "")
    assert grant_caller == CALLER and slot == "g1"
    gw.grants.admissions.release_slot(slot)
    gw.grants.admissions.install(key_digest(TEST.key), auth_admitted(AdmissionGrant(1, ("g2",), 1000, 60)))
    auth.refuse = RateLimited("rate limit exceeded: 1 requests per minute", reason=Reason.RPM_EXCEEDED)
    gw.grants.admissions._grants[key_digest(TEST.key)].left = 1
    gw.grants.admissions._grants[key_digest(TEST.key)].free = []  # no free slot: it must ask auth
    gw.grants.admissions.release_slot("g2")
    async with gw.admit(TEST, chat(), request_id="req_2") as second:
        assert second.caller == CALLER
    with pytest.raises(RateLimited):  # the grant is spent: the refusal stands
        async with gw.admit(TEST, chat(), request_id="req_3"):
            raise AssertionError("not admitted")


async def test_the_edge_keeps_only_a_digest_of_a_key() -> None:
    gw, _, _, _ = await gateway()
    async with gw.admit(LIVE, chat(), request_id="req_1") as admission:
        await admission.complete()
    assert list(gw._accounts) == [key_digest(LIVE_KEY)]
    assert all(LIVE_KEY.encode() not in digest for digest in gw._accounts)


async def test_hold_releases_are_retried_until_billing_has_them() -> None:
    sleeps = Sleeps()
    gw, _, billing, _ = await gateway(router=FakeRouter(answer=UpstreamError("down")), sleep=sleeps)
    billing.outage.left = 12  # longer than the three tries the edge used to make
    async with running(gw):
        with pytest.raises(UpstreamError):
            async with gw.admit(LIVE, chat(), request_id="req_1") as admission:
                await admission.complete()
        await settled(lambda: billing.dropped == ["req_1"])
    assert billing.outage.left == 0 and max(sleeps.delays) == 5.0  # backed off to its ceiling


async def test_funds_grant_spends_are_retried_until_billing_has_them() -> None:
    sleeps = Sleeps()
    gw, _, billing, _ = await gateway(sleep=sleeps)
    billing.grant = FundsGrant("fg_1", 10_000_000, 1000)
    async with gw.admit(LIVE, chat(max_tokens=1), request_id="req_1") as first:
        await first.complete()
    billing.outage.left = 12
    async with running(gw):
        async with gw.admit(LIVE, chat(max_tokens=1), request_id="req_2") as admission:
            await admission.complete()
        await settled(lambda: [s.request_id for s in billing.spends] == ["req_2"])
    assert billing.outage.left == 0


async def test_slot_releases_and_grant_returns_are_retried_until_auth_has_them() -> None:
    sleeps = Sleeps()
    gw, auth, _, _ = await gateway(sleep=sleeps)
    auth.grant = AdmissionGrant(3, ("g1",), 1000, 60)
    async with gw.admit(TEST, chat(), request_id="req_1") as admission:
        await admission.complete()
    auth.outage.left = 12
    gw.key_changed(CALLER.key_id)  # the grant ends: its free slot and unspent admissions go back
    async with running(gw):
        await settled(lambda: len(auth.returned) == 1)
    assert {r.slot_id for r in auth.released} == {"slot_1", "g1"}
    assert [(r.key_id, r.unused) for r in auth.returned] == [("key_1", 3)]


async def test_what_cannot_be_delivered_by_the_close_is_reported() -> None:
    gw, _, billing, _ = await gateway(router=FakeRouter(answer=UpstreamError("down")))
    billing.outage.left = 10**6
    with pytest.raises(UpstreamError):
        async with gw.admit(LIVE, chat(), request_id="req_1") as admission:
            await admission.complete()
    gw._hold_releases._sleep = Sleeps()  # type: ignore[assignment]
    flushing = asyncio.ensure_future(gw.close())
    await settled(lambda: billing.outage.left < 10**6 - 50)
    flushing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flushing


def test_a_faregate_error_is_what_every_refusal_raises() -> None:
    for refusal in (AuthenticationFailed, InsufficientBalance, PayloadTooLarge, RateLimited, UpstreamError):
        assert issubclass(refusal, FaregateError)


async def test_what_a_failed_admission_carried_is_carried_again() -> None:
    """Releases and grant returns ride on an Authenticate; if it fails, the next one carries
    them again (auth releases a slot and refunds a grant's return once)."""
    gw, auth, _, _ = await gateway()
    gw.releases.add(SlotRelease("key_1", "s_old"))
    gw.releases.add_return(GrantReturn("key_1", 2, 60, "gr_1"))
    auth.refuse = down()
    with pytest.raises(FaregateError):
        async with gw.admit(TEST, chat(), request_id="req_1"):
            raise AssertionError("not admitted")
    auth.refuse = None
    async with gw.admit(TEST, chat(), request_id="req_2") as admission:
        await admission.complete()
    assert auth.released == [SlotRelease("key_1", "s_old")]
    assert auth.returned == [GrantReturn("key_1", 2, 60, "gr_1")]
