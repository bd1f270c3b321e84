"""``faregate/echo``: the built-in test model. Deterministic, free, no network.

It answers with the text of the last user message (truncated to ``max_tokens`` words), so a
fresh install can be tried end to end without any provider key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from faregate.tokens import estimate_messages, message_text
from services.router.providers.base import Completion, Provider, Usage


class EchoProvider(Provider):
    name = "faregate"

    def __init__(self, model_id: str) -> None:
        self._model_id = model_id

    def _answer(self, body: dict[str, Any]) -> tuple[list[str], int]:
        messages = body.get("messages") or []
        last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
        words = message_text(last.get("content") if last else "").split() or ["(empty)"]
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            words = words[:limit]
        return words, estimate_messages(messages)

    async def chat(self, model: str, body: dict[str, Any]) -> Completion:
        words, prompt_tokens = self._answer(body)
        usage = Usage(prompt_tokens, len(words), reported=True)
        doc = {
            "id": f"chatcmpl-echo-{time.time_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage_json(usage),
        }
        return Completion(orjson.dumps(doc), usage)

    async def chat_batches(
        self, model: str, body: dict[str, Any], usage: Usage, *, include_usage: bool
    ) -> AsyncGenerator[list[bytes], None]:
        words, prompt_tokens = self._answer(body)
        base = {
            "id": f"chatcmpl-echo-{time.time_ns()}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model_id,
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return orjson.dumps({**base, "choices": [choice], **extra})

        usage.prompt_tokens = prompt_tokens
        usage.reported = True
        yield [chunk({"role": "assistant", "content": ""})]
        for i, word in enumerate(words):
            usage.completion_tokens += 1
            usage.chunks += 1
            yield [chunk({"content": word if i == 0 else " " + word})]
        yield [chunk({}, "stop")]
        if include_usage:
            yield [orjson.dumps({**base, "choices": [], "usage": _usage_json(usage)})]


def _usage_json(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }
