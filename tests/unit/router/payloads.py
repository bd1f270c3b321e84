"""A provider's streamed payloads one by one, for tests that look at each chunk."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from services.router.providers.base import Provider, Usage


async def payloads(
    provider: Provider, model: str, body: dict[str, Any], usage: Usage, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """``Provider.chat_batches`` flattened (the router relays the lists, one per network read)."""
    batches = provider.chat_batches(model, body, usage, include_usage=include_usage)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for data in batch:
                yield data
