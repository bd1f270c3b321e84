"""The client address used for guest limits: X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from faregate.errors import AuthenticationFailed
from faregate.settings import EdgeSettings
from services.edge.context import EdgeContext, bearer, parse_networks


def request(peer: str, headers: dict[str, str]) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "client": (peer, 1234),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def ctx(trusted: str) -> EdgeContext:
    return EdgeContext(
        EdgeSettings(),
        clients=None,  # type: ignore[arg-type]
        admin_token="x",
        gateway=None,  # type: ignore[arg-type]
        supervisor=None,  # type: ignore[arg-type]
        trusted_proxies=parse_networks(trusted),
    )


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    xff = {"X-Forwarded-For": "203.0.113.7, 10.0.0.5"}
    assert ctx("").client_ip(request("10.0.0.9", xff)) == "10.0.0.9"
    assert ctx("10.0.0.0/8").client_ip(request("192.0.2.1", xff)) == "192.0.2.1"
    # the right-most address that is not one of our proxies is the client
    assert ctx("10.0.0.0/8").client_ip(request("10.0.0.9", xff)) == "203.0.113.7"
    assert ctx("10.0.0.0/8").client_ip(request("10.0.0.9", {"X-Forwarded-For": "not-an-ip"})) == "10.0.0.9"
    assert ctx("10.0.0.0/8, ::1/128").client_ip(request("::1", {"X-Forwarded-For": "2001:db8::1"})) == "2001:db8::1"


def test_bearer_distinguishes_no_header_from_a_bad_one() -> None:
    assert bearer(request("1.2.3.4", {})) == ""  # a guest
    assert bearer(request("1.2.3.4", {"Authorization": "Bearer gw_live_x"})) == "gw_live_x"
    for header in ("Basic abc", "Bearer ", "gw_live_" + "A" * 32, ""):  # a bare key is no Bearer either
        with pytest.raises(AuthenticationFailed):
            bearer(request("1.2.3.4", {"Authorization": header}))


def test_a_path_prefix_is_believed_only_from_a_trusted_proxy() -> None:
    prefixed = {"X-Forwarded-Prefix": "/gw/"}
    assert ctx("").forwarded_prefix(request("10.0.0.9", prefixed)) == ""
    assert ctx("10.0.0.0/8").forwarded_prefix(request("10.0.0.9", prefixed)) == "/gw"
    assert ctx("10.0.0.0/8").forwarded_prefix(request("10.0.0.9", {"X-Forwarded-Prefix": "gw"})) == ""
    assert ctx("10.0.0.0/8").forwarded_prefix(request("192.0.2.1", prefixed)) == ""
