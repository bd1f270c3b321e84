"""The servicer's mapping between the wire and the router's domain values."""

from __future__ import annotations

import pytest

from faregate.errors import UpstreamError
from faregate.pb.router.v1 import router_pb2 as pb
from faregate.values import RoutingMode
from services.router.autoroute import Choice, Choices
from services.router.calls import Caller, Chunk, CompletionCall, Start
from services.router.catalog import load_catalog
from services.router.servicer import call_from_pb, choices_pb, chunk_pb


def test_call_from_pb_carries_every_field() -> None:
    request = pb.CompletionRequest(
        request_id="req_1",
        body=b'{"model": "m"}',
        caller=pb.Caller(
            account_id="acc",
            key_id="key",
            billable=True,
            test_mode=True,
            max_tokens_cap=7,
            guest=True,
            routing_mode=RoutingMode.FAILOVER.to_pb(),
            preferred_provider="p1",
        ),
    )
    assert call_from_pb(request) == CompletionCall(
        request_id="req_1",
        body=b'{"model": "m"}',
        caller=Caller("acc", "key", True, True, 7, True, RoutingMode.FAILOVER, "p1"),
    )
    assert call_from_pb(pb.CompletionRequest()).caller.routing_mode is RoutingMode.AUTO  # unspecified: auto


START = Start("faregate/echo", "faregate", True)


@pytest.mark.parametrize(
    ("chunk", "wire"),
    [
        (
            Chunk([b"{}"], START._replace(stream=False)),
            pb.CompletionChunk(start=pb.Start(model="faregate/echo", provider="faregate"), data=b"{}"),
        ),
        (
            Chunk([b"a", b"b", b"c"], START),
            pb.CompletionChunk(
                start=pb.Start(model="faregate/echo", provider="faregate", stream=True), data=b"a", more=[b"b", b"c"]
            ),
        ),
        (Chunk([b"a"]), pb.CompletionChunk(data=b"a")),
        (Chunk([b"a", b"b"]), pb.CompletionChunk(data=b"a", more=[b"b"])),
        (
            Chunk([], error=UpstreamError("upstream went away")),
            pb.CompletionChunk(error=pb.StreamError(type="backend_unavailable", message="upstream went away")),
        ),
        (
            Chunk([], error=UpstreamError("cut", code="upstream_reset")),
            pb.CompletionChunk(error=pb.StreamError(type="backend_unavailable", message="cut", code="upstream_reset")),
        ),
    ],
)
def test_chunk_pb_is_the_wire_message(chunk: Chunk, wire: pb.CompletionChunk) -> None:
    assert chunk_pb(chunk).SerializeToString(deterministic=True) == wire.SerializeToString(deterministic=True)


def test_choices_pb() -> None:
    catalog = load_catalog(None, env={})
    echo = catalog.model("faregate/echo")
    choices = Choices("t", "general", [Choice(echo, "faregate", "first"), Choice(echo, "other", "second")])
    assert choices_pb(choices) == pb.AutoRouteResponse(
        task="t",
        category="general",
        primary=pb.AutoChoice(id=echo.id, name=echo.name, provider="faregate", reason="first"),
        alternatives=[pb.AutoChoice(id=echo.id, name=echo.name, provider="other", reason="second")],
    )
