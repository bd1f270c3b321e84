"""Supervised components under real outages: a private Redis and a private NATS are stopped
(by PID; never the machine's own) and started again on the same port and data directory.
Each test shows the component down in health, its recovery, and the limit or the ledger
exact afterwards."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faregate import processes
from faregate.pb.rpc.v1 import runtime_pb2, runtime_pb2_grpc
from tests.conftest import fake_catalog
from tests.harness import Infra, Stack, ledger, wait_for
from tests.redis_server import PrivateRedis

HELLO = [{"role": "user", "content": "say something long enough to count"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def component(addr: str, name: str) -> runtime_pb2.Component:
    with grpc.insecure_channel(addr) as channel:
        reply = runtime_pb2_grpc.RuntimeStub(channel).Components(runtime_pb2.ComponentsRequest(), timeout=2)
    [found] = [c for c in reply.components if c.name == name]
    return found


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: the Redis outage test needs its own Redis to stop")
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stream_chat(stack: Stack, key: str, out: dict[str, Any], started: threading.Event) -> None:
    body = {"model": "fake-model", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, headers=auth(key), timeout=60) as s:
        out["status"] = s.status_code
        for line in s.iter_lines():
            started.set()
            if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                out["tokens"] = usage["total_tokens"]
    started.set()


def test_auth_counts_tokens_exactly_across_a_redis_outage(
    infra: Infra, fake_upstream: Any, redis: PrivateRedis, tmp_path: Path
) -> None:
    """A request in flight when Redis stops ends during the outage: auth's usage follower
    cannot count it, goes to BACKOFF and auth is NOT_SERVING; with Redis back on the same
    port it recovers and counts it once, so a daily token limit set to exactly the tokens
    used refuses the next request and one token more admits it."""
    catalog = fake_catalog(fake_upstream.base_url, processes.free_port(), fake_upstream.anthropic_base_url)
    stack = Stack(tmp_path / "stack", infra, catalog=catalog, env={"FAKE_UPSTREAM_KEY": "sk-fake-upstream"})

    def start(s: Stack) -> None:
        for name in ("auth", "billing", "router", "edge"):
            proc = s.launcher.service(name, {"FAREGATE_REDIS_URL": redis.url} if name == "auth" else None)
            s.procs[name] = proc
            if name == "edge":
                processes.wait_http_ok(f"{s.url}/health", proc)
            else:
                processes.wait_grpc_serving(s.addrs[name], proc)

    with stack.running(start):
        key = stack.create_key(stack.create_account(plan="basic", credit_usd=5))
        key_id = stack.http.get("/v1/keys", headers=auth(key)).json()["data"][0]["id"]
        first = stack.http.post(
            "/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=auth(key)
        )
        assert first.status_code == 200, first.text
        used = first.json()["usage"]["total_tokens"]
        fake_upstream.set_behavior("ok", model="fake-upstream-model", chunks=15, chunk_interval=0.1)
        try:
            out: dict[str, Any] = {}
            started = threading.Event()
            client = threading.Thread(target=stream_chat, args=(stack, key, out, started))
            client.start()
            assert started.wait(30)
            redis.stop()  # mid-stream: the request's usage record arrives during the outage
            client.join(60)
        finally:
            fake_upstream.reset()
        assert out["status"] == 200 and out["tokens"] > 0
        used += out["tokens"]
        wait_for(
            lambda: component(stack.addrs["auth"], "usage-follower").state == runtime_pb2.COMPONENT_STATE_BACKOFF,
            what="the follower in backoff",
        )
        down = component(stack.addrs["auth"], "usage-follower")
        assert down.required and "onnect" in down.last_error
        wait_for(lambda: not serving(stack.addrs["auth"]), what="auth NOT_SERVING")
        health = stack.http.get("/health")
        assert health.status_code == 503 and health.json()["services"]["auth"] == "NOT_SERVING"
        follower = [c for c in health.json()["components"]["auth"] if c["name"] == "usage-follower"]
        assert follower[0]["state"] == "backoff" and follower[0]["required"] is True

        redis.start()  # same port, same append-only file
        wait_for(lambda: serving(stack.addrs["auth"]), timeout=30, what="auth serving again")
        assert component(stack.addrs["auth"], "usage-follower").restarts >= 1
        assert stack.http.get("/health").json()["status"] == "ok"

        def admitted_with(limit: int) -> int:
            stack.admin("PATCH", f"/admin/keys/{key_id}", {"tokens_per_day": limit})
            body = {"model": "fake-model", "messages": HELLO, "max_tokens": 1}
            return stack.http.post("/v1/chat/completions", json=body, headers=auth(key)).status_code

        # counted once: at exactly the tokens used the next request is refused (it would be
        # admitted had the outage's record been lost) ...
        assert wait_for(lambda: admitted_with(used) == 429, what="the limit reached")
        # ... and one token more admits it (it would not had the record been counted twice)
        assert admitted_with(used + 1) == 200


def test_billing_consumer_recovers_from_a_nats_outage_with_the_ledger_exact(
    infra: Infra, fake_upstream: Any, tmp_path: Path
) -> None:
    """The stack's own nats-server stops: billing's consumer is reported down
    (consumer_connected false, billing NOT_SERVING); requests served meanwhile queue in the
    router; NATS back on the same port and data: every request is in the ledger once."""
    launcher = processes.Launcher({})
    nats_proc, nats_url = launcher.nats(tmp_path / "nats")
    port = int(nats_url.rsplit(":", 1)[1])
    own = Infra(nats_url=nats_url, database_url=infra.database_url, redis_url=infra.redis_url)
    catalog = fake_catalog(fake_upstream.base_url, processes.free_port(), fake_upstream.anthropic_base_url)
    stack = Stack(tmp_path / "stack", own, catalog=catalog, env={"FAKE_UPSTREAM_KEY": "sk-fake-upstream"})
    try:
        with stack.running():
            acc = stack.create_account(credit_usd=5)
            key = stack.create_key(acc)
            body = {"model": "fake-model", "messages": HELLO}

            def chat() -> None:
                r = stack.http.post("/v1/chat/completions", json=body, headers=auth(key))
                assert r.status_code == 200, r.text

            for _ in range(3):
                chat()
            wait_for(lambda: len(ledger(stack, acc)) == 4, what="3 usage entries and the credit")
            nats_proc.stop()  # our own nats-server, by its PID
            wait_for(lambda: not serving(stack.addrs["billing"]), what="billing NOT_SERVING")
            health = stack.http.get("/health").json()
            assert health["metering"]["consumer_connected"] is False
            for _ in range(4):
                chat()  # served; their usage waits in the router
            nats_proc, _ = launcher.nats(tmp_path / "nats", port)
            wait_for(lambda: serving(stack.addrs["billing"]), timeout=30, what="billing serving again")
            wait_for(lambda: stack.http.get("/health").json()["metering"]["consumer_connected"], what="reconnected")
            entries = wait_for(
                lambda: (e := [x for x in ledger(stack, acc) if x.kind == "usage"]) and len(e) >= 7 and e,
                timeout=30,
                what="7 usage entries",
            )
            assert len({e.request_id for e in entries}) == len(entries) == 7
            assert stack.balance_usd(acc) == pytest.approx(5 + sum(e.amount_micros for e in entries) / 1e6)
    finally:
        launcher.stop_all()
