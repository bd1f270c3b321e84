"""Hostile input through the public API (issue 22): malformed bodies are 400s naming
``param`` before they reach an upstream or its breaker; caps bound every field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from faregate import processes
from tests.conftest import fake_catalog
from tests.harness import Infra, Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/chat/completions", '{"model": "fake-model", "messages": [{"role": "user", "content": %s}]}'),
        ("/v1/chat/completions", '{"model": "fake-model", "stream": true, "messages": [%s]}'),
        ("/v1/chat/completions", '{"model": "fake-model", "messages": [{"role": "user", "content": "x", "x": %s}]}'),
        ("/v1/embeddings", '{"model": "fake-embedding", "input": %s}'),
    ],
)
@pytest.mark.parametrize("levels", [300, 1000])
def test_deeply_nested_bodies_are_400_not_500(stack: Stack, fake_upstream, path: str, raw: str, levels: int) -> None:
    key = stack.create_key(stack.create_account(credit_usd=1))
    seen = len(fake_upstream.requests)
    resp = stack.http.post(path, content=raw % deep(levels), headers={**auth(key), "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "invalid_request" and resp.json()["error"]["param"]
    assert len(fake_upstream.requests) == seen


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"n": -1}, "n"),
        ("/v1/chat/completions", {"stream_options": "x"}, "stream_options"),
        ("/v1/chat/completions", {"tools": "x"}, "tools"),
        ("/v1/chat/completions", {"messages": [1, 2]}, "messages[0]"),
        ("/v1/chat/completions", {"stream": True, "messages": [{"role": "user"}]}, "messages[0].content"),
        ("/v1/embeddings", {"input": [None]}, "input"),
        ("/v1/embeddings", {"model": "fake-model", "input": "x"}, "model"),  # a chat model
    ],
)
def test_bad_parameters_are_400_naming_param(stack: Stack, fake_upstream, path: str, body: dict, param: str) -> None:
    key = stack.create_key(stack.create_account(credit_usd=1))
    base = {"model": "fake-model", "messages": HELLO} if path.endswith("completions") else {"model": "fake-embedding"}
    seen = len(fake_upstream.requests)
    resp = stack.http.post(path, json={**base, **body}, headers=auth(key))
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request" and error["param"] == param
    assert len(fake_upstream.requests) == seen, "refused before any upstream"


def test_one_tenants_malformed_requests_do_not_open_the_circuit_for_others(stack: Stack, fake_upstream) -> None:
    """Issue 22 item 4: an upstream that answers 5xx to malformed items never sees them."""
    mallory = stack.create_key(stack.create_account(name="mallory", credit_usd=1))
    alice = stack.create_key(stack.create_account(name="alice", credit_usd=1))
    stack.admin("POST", "/admin/providers/reset", {"provider": "fake"})
    fake_upstream.set_behavior("error", status=500, times=5)  # what it would answer to them
    try:
        for _ in range(5):
            resp = stack.http.post(
                "/v1/chat/completions", json={"model": "fake-model", "messages": [1, 2]}, headers=auth(mallory)
            )
            assert resp.status_code == 400
    finally:
        fake_upstream.reset()
    health = stack.http.get("/v1/providers/health").json()["providers"]["fake"]
    assert health["status"] == "closed" and health["consecutive_failures"] == 0
    resp = stack.http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=auth(alice))
    assert resp.status_code == 200, resp.text


@pytest.fixture(scope="module")
def own_guest(infra: Infra, fake_upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own: the guest budget (per address) of the session stack is another test's."""
    catalog = fake_catalog(fake_upstream.base_url, processes.free_port())
    env = {"FAKE_UPSTREAM_KEY": "sk-fake-upstream"}
    with Stack(Path(tmp_path_factory.mktemp("input")), infra, catalog=catalog, env=env).running() as s:
        yield s


def test_the_guest_cap_bounds_max_completion_tokens_in_json_and_streams(own_guest: Stack) -> None:
    """Issue 22 item 6: the cap of 256 tokens holds whichever field asks for more."""
    body = {"model": "faregate/echo", "messages": [{"role": "user", "content": "w " * 600}]}
    resp = own_guest.http.post("/v1/chat/completions", json={**body, "max_completion_tokens": 1000})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 256
    streamed = {**body, "max_completion_tokens": 1000, "stream": True, "stream_options": {"include_usage": True}}
    with own_guest.http.stream("POST", "/v1/chat/completions", json=streamed) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    usage = [doc["usage"] for doc in map(orjson.loads, events) if doc.get("usage")]
    assert usage[-1]["completion_tokens"] == 256
