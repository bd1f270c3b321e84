"""Adapter for any OpenAI-compatible API (OpenAI, vLLM, Ollama, DeepSeek, Groq, …).

The HTTP call and its error mapping are ``client.UpstreamClient``'s (one pooled aiohttp
session per router process, docs/adr/0003-upstream-http-client.md). Bodies are relayed as
bytes; only usage is parsed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from faregate.errors import UpstreamError
from faregate.tokens import estimate_messages, estimate_text, message_text
from services.router.catalog import Provider as ProviderConfig
from services.router.providers.base import Completion, Provider, Usage
from services.router.providers.client import UpstreamClient, make_session

__all__ = ["OpenAIProvider", "make_session"]  # make_session: its old home, still imported from here

_DONE = b"[DONE]"
_NULL_USAGE = b'"usage":null'


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name = config.name
        self._url = f"{config.base_url}/chat/completions"
        self._embeddings_url = f"{config.base_url}/embeddings"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = UpstreamClient(config.name, session, headers)

    async def chat(self, model: str, body: dict[str, Any]) -> Completion:
        data, doc = await self._http.post_json(self._url, {**body, "model": model})
        usage = Usage()
        reported = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(reported, dict):
            usage.prompt_tokens = int(reported.get("prompt_tokens") or 0)
            usage.completion_tokens = int(reported.get("completion_tokens") or 0)
            usage.reported = True
        else:
            usage.prompt_tokens = estimate_messages(body.get("messages") or [])
            usage.completion_tokens = sum(
                estimate_text(message_text((c.get("message") or {}).get("content"))) for c in doc.get("choices") or []
            )
        return Completion(data, usage)

    async def embeddings(self, model: str, body: dict[str, Any]) -> Completion:
        data, doc = await self._http.post_json(self._embeddings_url, {**body, "model": model})
        usage = Usage()
        reported = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(reported, dict) and reported.get("prompt_tokens") is not None:
            usage.prompt_tokens, usage.reported = int(reported["prompt_tokens"]), True
        else:
            items = body.get("input")
            texts = items if isinstance(items, list) else [items]
            usage.prompt_tokens = sum(estimate_text(t) if isinstance(t, str) else len(t or []) for t in texts)
        return Completion(data, usage)

    async def chat_batches(
        self, model: str, body: dict[str, Any], usage: Usage, *, include_usage: bool
    ) -> AsyncGenerator[list[bytes], None]:
        payload = {**body, "model": model, "stream": True, "stream_options": {"include_usage": True}}
        resp = await self._http.post(self._url, payload, stream=True)
        done = False
        async with aclosing(self._http.events(resp)) as events:
            async for batch in events:
                out = []
                for data in batch:
                    if data == _DONE:
                        done = True
                        break
                    if b'"usage"' in data:
                        kept = _take_usage(data, usage, include_usage)
                        if kept is None:
                            continue
                        data = kept
                    out.append(data)
                usage.chunks += len(out)
                if out:
                    yield out
                if done:
                    break
        if not done:
            raise UpstreamError(f"provider {self.name} ended the stream early")
        if not usage.reported:
            usage.prompt_tokens = estimate_messages(body.get("messages") or [])
            usage.completion_tokens = usage.chunks


def _take_usage(data: bytes, usage: Usage, include_usage: bool) -> bytes | None:
    """Record a chunk's usage; hide usage from a client that did not ask for it.

    Upstreams asked for usage put ``"usage":null`` in every chunk and the counts in a last,
    choice-less chunk. The common null case is handled on bytes, without parsing.
    """
    if _NULL_USAGE in data:
        return data if include_usage else data.replace(b"," + _NULL_USAGE, b"").replace(_NULL_USAGE + b",", b"")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data
    if not isinstance(doc, dict) or "usage" not in doc:
        return data
    reported = doc["usage"]
    if isinstance(reported, dict):
        usage.prompt_tokens = int(reported.get("prompt_tokens") or 0)
        usage.completion_tokens = int(reported.get("completion_tokens") or 0)
        usage.reported = True
    if include_usage:
        return data
    if isinstance(reported, dict) and not doc.get("choices"):
        return None
    doc.pop("usage")
    return orjson.dumps(doc)
