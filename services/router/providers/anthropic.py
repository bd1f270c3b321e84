"""Adapter for Anthropic's Messages API behind OpenAI's chat-completions dialect.

An OpenAI SDK client calls a Claude model: the request is translated to ``POST
{base_url}/v1/messages`` (``anthropic_request.to_messages_request``) and the answer back to a
``chat.completion`` document or ``chat.completion.chunk`` events. Usage is what Anthropic
reports: prompt tokens are the input tokens plus the cache reads and writes (all billed as
input by Anthropic), completion tokens the output tokens. The HTTP call and its error
mapping are ``client.UpstreamClient``'s.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from faregate.errors import UpstreamError
from faregate.tokens import estimate_messages, estimate_text
from services.router.catalog import Provider as ProviderConfig
from services.router.providers.anthropic_request import to_messages_request
from services.router.providers.base import Completion, Provider, Usage
from services.router.providers.client import UpstreamClient

ANTHROPIC_VERSION = "2023-06-01"

# Anthropic stop_reason → OpenAI finish_reason (anything else: "stop").
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The error event of a stream that fails after its HTTP 200, by Anthropic's error type.
_STREAM_ERROR_CODES = {
    "overloaded_error": "upstream_529",
    "api_error": "upstream_500",
    "rate_limit_error": "upstream_429",
    "timeout_error": "upstream_504",
}


class AnthropicProvider(Provider):
    def __init__(
        self, config: ProviderConfig, session: aiohttp.ClientSession, clock: Callable[[], float] = time.time
    ) -> None:
        self.name = config.name
        self._url = f"{config.base_url}/v1/messages"
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        self._http = UpstreamClient(config.name, session, headers)
        self._clock = clock

    async def chat(self, model: str, body: dict[str, Any]) -> Completion:
        payload = to_messages_request(model, body, self.name)
        _, doc = await self._http.post_json(self._url, payload)
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), list):
            raise UpstreamError(f"provider {self.name} answered something that is not a message")
        text, calls = _content(doc["content"])
        usage = _usage_of(doc.get("usage"))
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        answer: dict[str, Any] = {
            "id": _completion_id(doc.get("id")),
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": str(doc.get("model") or model),
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(doc.get("stop_reason"))}
            ],
        }
        if usage.reported:
            answer["usage"] = _openai_usage(doc.get("usage"), usage)
        else:
            usage.prompt_tokens = estimate_messages(body.get("messages") or [])
            usage.completion_tokens = estimate_text(text + "".join(c["function"]["arguments"] for c in calls))
        return Completion(orjson.dumps(answer), usage)

    async def chat_batches(
        self, model: str, body: dict[str, Any], usage: Usage, *, include_usage: bool
    ) -> AsyncGenerator[list[bytes], None]:
        payload = {**to_messages_request(model, body, self.name), "stream": True}
        resp = await self._http.post(self._url, payload, stream=True)
        chunks = _ChunkStream(self.name, model, int(self._clock()), usage, include_usage)
        async with aclosing(self._http.events(resp)) as events:
            async for batch in events:  # event names are skipped: the data says its type too
                out: list[bytes] = []
                try:
                    for data in batch:
                        out.extend(chunks.feed(data))
                        if chunks.stopped:
                            break
                except UpstreamError:
                    if out:  # the chunks before the error event still go out first
                        yield out
                    raise
                if out:
                    yield out
                if chunks.stopped:
                    break
        if not chunks.stopped:
            raise UpstreamError(f"provider {self.name} ended the stream early")
        if not usage.reported:
            usage.prompt_tokens = estimate_messages(body.get("messages") or [])
            usage.completion_tokens = usage.chunks


class _ChunkStream:
    """Anthropic's stream events in, OpenAI ``chat.completion.chunk`` payloads out.

    message_start → the role chunk; text blocks → content deltas; tool_use blocks → a tool
    call delta with id and name, then its arguments in pieces; message_delta → the finish
    reason and output count; message_stop → the finish chunk, then the usage chunk if asked.
    """

    def __init__(self, provider: str, model: str, created: int, usage: Usage, include_usage: bool) -> None:
        self._provider = provider
        self._usage = usage
        self._include_usage = include_usage
        self._base: dict[str, Any] = {"id": "", "object": "chat.completion.chunk", "created": created, "model": model}
        self._tool_index: dict[int, int] = {}  # Anthropic content block index → OpenAI tool call index
        self._finish = "stop"
        self._reported: dict[str, Any] = {}
        self.stopped = False

    def feed(self, data: bytes) -> list[bytes]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"provider {self._provider} sent an event that is not JSON") from exc
        if not isinstance(event, dict):
            raise UpstreamError(f"provider {self._provider} sent an event that is not an object")
        kind = event.get("type")
        if kind == "message_start":
            return self._start(event.get("message") or {})
        if kind == "content_block_start":
            return self._block_start(event.get("index"), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(event.get("index"), event.get("delta") or {})
        if kind == "message_delta":
            self._finish = _finish((event.get("delta") or {}).get("stop_reason"))
            self._count(event.get("usage"))
            return []
        if kind == "message_stop":
            self.stopped = True
            return self._stop()
        if kind == "error":
            error = event.get("error") or {}
            raise UpstreamError(
                f"provider {self._provider} failed mid-stream: {error.get('message') or error.get('type')}",
                code=_STREAM_ERROR_CODES.get(str(error.get("type")), "upstream_error"),
            )
        return []  # ping, content_block_stop, and events this adapter does not know yet

    def _start(self, message: dict[str, Any]) -> list[bytes]:
        self._base["id"] = _completion_id(message.get("id"))
        self._base["model"] = str(message.get("model") or self._base["model"])
        self._count(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: Any, block: dict[str, Any]) -> list[bytes]:
        if block.get("type") == "text" and block.get("text"):
            self._usage.chunks += 1
            return [self._chunk({"content": block["text"]})]
        if block.get("type") == "tool_use" and isinstance(index, int):
            position = self._tool_index.setdefault(index, len(self._tool_index))
            call = {
                "index": position,
                "id": str(block.get("id") or ""),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and server-tool blocks are not part of OpenAI's chat format

    def _block_delta(self, index: Any, delta: dict[str, Any]) -> list[bytes]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            self._usage.chunks += 1
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            self._usage.chunks += 1
            piece = {"index": self._tool_index[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [piece]})]
        return []

    def _count(self, reported: Any) -> None:
        """Anthropic's counts are cumulative: message_start has the input, message_delta the output."""
        if isinstance(reported, dict):
            self._reported.update({k: v for k, v in reported.items() if isinstance(v, int)})
            counted = _usage_of(self._reported)
            if counted.reported:
                self._usage.prompt_tokens = counted.prompt_tokens
                self._usage.completion_tokens = counted.completion_tokens
                self._usage.reported = True

    def _stop(self) -> list[bytes]:
        out = [self._chunk({}, self._finish)]
        if self._include_usage and self._usage.reported:
            usage = _openai_usage(self._reported, self._usage)
            out.append(orjson.dumps({**self._base, "choices": [], "usage": usage}))
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return orjson.dumps({**self._base, "choices": [choice]})


def _content(blocks: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text and the OpenAI tool calls of a message's content blocks."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": str(block.get("name") or ""), "arguments": arguments}
            calls.append({"id": str(block.get("id") or ""), "type": "function", "function": function})
    return "".join(texts), calls


def _usage_of(reported: Any) -> Usage:
    if not isinstance(reported, dict) or not isinstance(reported.get("input_tokens"), int):
        return Usage()
    prompt = sum(
        int(reported.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Usage(prompt, int(reported.get("output_tokens") or 0), reported=True)


def _openai_usage(reported: Any, usage: Usage) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    cached = reported.get("cache_read_input_tokens") if isinstance(reported, dict) else None
    if isinstance(cached, int) and cached:
        doc["prompt_tokens_details"] = {"cached_tokens": cached}
    return doc


def _finish(stop_reason: Any) -> str:
    return _FINISH.get(str(stop_reason), "stop")


def _completion_id(message_id: Any) -> str:
    return f"chatcmpl-{message_id}" if message_id else f"chatcmpl-{time.time_ns()}"
