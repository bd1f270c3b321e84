"""What the router is asked and what it answers, as domain values (the servicer maps the wire).

A :class:`CompletionCall` is one chat completion or embeddings call: who asks
(:class:`Caller`, as auth admitted it) and the client's JSON body, still bytes. The answer is
a sequence of :class:`Chunk`: the first says which model and provider answered (``start``);
each carries the payloads that arrived together (one per SSE event, or the whole JSON body);
a stream whose upstream failed after the first byte ends with a chunk holding the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from faregate.errors import UpstreamError
from faregate.values import RoutingMode


@dataclass(frozen=True, slots=True)
class Caller:
    """Who auth admitted, as far as routing and metering need to know."""

    account_id: str
    key_id: str
    billable: bool
    test_mode: bool = False
    max_tokens_cap: int = 0  # 0: none
    guest: bool = False  # only guest-allowed models
    routing_mode: RoutingMode = RoutingMode.AUTO
    preferred_provider: str = ""


@dataclass(frozen=True, slots=True)
class CompletionCall:
    request_id: str
    caller: Caller
    body: bytes  # the client's JSON, parsed by the router
    entry: str = ""  # the way in, when not the REST API ("mcp")


class Start(NamedTuple):
    model: str  # the public model id
    provider: str
    stream: bool


class Chunk(NamedTuple):
    """One message of an answer. A NamedTuple: one is made per relayed batch of a stream."""

    payloads: list[bytes]  # never empty, except in the chunk that carries an error
    start: Start | None = None  # the first chunk only
    error: UpstreamError | None = None  # the upstream failed after the first byte
