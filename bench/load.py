"""Closed-loop load generator: C clients, each sending the next request when the last ends.

Prints one JSON object: requests, errors, seconds, and latency percentiles in ms.

    python -m bench.load URL KEY CONCURRENCY SECONDS [--stream | --mcp]

With ``--mcp`` each request is an MCP ``tools/call`` of ``chat_completion`` (JSON-RPC over
Streamable HTTP, stateless) to URL (``…/v1/mcp``); a tool result with ``isError`` is an error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson
import uvloop


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(p * (len(sorted_values) - 1)))]


def mcp_call(model: str, messages: list[dict[str, str]]) -> bytes:
    arguments = {"model": model, "messages": messages}
    call = {"name": "chat_completion", "arguments": arguments}
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call})


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


async def run(
    url: str, key: str, concurrency: int, seconds: float, stream: bool, model: str, mcp: bool = False
) -> dict:
    messages = [{"role": "user", "content": "Say hello to the benchmark."}]
    body = mcp_call(model, messages) if mcp else orjson.dumps({"model": model, "stream": stream, "messages": messages})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(MCP_HEADERS if mcp else {})}
    latencies: list[float] = []
    ttfb: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        end = time.monotonic() + seconds

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < end:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        first = await resp.content.readany()
                        t1 = time.perf_counter()
                        rest = await resp.read()
                        if resp.status != 200 or not (first + rest) or (mcp and b'"isError":true' in first + rest):
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                ttfb.append((t1 - t0) * 1000)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    latencies.sort()
    ttfb.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5),
        "p90_ms": percentile(latencies, 0.9),
        "p99_ms": percentile(latencies, 0.99),
        "ttfb_p50_ms": percentile(ttfb, 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--mcp", action="store_true", help="MCP tools/call chat_completion to URL (…/v1/mcp)")
    parser.add_argument("--model", default="bench-model")
    args = parser.parse_args()
    result = uvloop.run(run(args.url, args.key, args.concurrency, args.seconds, args.stream, args.model, args.mcp))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
