"""A fake LLM upstream for tests: OpenAI-compatible and Anthropic-compatible (third parties, so faking is fine).

It runs an aiohttp app on its own event loop in a daemon thread. Tests steer it with ``set_behavior``
and read what the gateway sent in ``requests``::

    with FakeUpstream() as fake:
        fake.set_behavior("error", status=503, times=1)  # the next request fails, then "ok" again
        ...  # point the gateway at fake.base_url (OpenAI) or fake.anthropic_base_url (Anthropic)
        assert fake.requests[-1]["body"]["model"] == "upstream-model"

Answers are deterministic: "fake reply to: " + the last user message, cut to ``max_tokens`` words;
tokens are whitespace-separated words. With ``tools`` and "weather" in the last user message it
calls the first tool with ``{"city": "Paris"}``. CLI: ``python -m tests.fakes.upstream --port 9999``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import hashlib
import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from aiohttp import web

Kind = Literal["openai", "anthropic"]
Event = tuple[str | None, Any, bool]  # SSE event name, data, whether it is a content chunk
MODES = frozenset({"ok", "error", "stall", "slow", "disconnect"})
TOOL_ARGUMENTS = '{"city": "Paris"}'
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Behavior:
    """How the fake answers; see ``FakeUpstream.set_behavior``."""

    mode: str = "ok"
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    chunks: int = 5
    chunk_interval: float = 0.0
    fail_after_chunks: int | None = None
    include_usage: bool = True
    times: int | None = None


@dataclass(frozen=True)
class Answer:
    """What the fake says to one request: a text, or a call of the tool named ``tool``."""

    text: str
    tool: str | None
    prompt_tokens: int
    completion_tokens: int

    def pieces(self, n: int) -> list[str]:
        """The text (or the tool arguments) in ``n`` pieces, fewer if too short, that concatenate back."""
        if self.tool:
            size = -(-len(TOOL_ARGUMENTS) // max(1, n))
            return [TOOL_ARGUMENTS[i : i + size] for i in range(0, len(TOOL_ARGUMENTS), size)]
        words = self.text.split()
        n = max(1, min(n, len(words)))
        parts = [" ".join(words[i * len(words) // n : (i + 1) * len(words) // n]) for i in range(n)]
        return [(" " if i else "") + part for i, part in enumerate(parts)]


def _text(content: Any) -> str:
    """The text of a message content: a string, or its text parts (tool results included)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict)]
        texts = (p["text"] if isinstance(p.get("text"), str) else _text(p.get("content")) for p in parts)
        return " ".join(t for t in texts if t)
    return ""


def _answer(body: dict[str, Any], kind: Kind) -> Answer:
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    texts = [_text(m.get("content")) for m in messages]
    if kind == "anthropic":
        texts.append(_text(body.get("system")))  # OpenAI has it among the messages
    prompt = max(1, sum(len(t.split()) for t in texts))
    tool = _tool_to_call(body, messages, kind)
    if tool:
        return Answer("", tool, prompt, len(TOOL_ARGUMENTS.split()))
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    words = ("fake reply to: " + _text(last.get("content"))).split()
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        words = words[:limit]
    return Answer(" ".join(words), None, prompt, len(words))


def _tool_to_call(body: dict[str, Any], messages: list[dict[str, Any]], kind: Kind) -> str | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools or not isinstance(tools, list) or not isinstance(tools[0], dict):
        return None
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    last = messages[-1] if messages else {}
    content = last.get("content")
    if last.get("role") != "user":
        return None  # answering an OpenAI tool result: say something, or the client would loop forever
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "tool_result" for p in content):
        return None  # the same for Anthropic
    if not re.search(r"\bweather\b", _text(content), re.IGNORECASE):
        return None
    name = tools[0].get("function", {}).get("name") if kind == "openai" else tools[0].get("name")
    return str(name or "tool")


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), content_type="application/json", headers=headers)


def _error(kind: Kind, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if kind == "anthropic":
        error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return _json({"type": "error", "error": {"type": error_type, "message": message}}, status, headers)
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return _json({"error": {"message": message, "type": error_type, "param": None, "code": code}}, status, headers)


def _drop(request: web.Request) -> None:
    """Close the connection abruptly: what is already written is flushed, nothing more is sent."""
    if request.transport is not None:
        request.transport.close()


class FakeUpstream:
    """A fake LLM upstream: the OpenAI API under ``base_url``, Anthropic's under ``anthropic_base_url``.

    ``api_key``: if given, OpenAI routes require ``Authorization: Bearer <api_key>`` and Anthropic's
    ``x-api-key: <api_key>`` (401 otherwise). ``models``: what ``GET /v1/models`` lists.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        models: tuple[str, ...] = ("fake-upstream-model",),
    ) -> None:
        self.host, self.port, self.api_key, self.models = host, port, api_key, models
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "headers", "body"}, in arrival order
        # Every answer the fake served, in order: {"n", "request_id", "prompt", "stream", "usage"}.
        # The gateway sends no request id upstream today, so "request_id" is None and "n" (the
        # count) with "prompt" (the last user message) identify the request (the fault drill's log).
        self.served: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._global = Behavior()
        self._per_model: dict[str, Behavior] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()  # set (then replaced) to release stalled requests; loop thread only

    @property
    def base_url(self) -> str:
        return f"http://{self._client_host}:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://{self._client_host}:{self.port}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    # -- behaviour (any thread) ---------------------------------------------------------------

    def set_behavior(
        self,
        mode: str,
        *,
        model: str | None = None,
        status: int = 500,
        retry_after: float | None = None,
        delay: float = 0.0,
        chunks: int = 5,
        chunk_interval: float = 0.0,
        fail_after_chunks: int | None = None,
        include_usage: bool = True,
        times: int | None = None,
    ) -> None:
        """Answer requests for ``model`` (None: for every model without its own behaviour) like ``mode``.

        ok: a normal answer. error: HTTP ``status`` with an error body (and ``Retry-After``).
        stall: no answer until ``reset`` or ``stop``. slow: wait ``delay`` seconds, then answer.
        disconnect: close the connection without answering. Streams send ``chunks`` content chunks
        ``chunk_interval`` seconds apart, or drop the connection after ``fail_after_chunks`` of them.
        ``include_usage=False`` omits usage everywhere. ``times``: only the next N requests, then "ok".
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}, not {mode!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1")
        behavior = Behavior(
            mode, status, retry_after, delay, max(1, chunks), chunk_interval, fail_after_chunks, include_usage, times
        )
        with self._lock:
            if model is None:
                self._global = behavior
            else:
                self._per_model[model] = behavior

    def reset(self) -> None:
        """Back to "ok" for every model, and release stalled requests (they get a 504). Keeps ``requests``."""
        with self._lock:
            self._global = Behavior()
            self._per_model.clear()
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._release_stalled)

    def _take(self, model: str) -> Behavior:
        with self._lock:
            behavior = self._per_model.get(model, self._global)
            if behavior.times is not None:
                left = replace(behavior, times=behavior.times - 1) if behavior.times > 1 else Behavior()
                if model in self._per_model:
                    self._per_model[model] = left
                else:
                    self._global = left
            return behavior

    def _release_stalled(self) -> None:
        self._release.set()
        self._release = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Serve from a daemon thread; returns once listening (``port`` is then the real one)."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                loop.close()
                ready.set_exception(exc)
                return
            self._loop = loop
            ready.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
        self._thread.start()
        try:
            ready.result(timeout=10)
        except BaseException:
            self._thread = None
            raise
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner, self.port = runner, runner.addresses[0][1]

    def stop(self) -> None:
        """Stop serving: stalled requests are released, responses still in flight cut after a second."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = self._runner = None

    async def _shutdown(self) -> None:
        self._release_stalled()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers (loop thread) ---------------------------------------------------------------

    def _record(self, request: web.Request, body: Any) -> None:
        entry = {"method": request.method, "path": request.path, "headers": dict(request.headers), "body": body}
        self.requests.append(entry)

    def _log_served(self, request: web.Request, body: dict[str, Any], a: Answer) -> None:
        last = next((m for m in reversed(body["messages"]) if isinstance(m, dict) and m.get("role") == "user"), {})
        self.served.append(
            {
                "n": len(self.served) + 1,
                "request_id": request.headers.get("X-Request-Id"),
                "prompt": _text(last.get("content")),
                "stream": bool(body.get("stream")),
                "usage": {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens},
            }
        )

    def _authorized(self, request: web.Request, kind: Kind) -> bool:
        if self.api_key is None:
            return True
        if kind == "anthropic":
            return request.headers.get("x-api-key") == self.api_key
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _admit(self, request: web.Request, kind: Kind) -> tuple[dict[str, Any], Behavior] | web.Response:
        """Record, check, apply the behaviour: a response to send now, or the body and behaviour to answer."""
        try:
            body = await request.json(loads=orjson.loads)
        except ValueError:
            body = None
        self._record(request, body)
        if not self._authorized(request, kind):
            return _error(kind, 401, "invalid api key for the fake upstream")
        if not isinstance(body, dict) or not isinstance(body.get("messages", []), list):
            return _error(kind, 400, "the body must be a JSON object (and messages a list)")
        if kind == "anthropic" and "anthropic-version" not in request.headers:
            return _error(kind, 400, "anthropic-version: header is required")
        b = self._take(str(body.get("model", "")))
        if b.mode == "error":
            headers = {"Retry-After": f"{b.retry_after:g}"} if b.retry_after is not None else None
            return _error(kind, b.status, f"fake upstream error {b.status}", headers)
        if b.mode == "stall":
            await self._release.wait()
            return _error(kind, 504, "stalled request released")
        if b.mode == "slow":
            await asyncio.sleep(b.delay)
        if b.mode == "disconnect":
            _drop(request)
            return web.Response()  # writing it fails quietly: the client gets nothing
        return body, b

    async def _sse(self, request: web.Request, b: Behavior, events: list[Event]) -> web.StreamResponse:
        """Send server-sent events, honouring the stream part of the behaviour."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        sent = 0
        try:
            await resp.prepare(request)
            for i, (name, data, content) in enumerate(events):
                if content and b.fail_after_chunks is not None and sent >= b.fail_after_chunks:
                    _drop(request)  # abruptly: no last chunk, no [DONE]
                    return resp
                if i and b.chunk_interval:
                    await asyncio.sleep(b.chunk_interval)
                line = b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"
                await resp.write(f"event: {name}\n".encode() + line if name else line)
                sent += content
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away mid-stream: that is its right
        return resp

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        got = await self._admit(request, "openai")
        if isinstance(got, web.StreamResponse):
            return got
        body, b = got
        if "messages" not in body:
            return _error("openai", 400, "'messages' is a required property")
        a = _answer(body, "openai")
        self._log_served(request, body, a)
        base = {"id": f"chatcmpl-fake{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.get("model")}
        total = a.prompt_tokens + a.completion_tokens
        usage = {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens, "total_tokens": total}
        call = {"id": "call_fake1", "type": "function", "function": {"name": a.tool, "arguments": TOOL_ARGUMENTS}}
        finish = "tool_calls" if a.tool else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": a.text, "refusal": None}
            if a.tool:
                message.update(content=None, tool_calls=[call])
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            doc = {**base, "object": "chat.completion", "choices": [choice]}
            return _json({**doc, "usage": usage} if b.include_usage else doc)

        want_usage = b.include_usage and bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            doc = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            return {**doc, "usage": None} if want_usage else doc

        if a.tool:
            opening = [{"index": 0, **call, "function": {"name": a.tool, "arguments": ""}}]
            first: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": opening}
            deltas: list[dict[str, Any]] = [
                {"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in a.pieces(b.chunks)
            ]
        else:
            first = {"role": "assistant", "content": ""}
            deltas = [{"content": p} for p in a.pieces(b.chunks)]
        events: list[Event] = [(None, chunk(first), False), *((None, chunk(d), True) for d in deltas)]
        events.append((None, chunk({}, finish), False))
        if want_usage:
            events.append((None, {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}, False))
        events.append((None, b"[DONE]", False))
        return await self._sse(request, b, events)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        got = await self._admit(request, "anthropic")
        if isinstance(got, web.StreamResponse):
            return got
        body, b = got
        if "messages" not in body or not isinstance(body.get("max_tokens"), int):
            return _error("anthropic", 400, "messages and max_tokens are required")
        a = _answer(body, "anthropic")
        self._log_served(request, body, a)
        stop_reason = "tool_use" if a.tool else "end_turn"
        tool_block: dict[str, Any] = {"type": "tool_use", "id": "toolu_fake1", "name": a.tool}
        message: dict[str, Any] = {"id": f"msg_fake{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant"}
        message["model"] = body.get("model")
        if not body.get("stream"):
            text = {"type": "text", "text": a.text}
            block = {**tool_block, "input": orjson.loads(TOOL_ARGUMENTS)} if a.tool else text
            message.update(content=[block], stop_reason=stop_reason, stop_sequence=None)
            if b.include_usage:
                message["usage"] = {"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens}
            return _json(message)

        message.update(content=[], stop_reason=None, stop_sequence=None)
        final: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}}
        if b.include_usage:  # like Anthropic: a first count at the start, the final one in message_delta
            message["usage"] = {"input_tokens": a.prompt_tokens, "output_tokens": 1}
            final["usage"] = {"output_tokens": a.completion_tokens}
        start: dict[str, Any] = {**tool_block, "input": {}} if a.tool else {"type": "text", "text": ""}
        delta_type, field = ("input_json_delta", "partial_json") if a.tool else ("text_delta", "text")
        events: list[Event] = [
            ("message_start", {"type": "message_start", "message": message}, False),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}, False),
            ("ping", {"type": "ping"}, False),
        ]
        for piece in a.pieces(b.chunks):
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": delta_type, field: piece}}
            events.append(("content_block_delta", delta, True))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}, False),
            ("message_delta", final, False),
            ("message_stop", {"type": "message_stop"}, False),
        ]
        return await self._sse(request, b, events)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._admit(request, "openai")
        if isinstance(got, web.StreamResponse):
            return got
        body, b = got
        raw = body.get("input")
        one = isinstance(raw, str) or (isinstance(raw, list) and bool(raw) and all(isinstance(t, int) for t in raw))
        items = [raw] if one else raw
        if not isinstance(items, list) or not items:
            return _error("openai", 400, "'input' must be a string or a non-empty list")
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(orjson.dumps(item)).digest()
            vector = [round(int.from_bytes(digest[k : k + 2], "big") / 32767.5 - 1, 6) for k in range(0, 16, 2)]
            packed = base64.b64encode(struct.pack("<8f", *vector)).decode()  # what the openai SDK asks for
            embedding = packed if body.get("encoding_format") == "base64" else vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        tokens = sum(len(x) if isinstance(x, list) else max(1, len(str(x).split())) for x in items)
        doc: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        if b.include_usage:
            doc["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json(doc)

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        if not self._authorized(request, "openai"):
            return _error("openai", 401, "invalid api key for the fake upstream")
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"} for m in self.models]
        return _json({"object": "list", "data": data})

    async def _unknown(self, request: web.Request) -> web.Response:
        self._record(request, await request.text() or None)
        kind: Kind = "anthropic" if request.path.startswith("/v1/messages") else "openai"
        return _error(kind, 404, f"the fake upstream has no {request.method} {request.path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.upstream", description="Run the fake LLM upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--api-key", default=None, help="require this key (Bearer for OpenAI, x-api-key for Anthropic)")
    args = parser.parse_args(argv)
    with FakeUpstream(args.host, args.port, api_key=args.api_key) as fake:
        print(f"fake upstream: OpenAI {fake.base_url}, Anthropic {fake.anthropic_base_url}; Ctrl-C stops", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
