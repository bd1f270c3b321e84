"""What a provider adapter is: one upstream API behind OpenAI's chat-completions dialect.

Adapters raise only Faregate errors (``UpstreamError``, ``UpstreamTimeout``,
``InvalidRequest``); the foreign exceptions of their HTTP client stop here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any


@dataclass
class Usage:
    """Token counts of one call, filled in by the adapter as the answer arrives."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reported: bool = False  # the upstream said so; otherwise we estimated
    chunks: int = 0  # content chunks relayed (the fallback estimate for unreported streams)


@dataclass(frozen=True)
class Completion:
    body: bytes  # the OpenAI chat.completion JSON, as sent to the client
    usage: Usage


class Provider(ABC):
    name: str

    @abstractmethod
    async def chat(self, model: str, body: dict[str, Any]) -> Completion:
        """A whole (non-streaming) chat completion for the upstream model id ``model``."""

    @abstractmethod
    def chat_batches(
        self, model: str, body: dict[str, Any], usage: Usage, *, include_usage: bool
    ) -> AsyncGenerator[list[bytes], None]:
        """The JSON payloads of a streamed completion's SSE events, without ``[DONE]``, in
        lists of those that arrived together (one list per network read: a burst travels on
        as one message, ADR 8).

        The request is sent on the first ``__anext__``: an upstream that fails before its
        first chunk raises there. ``usage`` is filled as chunks arrive; the usage-only chunk
        is relayed only when the client asked for it (``include_usage``).
        """

    async def embeddings(self, model: str, body: dict[str, Any]) -> Completion:
        """An embeddings response for the upstream model id ``model`` (input tokens only)."""
        from faregate.errors import InvalidRequest

        raise InvalidRequest(f"provider {self.name} does not serve embeddings")

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass
