"""Routing through the public API: failover, first-token timeouts, Retry-After, routing modes,
fallback lists, the auto-router, price changes and provider status.

Three providers (alpha, beta, gamma) all point at the fake upstream; each route has its own
upstream model id, so the fake can fail one provider while the others answer, and its request
log shows which providers were called, in which order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faregate import processes
from tests.harness import Infra, Stack, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello there"}]
FIRST_TOKEN_S = 1  # this stack's FAREGATE_FIRST_TOKEN_TIMEOUT


def routing_catalog(base_url: str, dead_port: int) -> str:
    provider = f'{{kind: openai, base_url: "{base_url}", api_key_env: FAKE_UPSTREAM_KEY}}'
    return f"""
providers:
  alpha: {provider}
  beta: {provider}
  gamma: {provider}
  unset: {{kind: openai, base_url: "http://127.0.0.1:{dead_port}/v1", api_key_env: FAREGATE_TEST_UNSET_KEY}}
models:
  - id: chain
    categories: [general, coding]
    pricing: {{prompt: 1.0, completion: 2.0}}
    routes: [{{provider: alpha, model: rt-a}}, {{provider: beta, model: rt-b}}, {{provider: gamma, model: rt-c}}]
  - id: solo
    categories: [general]
    pricing: {{prompt: 1.0, completion: 2.0}}
    routes: [{{provider: alpha, model: rt-solo}}]
  - id: cheapo
    aliases: [cheapo-latest]
    categories: [general, cheap]
    pricing: {{prompt: 0.5, completion: 0.5}}
    routes: [{{provider: beta, model: rt-cheap}}]
  - id: ghost-thinker
    categories: [reasoning]
    pricing: {{prompt: 1.0, completion: 1.0}}
    routes: [{{provider: unset, model: nothing}}]
  - id: thinker
    categories: [reasoning]
    pricing: {{prompt: 3.0, completion: 3.0}}
    routes: [{{provider: gamma, model: rt-think}}]
"""


@pytest.fixture(scope="module")
def rstack(infra: Infra, fake_upstream: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        Path(tmp_path_factory.mktemp("routing")),
        infra,
        catalog=routing_catalog(fake_upstream.base_url, processes.free_port()),
        env={
            "FAKE_UPSTREAM_KEY": "sk-fake-upstream",
            "FAREGATE_FIRST_TOKEN_TIMEOUT": str(FIRST_TOKEN_S),
            "FAREGATE_BREAKER_OPEN_SECONDS": "600",
        },
    )
    with s.running():
        yield s


@pytest.fixture(autouse=True)
def clean(rstack: Stack, fake_upstream: Any) -> Iterator[None]:
    rstack.admin("POST", "/admin/providers/reset", {})
    yield
    fake_upstream.reset()
    rstack.admin("POST", "/admin/providers/reset", {})


@pytest.fixture(scope="module")
def account(rstack: Stack) -> tuple[str, str]:
    acc = rstack.create_account(credit_usd=50)
    return acc, rstack.create_key(acc)


def chat(stack: Stack, key: str, **body: Any) -> httpx.Response:
    return stack.http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"messages": HELLO, **body},
        timeout=30,
    )


def called(fake: Any, since: int) -> list[str]:
    """The upstream model ids the gateway asked for since request number ``since``."""
    return [r["body"]["model"] for r in fake.requests[since:] if r["path"].endswith("/chat/completions")]


def health(stack: Stack) -> dict[str, Any]:
    providers: dict[str, Any] = stack.http.get("/v1/providers/health").json()["providers"]
    return providers


def test_failover_before_the_first_byte(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    _, key = account
    fake_upstream.set_behavior("error", model="rt-a", status=503)
    fake_upstream.set_behavior("disconnect", model="rt-b")
    seen = len(fake_upstream.requests)
    resp = chat(rstack, key, model="chain")
    assert resp.status_code == 200, resp.text
    assert called(fake_upstream, seen) == ["rt-a", "rt-b", "rt-c"]  # 5xx, then a dropped connection, then gamma
    seen = len(fake_upstream.requests)
    with httpx.stream(
        "POST",
        f"{rstack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "chain", "messages": HELLO, "stream": True},
    ) as stream:
        assert stream.status_code == 200
        body = b"".join(stream.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n") and b'"error"' not in body
    assert called(fake_upstream, seen) == ["rt-a", "rt-b", "rt-c"]
    h = health(rstack)
    assert h["alpha"]["consecutive_failures"] == 2 and h["gamma"]["consecutive_failures"] == 0


def test_no_failover_after_the_first_byte(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    _, key = account
    fake_upstream.set_behavior("ok", model="rt-a", chunks=6, fail_after_chunks=2)
    seen = len(fake_upstream.requests)
    with httpx.stream(
        "POST",
        f"{rstack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "chain",
            "messages": [{"role": "user", "content": "one two three four five six"}],
            "stream": True,
        },
    ) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert '"error"' in events[-1] and "[DONE]" not in events[-1]  # the stream ends with an error event
    assert called(fake_upstream, seen) == ["rt-a"], "after the first byte the router must not fail over"


def test_first_token_timeout_moves_on(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    _, key = account
    fake_upstream.set_behavior("slow", model="rt-a", delay=FIRST_TOKEN_S + 2)
    seen = len(fake_upstream.requests)
    client = rstack.sdk(key)
    stream = client.chat.completions.create(model="chain", messages=HELLO, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("fake reply to")
    assert called(fake_upstream, seen) == ["rt-a", "rt-b"]
    assert health(rstack)["alpha"]["consecutive_failures"] == 1


def test_retry_after_is_honoured(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    _, key = account
    fake_upstream.set_behavior("error", model="rt-a", status=429, retry_after=120, times=1)
    seen = len(fake_upstream.requests)
    assert chat(rstack, key, model="chain").status_code == 200
    assert chat(rstack, key, model="chain").status_code == 200
    # alpha asked for 120 s: the second request went straight to beta
    assert called(fake_upstream, seen) == ["rt-a", "rt-b", "rt-b"]
    alpha = health(rstack)["alpha"]
    assert alpha["status"] == "closed" and alpha["retry_after_until"] > time.time() + 100
    # a model whose only provider is cooling: 503 with the provider's Retry-After
    resp = chat(rstack, key, model="solo")
    assert resp.status_code == 503 and resp.json()["error"]["type"] == "providers_unavailable"
    assert int(resp.headers["retry-after"]) > 100


def test_exhausted_chain_is_503_and_a_single_failed_provider_502(
    rstack: Stack, account: tuple[str, str], fake_upstream: Any
) -> None:
    _, key = account
    for model in ("rt-a", "rt-b", "rt-c", "rt-solo"):
        fake_upstream.set_behavior("error", model=model, status=500)
    resp = chat(rstack, key, model="chain")
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["type"] == "providers_unavailable" and "retry-after" in resp.headers
    resp = chat(rstack, key, model="solo")
    assert resp.status_code == 502 and resp.json()["error"]["type"] == "backend_unavailable"


def test_routing_modes_per_key(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    acc, _ = account
    key = rstack.create_key(acc)
    auth = {"Authorization": f"Bearer {key}"}
    key_id = next(
        k["id"] for k in rstack.http.get("/v1/keys", headers=auth).json()["data"] if k["masked"][-4:] == key[-4:]
    )

    # preferred, set by the operator: beta first, then the rest of the chain
    resp = rstack.admin("PATCH", f"/admin/keys/{key_id}", {"routing_mode": "preferred", "preferred_provider": "beta"})
    assert resp.status_code == 200 and resp.json()["routing_mode"] == "preferred", resp.text
    time.sleep(1.1)  # auth's key cache
    seen = len(fake_upstream.requests)
    assert chat(rstack, key, model="chain").status_code == 200
    assert called(fake_upstream, seen) == ["rt-b"]
    fake_upstream.set_behavior("error", model="rt-b", status=503, times=1)
    seen = len(fake_upstream.requests)
    assert chat(rstack, key, model="chain").status_code == 200
    assert called(fake_upstream, seen) == ["rt-b", "rt-a"]

    # failover, set by the account itself: only alpha; its failure is the client's error
    resp = rstack.http.patch(
        f"/v1/keys/{key_id}", headers=auth, json={"routing_mode": "failover", "preferred_provider": "alpha"}
    )
    assert resp.status_code == 200 and resp.json()["preferred_provider"] == "alpha", resp.text
    time.sleep(1.1)
    fake_upstream.set_behavior("error", model="rt-a", status=503, times=1)
    seen = len(fake_upstream.requests)
    resp = chat(rstack, key, model="chain")
    assert resp.status_code == 502 and called(fake_upstream, seen) == ["rt-a"]
    resp = chat(rstack, key, model="cheapo")  # not served by alpha
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_not_on_preferred_provider"

    # bad settings are refused, and another account cannot touch this key
    bad = rstack.http.patch(f"/v1/keys/{key_id}", headers=auth, json={"routing_mode": "failover"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "preferred_provider"
    unknown = rstack.http.patch(f"/v1/keys/{key_id}", headers=auth, json={"preferred_provider": "nope"})
    assert unknown.status_code == 400
    other = rstack.create_key(rstack.create_account(name="other"))
    resp = rstack.http.patch(
        f"/v1/keys/{key_id}", headers={"Authorization": f"Bearer {other}"}, json={"routing_mode": "auto"}
    )
    assert resp.status_code == 404
    listed = rstack.admin("GET", f"/admin/accounts/{acc}").json()["keys"]
    assert next(k for k in listed if k["id"] == key_id)["routing_mode"] == "failover"


def test_models_fallback_list_and_aliases(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    _, key = account
    fake_upstream.set_behavior("error", model="rt-solo", status=500)
    seen = len(fake_upstream.requests)
    resp = chat(rstack, key, model="solo", models=["cheapo-latest"])
    assert resp.status_code == 200, resp.text
    assert called(fake_upstream, seen) == ["rt-solo", "rt-cheap"]
    assert all("models" not in r["body"] for r in fake_upstream.requests[seen:]), "Faregate fields stay home"
    request_id = resp.headers["x-request-id"]
    rows = wait_for(
        lambda: [
            r
            for r in rstack.http.get("/v1/requests", headers={"Authorization": f"Bearer {key}"}).json()["data"]
            if r["id"] == request_id
        ],
        what="the request's usage record",
    )
    assert rows[0]["model"] == "cheapo" and rows[0]["provider"] == "beta"  # billed as the model that answered


def test_auto_router(rstack: Stack, account: tuple[str, str], fake_upstream: Any) -> None:
    _, key = account
    auto = rstack.http.get("/v1/models/auto", params={"task": "prove this theorem step by step"}).json()
    assert auto["category"] == "reasoning" and auto["task"] == "prove this theorem step by step"
    assert auto["primary"]["id"] == "thinker", "a model whose provider is unconfigured is skipped"
    assert auto["primary"]["provider"] == "gamma" and auto["primary"]["reason"]
    cheap = rstack.http.get("/v1/models/auto", params={"task": "cheap"}).json()
    assert cheap["primary"]["id"] == "cheapo" and [a["id"] for a in cheap["alternatives"]] == ["chain", "solo"]

    # "model": "auto" with a task hint, through the SDK
    client = rstack.sdk(key)
    seen = len(fake_upstream.requests)
    done = client.chat.completions.create(model="auto", messages=HELLO, extra_body={"task": "cheap"})  # type: ignore[arg-type]
    assert done.choices[0].message.content and called(fake_upstream, seen) == ["rt-cheap"]

    # gamma opens (3 failures): no reasoning model is left, so a general one is chosen, saying why
    fake_upstream.set_behavior("error", model="rt-think", status=500)
    for _ in range(3):
        chat(rstack, key, model="thinker")
    assert health(rstack)["gamma"]["status"] == "open"
    fallback = rstack.http.get("/v1/models/auto", params={"task": "reasoning"}).json()
    assert fallback["primary"]["id"] == "chain" and "no reasoning model" in fallback["primary"]["reason"]


def test_admin_price_change_applies_from_the_next_request(
    rstack: Stack, account: tuple[str, str], fake_upstream: Any
) -> None:
    _, key = account
    headers = {"Authorization": f"Bearer {key}"}
    path = "/admin/models/cheapo/pricing"
    assert rstack.http.post(path, json={"prompt": 1, "completion": 1}).status_code == 401
    assert rstack.admin("POST", path, {"prompt": -1, "completion": 1}).status_code == 400
    assert rstack.admin("POST", "/admin/models/nope/pricing", {"prompt": 1, "completion": 1}).status_code == 404

    # a slow stream starts at the old price; the price changes while it runs
    fake_upstream.set_behavior("ok", model="rt-cheap", chunks=4, chunk_interval=0.5)
    started = threading.Event()
    ids: dict[str, str] = {}

    def slow_stream() -> None:
        with httpx.stream(
            "POST",
            f"{rstack.url}/v1/chat/completions",
            headers=headers,
            json={"model": "cheapo", "messages": [{"role": "user", "content": "a b c d"}], "stream": True},
            timeout=30,
        ) as s:
            ids["old"] = s.headers["x-request-id"]
            started.set()
            s.read()

    t = threading.Thread(target=slow_stream)
    t.start()
    assert started.wait(10)
    resp = rstack.admin("POST", "/admin/models/cheapo-latest/pricing", {"prompt": 100, "completion": 200})
    assert resp.status_code == 200 and resp.json()["pricing"]["completion"] == 200, resp.text
    t.join(30)
    fake_upstream.reset()
    listed = next(m for m in rstack.http.get("/v1/models").json()["data"] if m["id"] == "cheapo")
    assert listed["pricing"]["prompt"] == 100
    new = chat(rstack, key, model="cheapo")
    assert new.status_code == 200
    ids["new"] = new.headers["x-request-id"]
    usage = new.json()["usage"]

    def rows() -> dict[str, Any]:
        data = rstack.http.get("/v1/requests", headers=headers).json()["data"]
        return {name: r for name, rid in ids.items() for r in data if r["id"] == rid}

    got = wait_for(lambda: r if len(r := rows()) == 2 else None, what="both usage records")
    old = got["old"]
    assert old["cost_usd"] == pytest.approx(
        (old["prompt_tokens"] * 0.5 + old["completion_tokens"] * 0.5) / 1e6, abs=1e-6
    )
    expected = (usage["prompt_tokens"] * 100 + usage["completion_tokens"] * 200) / 1e6
    assert got["new"]["cost_usd"] == pytest.approx(expected, abs=1e-6)
    rstack.admin("POST", path, {"prompt": 0.5, "completion": 0.5})


def test_chat_status_and_category_filter(rstack: Stack) -> None:
    status = rstack.http.get("/v1/chat/status").json()
    assert {"alpha", "beta", "gamma", "faregate"} <= set(status["configured"])
    assert status["unconfigured"] == ["unset"]
    unset = next(p for p in status["providers"] if p["id"] == "unset")
    assert unset["api_key_env"] == "FAREGATE_TEST_UNSET_KEY" and unset["status"] == "unconfigured"
    assert unset["missing_env"] == ["FAREGATE_TEST_UNSET_KEY"]
    cheap = rstack.http.get("/v1/models", params={"category": "cheap"}).json()["data"]
    assert [m["id"] for m in cheap] == ["cheapo"]
    assert cheap[0]["aliases"] == ["cheapo-latest"] and "temperature" in cheap[0]["supported_sampling_parameters"]
    bad = rstack.http.get("/v1/models", params={"category": "poetry"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "category"
    assert rstack.http.get("/v1/models/cheapo-latest").json()["id"] == "cheapo"


def test_router_replicas_share_breakers_through_redis(
    infra: Infra, fake_upstream: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not infra.redis_url:
        pytest.skip("shared breakers need Redis (the infrastructure suite)")
    import grpc

    from faregate.pb.router.v1 import router_pb2, router_pb2_grpc

    s = Stack(
        Path(tmp_path_factory.mktemp("routers")),
        infra,
        catalog=routing_catalog(fake_upstream.base_url, processes.free_port()),
        env={"FAKE_UPSTREAM_KEY": "sk-fake-upstream"},
    )
    second = s.add_replica_address("router")

    def start(s: Stack) -> None:
        for name in ("auth", "billing", "router"):
            s.start_service(name)
        s.start_service("router", replica=second)
        s.start_service("edge")

    with s.running(start):

        def states() -> list[str]:
            out = []
            for addr in (s.addrs["router"].split(",")[0], second):
                with grpc.insecure_channel(addr) as channel:
                    reply = router_pb2_grpc.RouterServiceStub(channel).ProviderHealth(
                        router_pb2.ProviderHealthRequest(), timeout=10
                    )
                out.append(next(p.status for p in reply.providers if p.provider == "gamma"))
            return out

        key = s.create_key(s.create_account(credit_usd=5))
        fake_upstream.set_behavior("error", model="rt-think", status=500)
        # the edge spreads these over both replicas; their failures add up in one breaker
        codes = [chat(s, key, model="thinker").status_code for _ in range(3)]
        assert codes == [502, 502, 502]
        assert states() == ["open", "open"]
        assert chat(s, key, model="thinker").status_code == 503  # whichever replica takes it
        s.admin("POST", "/admin/providers/reset", {"provider": "gamma"})
        assert states() == ["closed", "closed"]
        fake_upstream.reset()
