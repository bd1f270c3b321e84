"""Adapter for any OpenAI-compatible API (OpenAI, vLLM, Ollama, DeepSeek, Groq, …).

The hot upstream call uses one pooled keep-alive ``aiohttp.ClientSession`` per router
process: on this class of machine it costs a fraction of httpx's own pool per request (see
docs/adr/0003-upstream-http-client.md). Bodies are relayed as bytes; only usage is parsed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from faregate.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from faregate.tokens import estimate_messages, estimate_text, message_text
from services.router.catalog import Provider as ProviderConfig
from services.router.providers.base import Completion, Provider, Usage

_DONE = b"[DONE]"
_NULL_USAGE = b'"usage":null'


class OpenAIProvider(Provider):
    def __init__(self, config: ProviderConfig, session: aiohttp.ClientSession) -> None:
        self.name = config.name
        self._url = f"{config.base_url}/chat/completions"
        self._embeddings_url = f"{config.base_url}/embeddings"
        self._session = session
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"

    async def _post(self, payload: dict[str, Any], url: str | None = None) -> aiohttp.ClientResponse:
        try:
            resp = await self._session.post(url or self._url, data=orjson.dumps(payload), headers=self._headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"provider {self.name} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"provider {self.name} is unreachable") from exc
        if resp.status >= 300:
            await self._raise_for(resp)
        return resp

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        try:
            detail = (await resp.json(content_type=None) or {}).get("error", {}).get("message", "")
        except (ValueError, AttributeError, aiohttp.ClientError):
            detail = ""
        finally:
            resp.release()
        retry_after = _retry_after(resp.headers.get("Retry-After"))
        if resp.status in (400, 404, 413, 422):
            raise InvalidRequest(f"provider {self.name} rejected the request: {detail or resp.reason}")
        raise UpstreamError(
            f"provider {self.name} answered HTTP {resp.status}",
            code=f"upstream_{resp.status}",
            retry_after=retry_after,
        )

    async def _whole(self, payload: dict[str, Any], url: str | None = None) -> tuple[bytes, Any]:
        """POST and read a whole JSON answer: (the bytes as sent, the parsed document)."""
        resp = await self._post(payload, url)
        try:
            data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"provider {self.name} dropped the answer") from exc
        finally:
            resp.release()
        try:
            return data, orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self.name} answered invalid JSON") from exc

    async def chat(self, model: str, body: dict[str, Any]) -> Completion:
        data, doc = await self._whole({**body, "model": model})
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
        data, doc = await self._whole({**body, "model": model}, self._embeddings_url)
        usage = Usage()
        reported = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(reported, dict) and reported.get("prompt_tokens") is not None:
            usage.prompt_tokens, usage.reported = int(reported["prompt_tokens"]), True
        else:
            items = body.get("input")
            texts = items if isinstance(items, list) else [items]
            usage.prompt_tokens = sum(estimate_text(t) if isinstance(t, str) else len(t or []) for t in texts)
        return Completion(data, usage)

    async def chat_stream(
        self, model: str, body: dict[str, Any], usage: Usage, *, include_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        payload = {**body, "model": model, "stream": True, "stream_options": {"include_usage": True}}
        resp = await self._post(payload)
        done = False
        try:
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == _DONE:
                    done = True
                    break
                if b'"usage"' in data:
                    kept = _take_usage(data, usage, include_usage)
                    if kept is None:
                        continue
                    data = kept
                usage.chunks += 1
                yield data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"provider {self.name} dropped the stream") from exc
        finally:
            resp.release()
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


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def make_session(pool_size: int, connect_timeout: float, total_timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )
