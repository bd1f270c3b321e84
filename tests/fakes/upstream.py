"""A fake OpenAI-compatible LLM upstream for tests (a third party, so faking it is fine).

Runs an aiohttp app in a background thread. Tests steer it with ``set_behavior`` and read
what the gateway sent in ``requests``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Behavior:
    mode: str = "ok"  # ok | error | stall | slow | disconnect
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    chunks: int = 5
    chunk_interval: float = 0.0
    fail_after_chunks: int | None = None
    include_usage: bool = True
    times: int | None = None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class FakeUpstream:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None) -> None:
        self.host, self.port, self.api_key = host, port, api_key
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._global = Behavior()
        self._per_model: dict[str, Behavior] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release = threading.Event()

    # -- control ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_behavior(self, mode: str, *, model: str | None = None, **kwargs: Any) -> None:
        behavior = Behavior(mode=mode, **kwargs)
        with self._lock:
            if model is None:
                self._global = behavior
            else:
                self._per_model[model] = behavior

    def reset(self) -> None:
        with self._lock:
            self._global = Behavior()
            self._per_model.clear()
        self._release.set()
        self._release = threading.Event()

    def _take(self, model: str) -> Behavior:
        with self._lock:
            b = self._per_model.get(model, self._global)
            if b.times is not None:
                left = b.times - 1
                updated = replace(b, times=left) if left > 0 else Behavior()
                if model in self._per_model:
                    self._per_model[model] = updated
                else:
                    self._global = updated
            return b

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
        self._thread.start()
        started.wait(10)
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        self._release.set()
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers -------------------------------------------------------------------------

    async def _common(self, request: web.Request) -> tuple[dict[str, Any], Behavior] | web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid upstream key")
        b = self._take(str(body.get("model", "")))
        if b.mode == "error":
            headers = {"Retry-After": f"{b.retry_after:g}"} if b.retry_after is not None else None
            return _error(b.status, f"fake upstream error {b.status}", headers)
        if b.mode == "stall":
            await asyncio.get_running_loop().run_in_executor(None, self._release.wait, 600)
            return _error(504, "stalled")
        if b.mode == "slow":
            await asyncio.sleep(b.delay)
        if b.mode == "disconnect":
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        return body, b

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        got = await self._common(request)
        if isinstance(got, web.StreamResponse):
            return got
        body, b = got
        messages = body.get("messages") or []
        last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        words = ("fake reply to: " + _text(last.get("content"))).split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int):
            words = words[:limit]
        prompt = max(1, sum(len(_text(m.get("content")).split()) for m in messages))
        usage = {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}
        base = {"id": f"chatcmpl-fake{time.time_ns()}", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            doc = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
            }
            if b.include_usage:
                doc["usage"] = usage
            return web.Response(body=orjson.dumps(doc), content_type="application/json")
        want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and b.include_usage
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(choices: list[Any], **extra: Any) -> None:
            doc = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            if want_usage and "usage" not in extra:
                doc["usage"] = None
            try:
                await resp.write(b"data: " + orjson.dumps(doc) + b"\n\n")
            except ConnectionResetError:  # the gateway went away mid-stream: that is its right
                raise asyncio.CancelledError from None
            if b.chunk_interval:
                await asyncio.sleep(b.chunk_interval)

        def choice(delta: dict[str, Any], finish: str | None = None) -> list[Any]:
            return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

        await send(choice({"role": "assistant", "content": ""}))
        n = max(1, min(b.chunks, len(words)))
        pieces = [words[i * len(words) // n : (i + 1) * len(words) // n] for i in range(n)]
        for i, piece in enumerate(pieces):
            if b.fail_after_chunks is not None and i >= b.fail_after_chunks:
                assert request.transport is not None
                request.transport.close()
                return resp
            await send(choice({"content": (" " if i else "") + " ".join(piece)}))
        await send(choice({}, "stop"))
        if want_usage:
            await send([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        got = await self._common(request)
        if isinstance(got, web.StreamResponse):
            return got
        body, b = got
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {"object": "embedding", "index": i, "embedding": [((len(str(x)) + k) % 7) / 7 for k in range(8)]}
            for i, x in enumerate(items)
        ]
        tokens = sum(max(1, len(str(x).split())) for x in items)
        doc: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        if b.include_usage:
            doc["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        doc = {
            "object": "list",
            "data": [{"id": "fake-upstream-model", "object": "model", "created": 0, "owned_by": "fake"}],
        }
        return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "fake_error", "code": None, "param": None}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the fake OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, default=9999)
    args = parser.parse_args()
    fake = FakeUpstream(port=args.port).start()
    print(f"fake upstream on {fake.base_url}")
    threading.Event().wait()
