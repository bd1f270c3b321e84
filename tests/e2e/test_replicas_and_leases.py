"""Two auth replicas behind one edge; concurrency slots that outlive a crashed process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import fake_catalog
from tests.harness import Infra, Stack, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]
LONG = [{"role": "user", "content": "word " * 100}]  # a reply long enough to stream for seconds
LEASE_S = 3  # the session stack's FAREGATE_SLOT_LEASE_SECONDS


@pytest.fixture(scope="module")
def replicated(infra: Infra, fake_upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    catalog = fake_catalog(fake_upstream.base_url, 9)
    s = Stack(
        Path(tmp_path_factory.mktemp("replicas")),
        infra,
        catalog=catalog,
        env={
            "FAKE_UPSTREAM_KEY": "sk-fake-upstream",
            "FAREGATE_SLOT_LEASE_SECONDS": str(LEASE_S),
            # cached copies never expire by themselves here: only the change messages on NATS
            # can make the other replica see a revocation or a new limit
            "FAREGATE_KEY_CACHE_SECONDS": "3600",
        },
    )
    second = s.add_replica_address("auth")
    s.second_auth = second  # type: ignore[attr-defined]

    def start(s: Stack) -> None:
        s.start_service("auth")
        s.start_service("auth", replica=second)
        for name in ("billing", "router", "edge"):
            s.start_service(name)

    with s.running(start):
        yield s


def post(stack: Stack, key: str, **body) -> httpx.Response:
    return stack.http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "faregate/echo", "messages": HELLO, **body},
    )


def test_a_revoked_key_is_refused_by_every_replica_through_the_change_message(replicated: Stack) -> None:
    acc = replicated.create_account()
    key = replicated.create_key(acc)
    # warm both replicas' caches (the edge balances round-robin over them)
    assert all(post(replicated, key).status_code == 200 for _ in range(6))
    key_id = replicated.http.get("/v1/keys", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"]
    assert replicated.http.delete(f"/v1/keys/{key_id}", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # the replica that revoked it refuses at once; the other once the message arrives
    wait_for(lambda: [post(replicated, key).status_code for _ in range(4)] == [401] * 4, what="every replica to refuse")
    assert [post(replicated, key).status_code for _ in range(10)] == [401] * 10


def test_a_changed_limit_reaches_every_replica(replicated: Stack) -> None:
    acc = replicated.create_account(plan="pro")
    key = replicated.create_key(acc)
    assert all(post(replicated, key).status_code == 200 for _ in range(6))  # both caches warm
    key_id = replicated.http.get("/v1/keys", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"]
    replicated.admin("PATCH", f"/admin/keys/{key_id}", {"rpm": 2})

    def limited() -> bool:
        resp = post(replicated, key)
        return resp.status_code == 429 or resp.headers.get("x-ratelimit-limit") == "2"

    # every answer from either replica now carries the new limit
    wait_for(lambda: all(limited() for _ in range(4)), what="both replicas to apply rpm=2")


def test_auth_replicas_restarted_one_at_a_time_lose_no_request(replicated: Stack) -> None:
    """A rolling restart under load: each replica stops gracefully (SIGTERM) while requests
    run; its callers are told, calls it had not started go to the other replica, and every
    request is answered."""
    acc = replicated.create_account(plan="unlimited")
    key = replicated.create_key(acc)
    done = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=replicated.url, timeout=30) as client:
            while not done.is_set():
                resp = client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "faregate/echo", "messages": HELLO},
                )
                statuses.append(resp.status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(statuses) > 50, what="load to run")
        for name in ("auth", replicated.second_auth):  # type: ignore[attr-defined]
            replicated.procs[name].stop()
            replicated.start_service("auth", replica=None if name == "auth" else name)
            # as an operator would: the next replica stops once this one is back in rotation
            # (the edge reconnects within its backoff, ≤ 1 s, and skips a replica it found
            # down for 2 s)
            time.sleep(3)
    finally:
        done.set()
        for w in workers:
            w.join()
    histogram = {code: statuses.count(code) for code in set(statuses)}
    assert histogram == {200: len(statuses)}, histogram


@pytest.mark.parametrize("victim", ["edge", "router"])
def test_a_slot_held_by_a_killed_process_comes_back(stack: Stack, fake_upstream, victim: str) -> None:
    """SIGKILL mid-stream: the edge's release never comes (edge killed) or comes at once
    (router killed, the edge sees the call fail); either way the slot is free again."""
    replicated = stack
    acc = replicated.create_account(plan="basic", credit_usd=1)
    key = replicated.create_key(acc)
    key_id = replicated.http.get("/v1/keys", headers={"Authorization": f"Bearer {key}"}).json()["data"][0]["id"]
    replicated.admin("PATCH", f"/admin/keys/{key_id}", {"concurrency": 1})
    fake_upstream.set_behavior("ok", model="fake-upstream-model", chunks=100, chunk_interval=0.1)
    try:
        with httpx.stream(
            "POST",
            f"{replicated.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "fake-model", "messages": LONG, "stream": True},
        ) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # keep a reference: a collected iterator closes the stream
            next(lines)
            assert post(replicated, key).status_code == 429  # the one slot is taken
            replicated.kill(victim)
        replicated.start_service(victim)
        wait_for(
            lambda: post(replicated, key).status_code == 200,
            timeout=LEASE_S * 10,
            interval=0.25,
            what="the slot to come back",
        )
    finally:
        fake_upstream.reset()
