"""Hold N slow streams at once: how many a target carries to the end, and how long it takes.

Each stream is one request whose upstream sends a chunk every 100 ms for 30 s. All N are
opened over ``ramp`` seconds and read to ``[DONE]`` (whatever each read brings, its events
counted: the generator shares the machine, so it must cost little per chunk); a stream
counts as held when it ends with ``[DONE]`` and no error event before ``deadline``
seconds. Prints one JSON object.

    python -m bench.slow URL KEY N [--model bench-slow] [--ramp 5] [--deadline 90]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections import Counter

import aiohttp
import orjson
import uvloop


async def run(url: str, key: str, n: int, model: str, ramp: float, deadline: float) -> dict[str, object]:
    body = orjson.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "slow"}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    outcomes: Counter[str] = Counter()
    open_now = 0
    peak_open = 0
    chunks = 0  # data events received, held or not (the target relayed them all)
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=deadline, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            nonlocal open_now, peak_open, chunks
            await asyncio.sleep(ramp * i / max(n, 1))
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    if resp.status != 200:
                        outcomes[f"http_{resp.status}"] += 1
                        return
                    open_now += 1
                    peak_open = max(peak_open, open_now)
                    tail = b""  # the last bytes read: an event may straddle two reads
                    try:
                        async for data in resp.content.iter_any():
                            seen = tail + data
                            chunks += seen.count(b"data: {") - tail.count(b"data: {")
                            if b'"error"' in seen:
                                outcomes["error_event"] += 1
                                return
                            tail = seen[-16:]
                    finally:
                        open_now -= 1
                    outcomes["held" if tail.rstrip().endswith(b"data: [DONE]") else "cut_short"] += 1
            except TimeoutError:
                outcomes["deadline"] += 1
            except aiohttp.ClientError as exc:
                outcomes[type(exc).__name__] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
    return {
        "streams": n,
        "held": outcomes.get("held", 0),
        "outcomes": dict(outcomes),
        "peak_open": peak_open,
        "chunks": chunks,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("n", type=int)
    parser.add_argument("--model", default="bench-slow")
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument("--deadline", type=float, default=90.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = uvloop.run(run(args.url, args.key, args.n, args.model, args.ramp, args.deadline))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
