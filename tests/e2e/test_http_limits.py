"""The edge's HTTP limits with slow and oversized clients, the admin API on its own address
and wrong admin tokens throttled: a stack with the limits set small (its own settings)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faregate import processes
from tests.harness import Infra, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def limited(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    admin_addr = f"127.0.0.1:{processes.free_port()}"
    env = {
        "FAREGATE_READ_TIMEOUT": "1",
        "FAREGATE_KEEPALIVE_TIMEOUT": "1",
        "FAREGATE_MAX_HEADER_BYTES": "4096",
        "FAREGATE_MAX_REQUEST_LINE_BYTES": "1024",
        "FAREGATE_ADMIN_ADDR": admin_addr,
        "FAREGATE_ADMIN_FAILURES_PER_MINUTE": "3",
    }
    with Stack(Path(tmp_path_factory.mktemp("limited")), infra, env=env).running() as s:
        yield s


def _sock(stack: Stack) -> socket.socket:
    host, port = stack.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20)  # bounded reads; the server's timeouts are 1 s


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data  # everything until the server closes


def test_a_header_over_the_limit_is_431(limited: Stack) -> None:
    with _sock(limited) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1024 * 1024 + b"\r\n\r\n")
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"invalid_request"' in answer


def test_many_small_headers_over_the_limit_are_431(limited: Stack) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(200))
    with _sock(limited) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 431")


def test_a_request_line_over_the_limit_is_414(limited: Stack) -> None:
    with _sock(limited) as sock:
        sock.sendall(b"GET /v1/models?q=" + b"q" * 4096 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 414")


def test_a_body_slower_than_the_read_timeout_is_408_and_closed(limited: Stack) -> None:
    with _sock(limited) as sock:
        sock.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model"')
        answer = _answer(sock)  # ends only because the server closes
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_headers_slower_than_the_read_timeout_are_408(limited: Stack) -> None:
    with _sock(limited) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 408")


def test_an_idle_connection_is_closed(limited: Stack) -> None:
    with _sock(limited) as sock:
        assert _answer(sock) == b""  # never sent a request: closed by the keep-alive timeout
    with _sock(limited) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")  # and closed after the answer, idle


def test_the_admin_api_is_served_only_on_its_own_address(limited: Stack) -> None:
    token = {"Authorization": f"Bearer {limited.admin_token}"}
    public = limited.http.post("/admin/accounts", json={"name": "a"}, headers=token)
    assert public.status_code == 404, public.text
    admin_url = f"http://{limited.env['FAREGATE_ADMIN_ADDR']}"
    with httpx.Client(base_url=admin_url, timeout=30) as admin:
        created = admin.post("/admin/accounts", json={"name": "a"}, headers=token)
        assert created.status_code == 201, created.text
        assert admin.get("/v1/models").status_code == 404
    assert limited.http.get("/v1/models").status_code == 200


def test_wrong_admin_tokens_are_throttled_per_address(limited: Stack) -> None:
    admin_url = f"http://{limited.env['FAREGATE_ADMIN_ADDR']}"
    with httpx.Client(base_url=admin_url, timeout=30) as admin:
        wrong = {"Authorization": "Bearer not-the-token"}
        statuses = [admin.get("/admin/accounts/acc_x", headers=wrong).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        throttled = admin.get("/admin/accounts/acc_x", headers=wrong)
        assert throttled.status_code == 429, throttled.text
        assert throttled.json()["error"]["type"] == "rate_limited"
        assert int(throttled.headers["retry-after"]) >= 1
