"""Bad input gets the error table's answer, as OpenAI error objects the SDK understands."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.harness import Stack
from tests.openai_schema import validate

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    return stack.create_key(stack.create_account(credit_usd=5))


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return stack.sdk(key)


def error_of(resp, status: int, type_: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    validate("ErrorResponse", body)
    assert body["error"]["type"] == type_
    return body["error"]


@pytest.mark.parametrize(
    "auth",
    [
        "Bearer",
        "Bearer gw_live_short",
        "Basic abc",
        "Bearer " + "x" * 5000,
        "Bearer gw_live_" + "A" * 32,
        "Bearer sk-" + "A" * 40,
    ],
)
def test_missing_malformed_or_unknown_key_is_401(stack: Stack, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    resp = stack.http.post("/v1/chat/completions", json={"model": "fake-model", "messages": HELLO}, headers=headers)
    error_of(resp, 401, "invalid_auth")


def test_unknown_key_raises_the_sdk_authentication_error(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, "gw_live_" + "B" * 32).chat.completions.create(model="fake-model", messages=HELLO)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"messages": []}',
        b'{"model": "fake-model"}',
        b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    ],
)
def test_malformed_bodies_are_400(stack: Stack, key: str, body: bytes) -> None:
    resp = stack.http.post("/v1/chat/completions", content=body, headers={"Authorization": f"Bearer {key}"})
    error_of(resp, 400, "invalid_request")


def test_oversized_body_is_413(stack: Stack, key: str) -> None:
    body = b'{"model": "fake-model", "messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    # its own client: the edge closes the connection under the unread rest of the body
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        resp = client.post("/v1/chat/completions", content=body, headers={"Authorization": f"Bearer {key}"})
    error_of(resp, 413, "invalid_request")
    assert resp.headers["connection"] == "close"


def test_unknown_model_is_404_model_not_found(stack: Stack, key: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk(stack, key).chat.completions.create(model="no-such-model", messages=HELLO)
    assert info.value.code == "model_not_found"
    assert stack.http.get("/v1/models/no-such-model").status_code == 404


def test_upstream_down_is_502(stack: Stack, key: str) -> None:
    for stream in (False, True):
        resp = stack.http.post(
            "/v1/chat/completions",
            json={"model": "fake-down", "messages": HELLO, "stream": stream},
            headers={"Authorization": f"Bearer {key}"},
        )
        error_of(resp, 502, "backend_unavailable")
    with pytest.raises(openai.InternalServerError) as info:
        sdk(stack, key).chat.completions.create(model="fake-down", messages=HELLO)
    assert info.value.status_code == 502


def test_upstream_5xx_is_502_and_not_billed(stack: Stack, fake_upstream) -> None:
    account_id = stack.create_account(credit_usd=5)
    key = stack.create_key(account_id)
    fake_upstream.set_behavior("error", status=500, times=1)
    try:
        with pytest.raises(openai.InternalServerError):
            sdk(stack, key).chat.completions.create(model="fake-model", messages=HELLO)
    finally:
        fake_upstream.reset()
    assert stack.balance_usd(account_id) == 5.0


def test_unconfigured_provider_is_503_saying_which_key(stack: Stack, key: str) -> None:
    resp = stack.http.post(
        "/v1/chat/completions",
        json={"model": "fake-unconfigured", "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    )
    err = error_of(resp, 503, "providers_unavailable")
    assert "FAREGATE_TEST_UNSET_KEY" in err["message"]


def test_unknown_route_is_404(stack: Stack) -> None:
    error_of(stack.http.get("/v1/nothing-here"), 404, "not_found")


def test_admin_api_needs_the_admin_token(stack: Stack, key: str) -> None:
    for token in (None, "wrong", key):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = stack.http.post("/admin/accounts", json={"name": "x"}, headers=headers)
        error_of(resp, 401, "invalid_auth")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/accounts", {}),
        ("/admin/accounts", {"name": "x", "plan": "platinum"}),
        ("/admin/accounts", {"name": "x", "unexpected": 1}),
        ("/admin/accounts/{acc}/keys", {"mode": "staging"}),
        ("/admin/accounts/{acc}/credit", {"amount_usd": -5}),
        ("/admin/accounts/{acc}/credit", {"amount_usd": 1e12}),
        ("/admin/accounts/{acc}/credit", {"amount_usd": "lots"}),
    ],
)
def test_admin_bad_bodies_are_400(stack: Stack, path: str, body: dict) -> None:
    acc = stack.create_account()
    error_of(stack.admin("POST", path.format(acc=acc), body), 400, "invalid_request")


def test_admin_unknown_account_is_404(stack: Stack) -> None:
    error_of(stack.admin("GET", "/admin/accounts/acc_missing"), 404, "not_found")
    error_of(stack.admin("POST", "/admin/accounts/acc_missing/keys", {"mode": "live"}), 404, "not_found")
    error_of(stack.admin("POST", "/admin/accounts/acc_missing/credit", {"amount_usd": 1}), 404, "not_found")


def test_admin_credit_shows_the_new_balance(stack: Stack) -> None:
    acc = stack.create_account()
    resp = stack.admin("POST", f"/admin/accounts/{acc}/credit", {"amount_usd": 2.5, "note": "welcome"})
    assert resp.status_code == 200 and resp.json()["balance_usd"] == 2.5
    resp = stack.admin("POST", f"/admin/accounts/{acc}/credit", {"amount_usd": 0.000001})
    assert resp.json()["balance_usd"] == pytest.approx(2.500001)
