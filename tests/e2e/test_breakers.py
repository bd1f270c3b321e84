"""Circuit breakers through the public API: open after 3 failures, skip, probe, reset."""

from __future__ import annotations

import time

import pytest

from tests.harness import Stack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]
OPEN_S = 2  # the session stack's FAREGATE_BREAKER_OPEN_SECONDS


def test_a_failing_provider_opens_is_skipped_probed_and_reset(stack: Stack, fake_upstream) -> None:
    key = stack.create_key(stack.create_account(credit_usd=5))
    headers = {"Authorization": f"Bearer {key}"}

    def call() -> int:
        return stack.http.post(
            "/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=headers
        ).status_code

    stack.admin("POST", "/admin/providers/reset", {"provider": "fake"})
    fake_upstream.set_behavior("error", status=503)
    try:
        assert [call() for _ in range(3)] == [502, 502, 502]
        health = stack.http.get("/v1/providers/health").json()
        assert health["providers"]["fake"]["status"] == "open"
        assert health["providers"]["fake"]["consecutive_failures"] == 3
        assert health["providers"]["fake"]["last_failure"] > 0 and health["timestamp"] > 0
        seen = len(fake_upstream.requests)
        resp = stack.http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=headers)
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "providers_unavailable"
        assert int(resp.headers["retry-after"]) >= 1
        assert len(fake_upstream.requests) == seen, "an open provider must not be called"

        time.sleep(OPEN_S + 0.2)
        assert call() == 502  # the half-open probe reaches the still-failing upstream …
        assert stack.http.get("/v1/providers/health").json()["providers"]["fake"]["status"] == "open"
        fake_upstream.reset()
        time.sleep(OPEN_S + 0.2)
        assert call() == 200  # … and once it answers, the circuit closes
        assert stack.http.get("/v1/providers/health").json()["providers"]["fake"]["status"] == "closed"

        fake_upstream.set_behavior("error", status=500)
        assert [call() for _ in range(3)] == [502, 502, 502]
        fake_upstream.reset()
        assert call() == 503
        reset = stack.admin("POST", "/admin/providers/reset", {"provider": "fake"})
        assert reset.json()["providers"]["fake"]["status"] == "closed"
        assert call() == 200
    finally:
        fake_upstream.reset()
        stack.admin("POST", "/admin/providers/reset", {})


def test_invalid_requests_do_not_count_and_reset_needs_admin(stack: Stack, fake_upstream) -> None:
    key = stack.create_key(stack.create_account(credit_usd=5))
    fake_upstream.set_behavior("error", status=400)
    try:
        for _ in range(4):
            resp = stack.http.post(
                "/v1/chat/completions",
                json={"model": "fake-model", "messages": HELLO},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 400
    finally:
        fake_upstream.reset()
    assert stack.http.get("/v1/providers/health").json()["providers"]["fake"]["status"] == "closed"
    assert (
        stack.http.post("/admin/providers/reset", json={}, headers={"Authorization": f"Bearer {key}"}).status_code
        == 401
    )
    assert stack.admin("POST", "/admin/providers/reset", {"provider": "nope"}).status_code == 404
