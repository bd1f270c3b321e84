"""The drill's clients: mixed JSON and streamed chat completions from N concurrent workers.

Each request carries its number in the prompt ("drill <i>"), which the fake upstream logs,
so the upstream's log, the client's answer and the ledger can be joined. A complete answer
is a 200 whose JSON has ``choices``, or a stream that reached ``data: [DONE]``; anything
else (an error status, a cut stream, a dropped connection) is not answered.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import httpx

from faregate.money import token_cost

# The drill's priced models and their prices (micro-USD per 1M tokens), as tests.conftest's
# fake_catalog declares them: one behind the fake's OpenAI API, one behind its Anthropic API.
MODELS = {"fake-model": (1_000_000, 2_000_000), "fake-claude": (3_000_000, 15_000_000)}
MAX_TOKENS = 16
STALL_S = 60.0  # no complete answer for this long: the stack is broken, stop the load
BACKOFF_S = 0.25  # after a failure, as a client would while a service restarts


@dataclass
class Reply:
    i: int
    model: str
    stream: bool
    status: int  # 0: transport error (no status)
    request_id: str
    complete: bool
    started: float  # time.monotonic()
    ended: float


@dataclass
class Load:
    """``run`` sends at least ``n`` requests, and goes on until ``faults_done`` is set
    (at most ``cap`` requests, and not past a stall of ``STALL_S``)."""

    url: str
    key: str
    n: int
    clients: int
    cap: int
    faults_done: threading.Event = field(default_factory=threading.Event)
    replies: list[Reply] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    worst_case_micros: int = 0  # the dearest request's worst case, priced as the edge does
    finished: threading.Event = field(default_factory=threading.Event)
    stalled: bool = False
    last_answer_started: float = 0.0  # when the request of the latest complete answer was sent
    _last_answer: float = field(default_factory=time.monotonic)

    def body(self, i: int) -> tuple[str, bool, bytes]:
        model = ("fake-model", "fake-claude")[i % 2]
        stream = i % 3 == 0
        doc = {
            "model": model,
            "stream": stream,
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"drill {i} please answer in a few words"}],
        }
        raw = json.dumps(doc).encode()
        prompt_price, completion_price = MODELS[model]
        # The edge's rule: every token is at least one byte, so the body's size bounds the prompt.
        self.worst_case_micros = max(
            self.worst_case_micros, token_cost(len(raw), MAX_TOKENS, prompt_price, completion_price)
        )
        return model, stream, raw

    def _more(self) -> bool:
        if self.sent >= self.cap or time.monotonic() - self._last_answer > STALL_S:
            self.stalled = self.sent < self.n or not self.faults_done.is_set()
            return False
        return self.sent < self.n or not self.faults_done.is_set()

    async def _one(self, client: httpx.AsyncClient, i: int) -> Reply:
        model, stream, raw = self.body(i)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        started = time.monotonic()
        status, rid, complete = 0, "", False
        try:
            async with client.stream("POST", "/v1/chat/completions", content=raw, headers=headers) as r:
                status, rid = r.status_code, r.headers.get("x-request-id", "")
                if stream:
                    async for line in r.aiter_lines():
                        if line.strip() == "data: [DONE]":
                            complete = status == 200
                else:
                    body = await r.aread()
                    complete = status == 200 and "choices" in json.loads(body)
        except (httpx.HTTPError, ValueError):
            complete = False  # a transport error, or a body cut mid-JSON
        return Reply(i, model, stream, status, rid, complete, started, time.monotonic())

    async def _worker(self, client: httpx.AsyncClient) -> None:
        while self._more():
            i = self.sent
            self.sent += 1
            reply = await self._one(client, i)
            self.replies.append(reply)
            if reply.complete:
                self.answered += 1
                self._last_answer = reply.ended
                self.last_answer_started = max(self.last_answer_started, reply.started)
            else:
                await asyncio.sleep(BACKOFF_S)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits) as client:
                await asyncio.gather(*(self._worker(client) for _ in range(self.clients)))
        finally:
            self.finished.set()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self.run()), name="drill-load", daemon=True)
        thread.start()
        return thread
