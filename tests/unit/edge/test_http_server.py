"""The edge's own uvicorn configuration and HotPath over a real socket: no failure breaks a
keep-alive connection."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Send

from faregate import processes
from faregate.settings import EdgeSettings
from services.edge import errors
from services.edge.app import HotPath, server_config


def _broken_app() -> HotPath:
    app = FastAPI()
    errors.install(app)

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    @app.get("/fine")
    async def fine() -> dict[str, bool]:
        return {"ok": True}

    async def hot_bug(request: Request, send: Send) -> None:
        raise RuntimeError("a bug on the hot path")

    return HotPath(app, {"/v1/hot": hot_bug})


@pytest.fixture
def server() -> Iterator[str]:
    addr = f"127.0.0.1:{processes.free_port()}"
    config = server_config(_broken_app(), EdgeSettings(), addr, lifespan=False)
    uv = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(uv.serve(),), daemon=True)
    thread.start()
    processes.wait_http_ok(f"http://{addr}/fine", None)
    try:
        yield addr
    finally:
        uv.should_exit = True
        thread.join(15)
        loop.close()


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize(
    "first", [b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /v1/hot HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"]
)
def test_a_500_leaves_the_keep_alive_connection_usable(server: str, first: bytes) -> None:
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # bounded reads
        answer = _exchange(sock, first)
        assert answer.startswith(b"HTTP/1.1 500"), answer
        assert b"internal_error" in answer
        again = _exchange(sock, b"GET /fine HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200"), again
