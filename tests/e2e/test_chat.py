"""A metered request end to end: SDK → edge → auth → router → fake upstream → NATS → ledger."""

from __future__ import annotations

import httpx
import openai
import pytest

from faregate.money import token_cost
from tests.harness import Stack, ledger, wait_for
from tests.openai_schema import validate

pytestmark = pytest.mark.e2e

PROMPT_PRICE = 1_000_000  # micro-USD per 1M tokens: fake-model costs 1 USD / 2 USD per 1M
COMPLETION_PRICE = 2_000_000


def client(stack: Stack, key: str) -> openai.OpenAI:
    return stack.sdk(key)


@pytest.fixture
def account(stack: Stack) -> tuple[str, str]:
    account_id = stack.create_account(plan="pro", credit_usd=10)
    return account_id, stack.create_key(account_id)


def usage_entries(stack: Stack, account_id: str, n: int) -> list:
    return wait_for(
        lambda: (
            [e for e in ledger(stack, account_id) if e.kind == "usage"][:n]
            if len([e for e in ledger(stack, account_id) if e.kind == "usage"]) >= n
            else None
        ),
        what=f"{n} usage ledger entries",
    )


def test_completion_is_answered_and_metered_exactly(stack: Stack, account: tuple[str, str]) -> None:
    account_id, key = account
    raw = client(stack, key).chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": "say hello to the gateway"}]
    )
    validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "fake reply to: say hello to the gateway"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-limit"] == "120"  # the pro plan's requests per minute
    assert raw.headers["x-ratelimit-remaining"] == "119"
    assert int(raw.headers["x-ratelimit-reset"]) % 60 == 0

    [entry] = usage_entries(stack, account_id, 1)
    usage = completion.usage
    assert usage is not None
    cost = token_cost(usage.prompt_tokens, usage.completion_tokens, PROMPT_PRICE, COMPLETION_PRICE)
    assert cost > 0
    assert entry.amount_micros == -cost
    assert entry.request_id == raw.headers["x-request-id"]
    assert stack.balance_usd(account_id) == pytest.approx(10 - cost / 1e6, abs=1e-9)


def test_stream_relays_chunks_and_final_usage(stack: Stack, account: tuple[str, str], fake_upstream) -> None:
    account_id, key = account
    stream = client(stack, key).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake reply to: one two three four five six"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage

    [entry] = usage_entries(stack, account_id, 1)
    assert entry.amount_micros == -token_cost(
        usage.prompt_tokens, usage.completion_tokens, PROMPT_PRICE, COMPLETION_PRICE
    )


def test_stream_without_include_usage_still_meters_and_hides_usage(
    stack: Stack, account: tuple[str, str], fake_upstream
) -> None:
    account_id, key = account
    before = len(fake_upstream.requests)
    chunks = list(
        client(stack, key).chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "a b c"}],
            stream=True,
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "the usage-only chunk must be stripped"
    sent = fake_upstream.requests[before]["body"]
    assert sent["stream_options"] == {"include_usage": True}, "the router must ask the upstream for usage"
    assert sent["model"] == "fake-upstream-model", "the public id is rewritten to the provider's"
    [entry] = usage_entries(stack, account_id, 1)
    assert entry.amount_micros < 0


def test_sse_wire_format_ends_with_done(stack: Stack, account: tuple[str, str]) -> None:
    _, key = account
    with httpx.stream(
        "POST",
        f"{stack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("body", "streamed"),
    [
        (b'{"model": "fake-model", "stream": false, "messages": [{"role": "user", "content": "hi"}]}', False),
        (b'{"model": "fake-model", "stream": null, "messages": [{"role": "user", "content": "hi"}]}', False),
        # a key spelled with a JSON escape is still "stream": the edge reads the body as JSON
        (b'{"model": "fake-model", "\\u0073tream": true, "messages": [{"role": "user", "content": "hi"}]}', True),
    ],
    ids=["stream false", "stream null", "escaped stream key"],
)
def test_the_answer_has_the_shape_the_body_asked_for(
    stack: Stack, account: tuple[str, str], body: bytes, streamed: bool
) -> None:
    _, key = account
    resp = httpx.post(
        f"{stack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        content=body,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    if streamed:
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.text.rstrip().endswith("data: [DONE]")
    else:
        assert resp.headers["content-type"].startswith("application/json")
        validate("CreateChatCompletionResponse", resp.json())


def test_a_stream_field_that_is_not_a_boolean_is_refused(stack: Stack, account: tuple[str, str]) -> None:
    _, key = account
    resp = httpx.post(
        f"{stack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "fake-model", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "stream"


def test_each_request_gets_exactly_one_ledger_entry(stack: Stack, account: tuple[str, str]) -> None:
    account_id, key = account
    c = client(stack, key)
    ids = set()
    for i in range(5):
        raw = c.chat.completions.with_raw_response.create(
            model="fake-model",
            messages=[{"role": "user", "content": f"request number {i}"}],
            stream=bool(i % 2),
        )
        if i % 2:
            list(raw.parse())
        ids.add(raw.headers["x-request-id"])
    entries = usage_entries(stack, account_id, 5)
    assert {e.request_id for e in entries} == ids
    total = -sum(e.amount_micros for e in entries)
    assert stack.balance_usd(account_id) == pytest.approx(10 - total / 1e6, abs=1e-9)


def test_echo_model_with_a_test_key_is_free(stack: Stack) -> None:
    account_id = stack.create_account(credit_usd=1)
    key = stack.create_key(account_id, mode="test")
    completion = client(stack, key).chat.completions.create(
        model="faregate/echo", messages=[{"role": "user", "content": "ping pong"}]
    )
    assert completion.choices[0].message.content == "ping pong"
    [entry] = usage_entries(stack, account_id, 1)
    assert entry.amount_micros == 0
    assert stack.balance_usd(account_id) == 1.0


def test_test_key_cannot_call_a_live_model(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(), mode="test")
    with pytest.raises(openai.PermissionDeniedError):
        client(stack, key).chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])


def test_models_list_works_with_the_sdk_and_is_enriched(stack: Stack) -> None:
    resp = stack.http.get("/v1/models")
    validate("ListModelsResponse", resp.json())
    models = {m.id: m for m in client(stack, "unused").models.list()}
    assert "faregate/echo" in models and "fake-model" in models
    fake = models["fake-model"].model_dump()
    assert fake["pricing"]["prompt"] == 1.0 and fake["pricing"]["completion"] == 2.0
    assert fake["context_length"] == 16000
    assert fake["categories"] == ["general", "cheap"]
    assert models["faregate/echo"].model_dump()["test"] is True


def test_health_reports_every_service(stack: Stack) -> None:
    body = stack.http.get("/health").json()
    assert body["status"] == "ok"
    assert body["services"] == {s: "SERVING" for s in ("edge", "auth", "router", "billing")}
    assert body["metering"]["consumer_connected"] is True


def test_a_client_that_goes_away_mid_stream_stops_the_upstream_and_is_metered_for_what_it_got(
    stack: Stack, account: tuple[str, str], fake_upstream
) -> None:
    """The edge notices the client leave (not only at its next write): the router's call is
    cancelled, the upstream response closed, and the request is metered as cancelled, for
    the chunks relayed so far rather than the 60 the upstream would have sent."""
    _, key = account
    fake_upstream.set_behavior("ok", model="fake-upstream-model", chunks=60, chunk_interval=0.1)
    try:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream(
            "POST", f"{stack.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as s:
            assert s.status_code == 200
            next(s.iter_lines())  # the first event arrived; then the client hangs up
        record = wait_for(
            lambda: next(
                (
                    r
                    for r in stack.http.get("/v1/requests", headers={"Authorization": f"Bearer {key}"}).json()["data"]
                    if r["stream"]
                ),
                None,
            ),
            what="the cancelled stream's request record",
        )
    finally:
        fake_upstream.reset()
    assert record["status"] == "client_cancelled"
    assert record["completion_tokens"] < 30  # stopped early, not after the 60 chunks
