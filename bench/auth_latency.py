"""What the auth decision adds: key check + limits, with and without Redis.

Runs a real auth process per mode and times, from one client at one request in flight,
``Authenticate`` (key format, HMAC, cached lookup, RPM/daily/token counters, a concurrency
slot) against the gRPC health ``Check`` of the same process (a round trip doing nothing).
The difference is the decision's cost; both include the same loopback gRPC hop.

    .venv/bin/python -m bench.auth_latency [--n 3000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faregate import processes
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def measure(addr: str, n: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(addr) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        account = await auth.CreateAccount(auth_pb2.CreateAccountRequest(name="bench", plan="enterprise"))
        key = await auth.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.id, mode=auth_pb2.KEY_MODE_LIVE))
        await auth.UpdateKey(
            auth_pb2.UpdateKeyRequest(key_id=key.key.id, limits=auth_pb2.Limits(rpm=10**9, requests_per_day=10**9))
        )
        request = auth_pb2.AuthenticateRequest(api_key=key.secret, client_ip="127.0.0.1")
        timings: dict[str, list[float]] = {"authenticate": [], "baseline": []}
        for i in range(n + 200):  # interleaved, the first 200 are warm-up
            t = time.perf_counter()
            reply = await auth.Authenticate(request)
            a = time.perf_counter() - t
            await auth.Release(auth_pb2.ReleaseRequest(key_id=reply.key_id, slot_id=reply.slot_id))
            t = time.perf_counter()
            await health.Check(health_pb2.HealthCheckRequest())
            b = time.perf_counter() - t
            if i >= 200:
                timings["authenticate"].append(a * 1e6)
                timings["baseline"].append(b * 1e6)
    a, b = timings["authenticate"], timings["baseline"]
    return {
        "authenticate_p50_us": statistics.median(a),
        "authenticate_p99_us": pct(a, 0.99),
        "baseline_p50_us": statistics.median(b),
        "baseline_p99_us": pct(b, 0.99),
        "added_p50_us": statistics.median(a) - statistics.median(b),
        "added_p99_us": pct(a, 0.99) - pct(b, 0.99),
    }


def run_mode(redis_url: str | None, n: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="faregate-bench-"))
    addr = f"127.0.0.1:{processes.free_port()}"
    env = {**os.environ, "FAREGATE_HOME": str(home), "FAREGATE_AUTH_ADDR": addr, "FAREGATE_LOG_LEVEL": "WARNING"}
    for var in ("FAREGATE_DATABASE_URL", "FAREGATE_NATS_URL", "FAREGATE_REDIS_URL"):
        env.pop(var, None)
    if redis_url:
        env["FAREGATE_REDIS_URL"] = redis_url
        env["FAREGATE_REDIS_PREFIX"] = f"faregate-bench-{os.getpid()}:"
    launcher = processes.Launcher(env)
    try:
        proc = launcher.service("auth")
        processes.wait_grpc_serving(addr, proc)
        return asyncio.run(measure(addr, n))
    finally:
        launcher.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--redis", default=os.environ.get("FAREGATE_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    print("mode        | Authenticate p50 / p99 | health Check p50 / p99 | added p50 / p99")
    print("------------|------------------------|------------------------|----------------")
    for label, url in (("in process", None), ("Redis", args.redis)):
        try:
            r = run_mode(url, args.n)
        except Exception as exc:
            print(f"{label:11s} | unavailable: {exc}")
            continue
        print(
            f"{label:11s} | {r['authenticate_p50_us']:7.0f} / {r['authenticate_p99_us']:7.0f} µs "
            f"| {r['baseline_p50_us']:7.0f} / {r['baseline_p99_us']:7.0f} µs "
            f"| {r['added_p50_us']:5.0f} / {r['added_p99_us']:5.0f} µs"
        )


if __name__ == "__main__":
    main()
