"""A lean fake OpenAI-compatible upstream for the benchmark: fixed answers, no logic.

Non-streaming: one fixed chat.completion with usage. Streaming: ``--chunks`` chunks (sent
back to back, one write each), the finish chunk, a usage chunk when asked, and ``[DONE]``;
with ``--interval`` one chunk per interval instead (the slow streams). Run alone first to
show it is not the bottleneck.

It is a bare asyncio protocol on uvloop (HTTP/1.1 keep-alive, Content-Length requests,
chunked answers), not a web framework: the fake must cost far less per request and per
chunk than any gateway measured through it. Slow streams are driven by one timer wheel (ten
slots a tick) rather than a sleeping task each, so thousands of them cost the fake little
and stay spread in time as independent streams would be.

    python -m bench.upstream --port 9100 [--chunks 20] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import orjson
import uvloop

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-upstream",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
)
SLOTS = 10  # a slow stream's chunks go out in one of ten slots per interval, by when it began


def _chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    doc = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-upstream",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if delta or finish else [],
        "usage": usage,
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Answers:
    """The bytes of every answer, made once."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.json = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(COMPLETION)
            + COMPLETION
        )
        self.stream_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.role = _chunked(_chunk({"role": "assistant", "content": ""}))
        self.tokens = [_chunked(_chunk({"content": f"tok{i} "})) for i in range(chunks)]
        usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        finish, done = _chunked(_chunk({}, "stop")), _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.end = {True: finish + _chunked(_chunk({}, usage=usage)) + done, False: finish + done}


class Wheel:
    """Slow streams: every interval / SLOTS seconds the streams in the current slot each send
    their next chunk."""

    def __init__(self, answers: Answers, interval: float) -> None:
        self._answers = answers
        self._tick = interval / SLOTS
        self._slots: list[dict[Upstream, int]] = [{} for _ in range(SLOTS)]
        self._at = 0

    def add(self, conn: Upstream) -> None:
        if not self._answers.chunks:
            conn.end_stream()
            return
        self._slots[self._at][conn] = 0  # its first token goes out one interval from now

    def drop(self, conn: Upstream) -> None:
        for slot in self._slots:
            slot.pop(conn, None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self._tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self._at = (self._at + 1) % SLOTS
            slot = self._slots[self._at]
            finished = []
            for conn, sent in slot.items():
                conn.write(self._answers.tokens[sent])
                slot[conn] = sent = sent + 1
                if sent == self._answers.chunks:
                    conn.end_stream()
                    finished.append(conn)
            for conn in finished:
                del slot[conn]


class Upstream(asyncio.Protocol):
    """One client connection: requests in (Content-Length bodies), answers out."""

    def __init__(self, answers: Answers, wheel: Wheel | None) -> None:
        self._answers = answers
        self._wheel = wheel
        self._buf = b""
        self._transport: Any = None  # uvloop's TCPTransport
        self._usage = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._wheel is not None:
            self._wheel.drop(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            head = self._buf[:end].lower()
            at, length = head.find(b"content-length:"), 0
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else len(head)])
            if len(self._buf) < end + 4 + length:
                return
            body, self._buf = self._buf[end + 4 : end + 4 + length], self._buf[end + 4 + length :]
            self._answer(orjson.loads(body) if body else {})

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def end_stream(self) -> None:
        self.write(self._answers.end[self._usage])

    def _answer(self, body: dict[str, Any]) -> None:
        a = self._answers
        if not body.get("stream"):
            self.write(a.json)
            return
        self._usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.write(a.stream_head)
        self.write(a.role)
        if self._wheel is not None:
            self._wheel.add(self)
            return
        for token in a.tokens:  # back to back, one write each
            self.write(token)
        self.end_stream()


async def serve(port: int, chunks: int, interval: float) -> None:
    answers = Answers(chunks)
    wheel = Wheel(answers, interval) if interval else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(answers, wheel), "127.0.0.1", port, backlog=4096)
    async with server:
        if wheel is not None:
            await wheel.run()
        else:
            await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # the bench stops it with SIGINT
        uvloop.run(serve(args.port, args.chunks, args.interval))


if __name__ == "__main__":
    main()
