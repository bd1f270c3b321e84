"""Hostile input on the session stack: no 500s, no cross-tenant harm, limits that hold."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from faregate.db import make_engine
from services.auth.storage import key_events
from tests.harness import Stack
from tests.openai_schema import validate

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


def error_of(resp: Any, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    validate("ErrorResponse", body)
    assert body["error"]["type"] == type_
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture(scope="module")
def account(stack: Stack) -> str:
    return stack.create_account(credit_usd=5)


@pytest.fixture(scope="module")
def key(stack: Stack, account: str) -> str:
    return stack.create_key(account)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/billing/transactions?cursor=99999999999999999999", "cursor"),
        ("/v1/requests?cursor=99999999999999999999:x", "cursor"),
        ("/v1/usage?start=1e30", "start"),
        ("/v1/usage?start=inf", "start"),
        ("/v1/usage?start=nan", "start"),
        ("/v1/usage?end=-1e20", "end"),
    ],
)
def test_out_of_range_numbers_in_account_views_are_400_naming_the_param(
    stack: Stack, key: str, path: str, param: str
) -> None:
    resp = stack.http.get(path, headers={"Authorization": f"Bearer {key}"})
    assert error_of(resp, 400, "invalid_request")["param"] == param


def test_a_bare_key_without_bearer_is_401(stack: Stack, key: str) -> None:
    resp = stack.http.post(
        "/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers={"Authorization": key}
    )
    error_of(resp, 401, "invalid_auth")
    error_of(stack.http.get("/v1/balance", headers={"Authorization": key}), 401, "invalid_auth")


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/chat/completions"), ("PUT", "/v1/embeddings")])
def test_wrong_methods_on_inference_routes_are_405_with_allow(stack: Stack, method: str, path: str) -> None:
    resp = stack.http.request(method, path)
    error_of(resp, 405, "invalid_request")
    assert resp.headers["allow"] == "POST"


def _connect(stack: Stack) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)  # a bounded read, not a timed assertion
    return sock


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_streamed_body_past_the_limit_is_refused_before_it_ends(stack: Stack, key: str) -> None:
    """Chunked, no Content-Length: the 413 comes while the client still has more to send."""
    with _connect(stack) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        for _ in range(4 * 16 + 2):  # just past the 4 MiB default
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        head = _read_response(sock)  # never the terminating chunk: only the limit can answer
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_a_declared_length_past_the_limit_is_refused_before_any_body(stack: Stack, key: str) -> None:
    with _connect(stack) as sock:
        sock.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nContent-Length: 52428800\r\n\r\n"
        )
        head = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"connection: close" in head.lower()


def _rss_peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_eight_concurrent_50mb_bodies_do_not_grow_the_edge(stack: Stack, key: str) -> None:
    pid = stack.procs["edge"].pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current size
    before = _rss_peak_kb(pid)
    host, port = stack.url.removeprefix("http://").split(":")

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"y" * 1024 * 1024
        try:
            for _ in range(50):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        except ConnectionError:
            pass  # refused and closed before the whole body: the point
        try:
            head = await asyncio.wait_for(reader.read(200), 30)
        except ConnectionError:
            head = b""  # the 413 was sent, then the connection closed under the rest of the body
        writer.close()
        return head

    async def all_of_them() -> list[bytes]:
        return await asyncio.gather(*(one() for _ in range(8)))

    heads = asyncio.run(all_of_them())
    assert all(h.startswith(b"HTTP/1.1 413") or h == b"" for h in heads), heads
    grown_mb = (_rss_peak_kb(pid) - before) / 1024
    assert grown_mb < 100, f"the edge grew by {grown_mb:.0f} MB"


def test_a_test_key_cannot_revoke_or_reroute_live_keys(stack: Stack, account: str) -> None:
    live = stack.create_key(account)
    test_key = stack.create_key(account, mode="test")
    auth = {"Authorization": f"Bearer {test_key}"}
    keys = stack.http.get("/v1/keys", headers=auth).json()["data"]
    live_id = next(k["id"] for k in keys if k["mode"] == "live")
    error_of(stack.http.delete(f"/v1/keys/{live_id}", headers=auth), 403, "content_policy")
    error_of(
        stack.http.patch(f"/v1/keys/{live_id}", json={"routing_mode": "failover"}, headers=auth), 403, "content_policy"
    )
    resp = stack.http.get("/v1/balance", headers={"Authorization": f"Bearer {live}"})
    assert resp.status_code == 200, resp.text  # still live
    test_id = next(k["id"] for k in keys if k["mode"] == "test")
    other_test = stack.create_key(account, mode="test")
    assert (
        stack.http.delete(f"/v1/keys/{test_id}", headers={"Authorization": f"Bearer {other_test}"}).status_code == 200
    )


def test_a_refused_cross_tenant_revoke_writes_no_key_event(stack: Stack) -> None:
    victim = stack.create_account(name="victim")
    stack.create_key(victim)
    victim_key_id = stack.admin("GET", f"/admin/accounts/{victim}").json()["keys"][0]["id"]
    intruder = stack.create_key(stack.create_account(name="intruder"))
    resp = stack.http.delete(f"/v1/keys/{victim_key_id}", headers={"Authorization": f"Bearer {intruder}"})
    error_of(resp, 404, "not_found")

    async def events() -> list[str]:
        url = stack.env.get("FAREGATE_DATABASE_URL") or f"sqlite+aiosqlite:///{stack.home / 'auth.db'}"
        engine = make_engine(url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(select(key_events.c.event).where(key_events.c.key_id == victim_key_id))
                return [r.event for r in rows]
        finally:
            await engine.dispose()

    assert asyncio.run(events()) == ["created"]


def test_files_under_the_home_are_the_owners_alone(stack: Stack) -> None:
    made = [p for p in stack.home.rglob("*") if p.suffix in (".db", ".db-wal", ".db-shm") or p.name == "key_secret"]
    if not stack.env.get("FAREGATE_DATABASE_URL"):
        assert any(p.suffix == ".db" for p in made)
    for path in made:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is {oct(path.stat().st_mode & 0o777)}"
    for path in [p for p in stack.home.rglob("*") if p.is_dir() and p.name != "logs"]:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name}/ is {oct(path.stat().st_mode & 0o777)}"
