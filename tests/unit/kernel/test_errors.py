"""The one error tree and its one mapper (faregate/errors.py), and the typed values
(faregate/values.py): every leaf crosses a unary call and a streamed call unchanged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from faregate import errors, processes
from faregate.callstream import CallServer, CallStream, Replica, error_from_call
from faregate.errors import LEAVES, FaregateError, Reason, Status, error_of, status_of
from faregate.grpc import error_from_rpc, insecure_channel, start_server
from faregate.pb.auth.v1 import auth_pb2 as pb
from faregate.pb.auth.v1 import auth_pb2_grpc
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.rpc.v1 import calls_pb2, errors_pb2, routing_pb2
from faregate.values import EntryKind, KeyMode, KeyStatus, RoutingMode, WireEnum


def _sample(cls: type[FaregateError]) -> FaregateError:
    return cls("it broke", code="some_code", param="model", retry_after=2.5, reason=Reason.RPM_EXCEEDED)


def _same(rebuilt: FaregateError, original: FaregateError) -> None:
    assert type(rebuilt) is type(original)
    assert rebuilt.status == original.status
    assert rebuilt.type == original.type
    assert rebuilt.code == original.code
    assert rebuilt.param == original.param
    assert rebuilt.reason is original.reason
    assert rebuilt.retry_after == original.retry_after
    assert rebuilt.headers() == original.headers()
    assert rebuilt.body() == original.body()


def test_the_tree_in_the_docstring_is_the_tree_in_the_code() -> None:
    doc = errors.__doc__ or ""
    for cls in LEAVES:
        row = next(line for line in doc.splitlines() if line.strip(" │├└─").startswith(cls.__name__ + " "))
        assert f"{cls.http_status}  {cls.type}" in row
        assert cls.grpc_code.name in row
    assert {cls.kind for cls in LEAVES} == set(errors_pb2.ErrorKind.values())


@pytest.mark.parametrize("cls", LEAVES, ids=lambda c: c.__name__)
def test_every_leaf_survives_the_mapper(cls: type[FaregateError]) -> None:
    original = _sample(cls)
    status = status_of(original)
    assert status.code == cls.grpc_code
    _same(error_of(Status.from_metadata(status.code, status.message, status.metadata())), original)


def test_leaves_carry_their_table_row() -> None:
    assert errors.ContextLengthExceeded("too long").body()["error"]["code"] == "context_length_exceeded"
    assert errors.ModelNotFound("no such model").code == "model_not_found"
    assert errors.UnsupportedRegion("no").type == "unsupported_region"
    assert (errors.PayloadTooLarge("big").status, errors.MethodNotAllowed("no").status) == (413, 405)
    for cls in (errors.Draining, errors.Maintenance, errors.ProvidersUnavailable, errors.RateLimited):
        assert "Retry-After" in cls("wait").headers()
    assert [errors.Draining.type, errors.Maintenance.type] == ["draining", "maintenance"]


def test_a_reason_names_the_code_clients_see_unless_one_is_given() -> None:
    assert errors.RateLimited("slow", reason=Reason.RPM_EXCEEDED).code == "rpm_exceeded"
    assert errors.AuthenticationFailed("no", reason=Reason.KEY_REVOKED).code == "revoked_api_key"
    assert errors.InsufficientBalance("poor").reason is Reason.INSUFFICIENT_FUNDS
    assert errors.InsufficientBalance("poor").code == "insufficient_balance"
    assert errors.RateLimited("slow", code="custom", reason=Reason.RPM_EXCEEDED).code == "custom"


def test_reason_mirrors_the_proto_enum() -> None:
    proto = {name.removeprefix("REASON_"): number for name, number in errors_pb2.Reason.items()}
    assert {r.name: r.value for r in Reason} == proto
    assert all(r.code for r in Reason if r is not Reason.UNSPECIFIED)


def test_an_unknown_reason_or_kind_from_a_newer_peer_still_answers() -> None:
    detail = errors_pb2.ErrorDetail(kind=999, code="new_code", reason=999)  # type: ignore[arg-type]
    rebuilt = error_of(Status(grpc.StatusCode.UNKNOWN, "new", detail))
    assert type(rebuilt) is FaregateError and rebuilt.reason is Reason.UNSPECIFIED and rebuilt.code == "new_code"


def test_an_unexpected_exception_is_logged_and_internal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="faregate.errors"):
        status = status_of(KeyError("secret detail"), "Svc/Method")
    assert status == Status(grpc.StatusCode.INTERNAL, "internal error")
    assert "Svc/Method" in caplog.text and "secret detail" in caplog.text
    rebuilt = error_of(status)
    assert rebuilt.status == 500 and rebuilt.message == "internal error"


def test_a_bare_unavailable_status_means_a_service_is_down() -> None:
    err = error_of(Status(grpc.StatusCode.UNAVAILABLE, "connect failed"))
    assert type(err) is errors.Maintenance and err.status == 503 and err.retry_after
    assert "connect failed" not in err.message  # peer internals are not shown to clients
    assert type(error_of(Status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too big"))) is errors.PayloadTooLarge


# -- over a real grpc.aio server: unary and streamed calls ---------------------------------


class Raising(auth_pb2_grpc.AuthServiceServicer):
    """Authenticate raises the leaf named by the key (``crash``: a bug)."""

    def __init__(self) -> None:
        self.calls = CallServer()
        self._stream = self.calls.handler(self.Authenticate, pb.AuthenticateRequest)

    async def Authenticate(self, request: pb.AuthenticateRequest, context: Any) -> pb.AuthenticateResponse:
        if request.api_key == "crash":
            raise KeyError("a bug")
        raise _sample(next(c for c in LEAVES if c.__name__ == request.api_key))

    async def AuthenticateStream(
        self, request_iterator: AsyncIterator[calls_pb2.Calls], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[calls_pb2.Results]:
        async for result in self._stream(request_iterator, context):
            yield result


@pytest.fixture
async def wired() -> AsyncIterator[tuple[auth_pb2_grpc.AuthServiceStub, CallStream[Any, Any]]]:
    addr = f"127.0.0.1:{processes.free_port()}"
    servicer = Raising()
    server, _ = await start_server(
        addr, lambda s: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, s), ["faregate.auth.v1.AuthService"]
    )
    channel = insecure_channel(addr)
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    calls: CallStream[Any, Any] = CallStream([Replica(channel, stub.AuthenticateStream)], pb.AuthenticateResponse)
    try:
        yield stub, calls
    finally:
        await calls.close()
        await channel.close()
        await server.stop(None)


async def test_every_leaf_crosses_a_unary_call_and_a_streamed_call_unchanged(
    wired: tuple[auth_pb2_grpc.AuthServiceStub, CallStream[Any, Any]],
) -> None:
    stub, calls = wired
    for cls in LEAVES:
        request = pb.AuthenticateRequest(api_key=cls.__name__)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.Authenticate(request, timeout=5)
        assert unary.value.code() == cls.grpc_code
        _same(error_from_rpc(unary.value), _sample(cls))
        with pytest.raises(FaregateError) as streamed:
            await calls(request, 5)
        _same(streamed.value, _sample(cls))


async def test_a_bug_is_a_bare_internal_on_both_paths(
    wired: tuple[auth_pb2_grpc.AuthServiceStub, CallStream[Any, Any]],
) -> None:
    stub, calls = wired
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await stub.Authenticate(pb.AuthenticateRequest(api_key="crash"), timeout=5)
    assert unary.value.code() == grpc.StatusCode.INTERNAL and "a bug" not in (unary.value.details() or "")
    with pytest.raises(FaregateError) as streamed:
        await calls(pb.AuthenticateRequest(api_key="crash"), 5)
    assert type(streamed.value) is FaregateError and streamed.value.message == "internal error"


def test_a_call_error_without_detail_is_a_bare_status() -> None:
    error = calls_pb2.CallError(code=grpc.StatusCode.UNAVAILABLE.value[0], message="gone")
    assert type(error_from_call(error)) is errors.Maintenance


# -- typed values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "proto", "prefix"),
    [
        (RoutingMode, routing_pb2.RoutingMode, "ROUTING_MODE_"),
        (KeyMode, pb.KeyMode, "KEY_MODE_"),
        (KeyStatus, pb.KeyStatus, "KEY_STATUS_"),
        (EntryKind, billing_pb2.EntryKind, "ENTRY_KIND_"),
    ],
)
def test_each_value_maps_both_ways(cls: type[WireEnum], proto: Any, prefix: str) -> None:
    for member in cls:
        number = member.to_pb()
        assert proto.Name(number) == prefix + member.name and number != 0
        assert cls.from_pb(number) is member
    assert {prefix + m.name for m in cls} | {prefix + "UNSPECIFIED"} == set(proto.keys())


def test_unspecified_is_auto_for_a_routing_mode_and_refused_elsewhere() -> None:
    assert RoutingMode.from_pb(routing_pb2.ROUTING_MODE_UNSPECIFIED) is RoutingMode.AUTO
    for cls in (KeyMode, KeyStatus, EntryKind):
        with pytest.raises(errors.InvalidRequest):
            cls.from_pb(0)
    with pytest.raises(errors.InvalidRequest) as refused:
        KeyMode.from_pb(pb.KEY_MODE_UNSPECIFIED, param="mode")
    assert refused.value.param == "mode" and "live, test" in refused.value.message
    with pytest.raises(errors.InvalidRequest):
        KeyStatus.from_pb(77)


def test_values_are_the_strings_stored_and_shown() -> None:
    assert [m.value for m in RoutingMode] == ["auto", "preferred", "failover"]
    assert [m.value for m in KeyStatus] == ["active", "revoked", "expired"]
    assert EntryKind.CREDIT_GRANT == "credit_grant" and KeyMode("live") is KeyMode.LIVE
