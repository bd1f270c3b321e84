"""POST /v1/embeddings through auth, funds, routing and metering (input tokens only)."""

from __future__ import annotations

import openai
import pytest

from faregate.money import token_cost
from tests.harness import Stack, ledger, wait_for
from tests.openai_schema import validate

pytestmark = pytest.mark.e2e


def test_embeddings_with_the_sdk_are_metered_on_input_tokens(stack: Stack) -> None:
    acc = stack.create_account(credit_usd=2)
    key = stack.create_key(acc)
    client = stack.sdk(key)
    one = client.embeddings.with_raw_response.create(
        model="fake-embedding", input="a single sentence here", encoding_format="float"
    )
    validate("CreateEmbeddingResponse", one.http_response.json())
    batch = client.embeddings.create(model="fake-embedding", input=["first text", "second text", "third"])
    assert [d.index for d in batch.data] == [0, 1, 2] and all(len(d.embedding) == 8 for d in batch.data)

    def two_entries() -> list | None:
        usage = [e for e in ledger(stack, acc) if e.kind == "usage"]
        return usage if len(usage) == 2 else None

    entries = wait_for(two_entries, what="two usage entries")
    by_request = {e.request_id: e.amount_micros for e in entries}
    tokens = one.parse().usage.prompt_tokens
    assert by_request[one.headers["x-request-id"]] == -token_cost(tokens, 0, 1_000_000, 2_000_000)
    rows = stack.http.get("/v1/requests", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert {r["endpoint"] for r in rows} == {"embeddings"} and all(r["completion_tokens"] == 0 for r in rows)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "fake-embedding"},
        {"model": "fake-embedding", "input": ""},
        {"model": "fake-embedding", "input": []},
        {"input": "x"},
    ],
)
def test_bad_embeddings_requests_are_400(stack: Stack, body: dict) -> None:
    key = stack.create_key(stack.create_account(credit_usd=1))
    resp = stack.http.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request"


def test_embeddings_unknown_model_and_no_key(stack: Stack) -> None:
    key = stack.create_key(stack.create_account(credit_usd=1))
    with pytest.raises(openai.NotFoundError):
        stack.sdk(key).embeddings.create(model="nope", input="x")
    resp = stack.http.post("/v1/embeddings", json={"model": "fake-embedding", "input": "x"})
    assert resp.status_code == 403  # the keyless guest may not use a live model
