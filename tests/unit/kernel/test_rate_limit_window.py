"""A 429's window crosses gRPC in the error detail and becomes its X-RateLimit-* headers."""

from __future__ import annotations

from faregate.errors import RateLimited, RateWindow, Reason, error_of, status_of


def test_the_window_of_a_429_crosses_grpc_and_becomes_its_headers() -> None:
    refused = RateLimited(
        "slow down", reason=Reason.RPM_EXCEEDED, retry_after=7, window=RateWindow(3, 0, 1_800_000_060)
    )
    again = error_of(status_of(refused))
    assert isinstance(again, RateLimited) and again.window == RateWindow(3, 0, 1_800_000_060)
    assert again.headers() == {
        "Retry-After": "7",
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1800000060",
    }


def test_a_429_without_a_window_has_only_retry_after() -> None:
    again = error_of(status_of(RateLimited("slow down", retry_after=2)))
    assert isinstance(again, RateLimited) and again.window is None
    assert again.headers() == {"Retry-After": "2"}
