from __future__ import annotations

import pytest

from faregate import errors
from faregate.grpc import channel_target
from faregate.money import micros_to_usd, token_cost, usd_to_micros
from faregate.tokens import estimate_messages, estimate_text


def test_error_body_has_the_openai_shape() -> None:
    body = errors.NotFound("no model", code="model_not_found", param="model").body()
    assert body == {"error": {"type": "not_found", "message": "no model", "code": "model_not_found", "param": "model"}}


def test_money_is_exact_integer_micro_usd() -> None:
    assert usd_to_micros("0.15") == 150_000
    assert usd_to_micros(0.1 + 0.2) == 300_000
    assert micros_to_usd(2_500_000) == 2.5
    # 10 prompt tokens at 0.15 USD/1M = 1.5 micro-USD: rounded up, never under-billed.
    assert token_cost(10, 0, 150_000, 600_000) == 2
    assert token_cost(1_000_000, 1_000_000, 150_000, 600_000) == 750_000
    assert token_cost(0, 0, 150_000, 600_000) == 0


def test_token_estimates_are_offline_and_monotonic() -> None:
    assert estimate_text("") == 0
    assert estimate_text("hello world") >= 2
    assert estimate_text("a" * 400) == 100
    short = estimate_messages([{"role": "user", "content": "hi"}])
    longer = estimate_messages([{"role": "user", "content": "hi there, how are you doing today?"}])
    assert 0 < short < longer
    assert estimate_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == short


@pytest.mark.parametrize(
    ("addrs", "target"),
    [
        ("127.0.0.1:50051", "ipv4:127.0.0.1:50051"),
        ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("auth.faregate.svc:50051", "dns:///auth.faregate.svc:50051"),
    ],
)
def test_channel_targets_balance_over_replicas(addrs: str, target: str) -> None:
    assert channel_target(addrs) == target
