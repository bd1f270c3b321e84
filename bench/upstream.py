"""A lean fake OpenAI-compatible upstream for the benchmark: fixed answers, no logic.

Non-streaming: one fixed chat.completion with usage. Streaming: ``BENCH_CHUNKS`` chunks
(``?`` none configurable per request) then a usage chunk and ``[DONE]``. Run alone first to
show it is not the bottleneck.

    python -m bench.upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
import uvloop
from aiohttp import web

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


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
    doc = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-upstream",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    chunks = int(request.app["chunks"])
    interval = float(request.app["interval"])
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(_chunk({"role": "assistant", "content": ""}))
    for i in range(chunks):
        if interval:
            await asyncio.sleep(interval)
        await resp.write(_chunk({"content": f"tok{i} "}))
    await resp.write(_chunk({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        await resp.write(_chunk({}, usage=usage, choices=False))
    await resp.write(b"data: [DONE]\n\n")
    return resp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.0)
    args = parser.parse_args()
    app = web.Application()
    app["chunks"], app["interval"] = args.chunks, args.interval
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
