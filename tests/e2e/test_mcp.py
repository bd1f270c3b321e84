"""MCP end to end with the official SDK's own client: both transports against a real stack,
tools through the same gateway core as REST (metered alike), errors as tool results."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from faregate import processes
from faregate.money import token_cost
from tests.harness import Stack, ledger, wait_for

pytestmark = pytest.mark.e2e

MESSAGES = [{"role": "user", "content": "say hello over MCP"}]


@contextlib.asynccontextmanager
async def streamable(
    stack: Stack, key: str | None, path: str = "/v1/mcp", source: str | None = None
) -> AsyncIterator[ClientSession]:
    """A session over Streamable HTTP; ``source`` is the local address to connect from (the
    guest sandbox's budget is per client address, shared with the other tests' guests)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx2.AsyncHTTPTransport(local_address=source) if source else None
    async with httpx2.AsyncClient(headers=headers, timeout=30, transport=transport) as http:
        async with streamable_http_client(f"{stack.url}{path}", http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


@contextlib.asynccontextmanager
async def over_sse(stack: Stack, key: str) -> AsyncIterator[ClientSession]:
    async with sse_client(f"{stack.url}/v1/mcp/sse", headers={"Authorization": f"Bearer {key}"}) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def structured(result: Any) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def error_type(result: Any) -> str:
    """The Faregate error type an is_error result names (after the SDK's 'Error executing tool …:')."""
    assert result.is_error
    return str(result.content[0].text).split(": ")[1]


@pytest.fixture
def account(stack: Stack) -> tuple[str, str]:
    account_id = stack.create_account(plan="pro", credit_usd=10)
    return account_id, stack.create_key(account_id)


async def test_tools_are_listed_with_precise_schemas(stack: Stack, account: tuple[str, str]) -> None:
    async with streamable(stack, account[1]) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"chat_completion", "list_models", "get_balance", "get_usage", "list_requests", "pick_model"}
    chat = tools["chat_completion"].input_schema
    assert set(chat["required"]) == {"model", "messages"}
    assert tools["chat_completion"].output_schema is not None


async def test_a_chat_completion_over_mcp_is_metered_like_rest(stack: Stack, account: tuple[str, str]) -> None:
    account_id, key = account
    async with streamable(stack, key) as session:
        answer = structured(await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES}))
    assert answer["content"] == "fake reply to: say hello over MCP"
    rest = httpx.post(
        f"{stack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "fake-model", "messages": MESSAGES},
    ).json()
    assert (answer["prompt_tokens"], answer["completion_tokens"]) == (
        rest["usage"]["prompt_tokens"],
        rest["usage"]["completion_tokens"],
    )
    cost = token_cost(answer["prompt_tokens"], answer["completion_tokens"], 1_000_000, 2_000_000)
    entries = wait_for(
        lambda: u if len(u := [e for e in ledger(stack, account_id) if e.kind == "usage"]) >= 2 else None,
        what="two usage entries",
    )
    by_request = {e.request_id: e.amount_micros for e in entries}
    assert by_request[answer["request_id"]] == -cost  # to the micro-USD, as the REST request
    assert sorted(by_request.values()) == [-cost, -cost]
    log = httpx.get(f"{stack.url}/v1/requests", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    endpoints = {r["id"]: r["endpoint"] for r in log}
    assert endpoints[answer["request_id"]] == "mcp:chat.completions"  # the usage record says how it came
    assert sorted(endpoints.values()) == ["chat.completions", "mcp:chat.completions"]


async def test_the_account_tools_answer_for_the_calling_key_only(stack: Stack, account: tuple[str, str]) -> None:
    account_id, key = account
    async with streamable(stack, key, path="/v1/mcp/") as session:  # a trailing slash: no redirect
        balance = structured(await session.call_tool("get_balance", {}))
        models = structured(await session.call_tool("list_models", {}))
        pick = structured(await session.call_tool("pick_model", {"task": "write python code"}))
        requests = structured(await session.call_tool("list_requests", {"limit": 5}))
        usage = structured(await session.call_tool("get_usage", {"group_by": "model"}))
    assert balance["balance_usd"] == pytest.approx(stack.balance_usd(account_id))
    assert balance["plan"] == "pro"
    assert any(m["id"] == "fake-model" for m in models["result"])
    assert pick["model"]
    assert isinstance(requests["result"], list) and isinstance(usage["result"], list)


async def test_the_sse_transport_serves_the_same_tools(stack: Stack, account: tuple[str, str]) -> None:
    async with over_sse(stack, account[1]) as session:
        answer = structured(await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES}))
    assert answer["content"].startswith("fake reply to")


async def test_errors_are_tool_results_naming_their_type(stack: Stack) -> None:
    broke = stack.create_account(plan="pro", credit_usd=0)
    key = stack.create_key(broke)
    async with streamable(stack, key) as session:
        poor = await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES})
        missing = await session.call_tool("chat_completion", {"model": "no-such-model", "messages": MESSAGES})
    assert error_type(poor) == "insufficient_balance"
    assert error_type(missing) == "not_found" and "model_not_found" in missing.content[0].text


def test_a_bad_key_is_a_401_in_openai_shape_without_the_key(stack: Stack) -> None:
    bad = "gw_live_" + "x" * 32
    reply = httpx.post(
        f"{stack.url}/v1/mcp",
        headers={"Authorization": f"Bearer {bad}", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["type"] == "invalid_auth"
    assert bad not in reply.text


def test_a_foreign_browser_origin_is_refused(stack: Stack) -> None:
    reply = httpx.post(
        f"{stack.url}/v1/mcp",
        headers={"Origin": "https://evil.example", "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert reply.status_code == 403 and reply.json()["error"]["type"] == "content_policy"


async def test_the_guest_sandbox_chats_with_test_models_only(stack: Stack) -> None:
    own_address = f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
    async with streamable(stack, None, source=own_address) as session:
        echo = structured(await session.call_tool("chat_completion", {"model": "faregate/echo", "messages": MESSAGES}))
        priced = await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES})
        balance = await session.call_tool("get_balance", {})
    assert echo["content"] == "say hello over MCP"
    assert error_type(priced) == "content_policy"
    assert error_type(balance) == "invalid_auth"


async def test_two_edge_replicas_answer_one_clients_requests_alternately(
    stack: Stack, account: tuple[str, str]
) -> None:
    """Stateless: no session to find, so requests may land on any replica."""
    port = processes.free_port()
    second = stack.launcher.service("edge", {"FAREGATE_HTTP_ADDR": f"127.0.0.1:{port}"})
    try:
        processes.wait_http_ok(f"http://127.0.0.1:{port}/health", second)
        urls = [f"{stack.url}/v1/mcp", f"http://127.0.0.1:{port}/v1/mcp"]
        headers = {"Authorization": f"Bearer {account[1]}", "Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "1"},
                },
            }
            assert (await http.post(urls[1], json=init)).status_code == 200
            answers = []
            for n in range(4):  # alternately on each replica, no session id carried
                call = {
                    "jsonrpc": "2.0",
                    "id": n + 1,
                    "method": "tools/call",
                    "params": {"name": "get_balance", "arguments": {}},
                }
                reply = await http.post(urls[n % 2], json=call, headers={"MCP-Protocol-Version": "2025-06-18"})
                assert reply.status_code == 200, reply.text
                answers.append(reply.json()["result"]["structuredContent"]["plan"])
        assert answers == ["pro"] * 4
    finally:
        second.stop()


async def test_the_stdio_bridge_relays_a_stdio_client(stack: Stack, account: tuple[str, str]) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(Path(__file__).parents[2] / "mcp_stdio_bridge.py"), f"{stack.url}/v1/mcp"],
        env={**os.environ, "FAREGATE_API_KEY": account[1]},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        answer = structured(await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES}))
        balance = structured(await session.call_tool("get_balance", {}))
    assert answer["content"].startswith("fake reply to") and balance["plan"] == "pro"


async def test_a_rate_limited_call_says_how_long_to_wait(stack: Stack) -> None:
    account_id = stack.create_account(plan="pro", credit_usd=1)
    key = stack.create_key(account_id)
    key_id = stack.admin("GET", f"/admin/accounts/{account_id}").json()["keys"][0]["id"]
    stack.admin("PATCH", f"/admin/keys/{key_id}", {"rpm": 1})
    async with streamable(stack, key) as session:
        first = await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES})
        second = await session.call_tool("chat_completion", {"model": "fake-model", "messages": MESSAGES})
    assert not first.is_error
    assert error_type(second) == "rate_limited"
    assert re.search(r"retry after \d+ s", second.content[0].text)
