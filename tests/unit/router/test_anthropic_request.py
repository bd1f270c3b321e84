"""Translating an OpenAI chat-completions body into an Anthropic Messages API request."""

from __future__ import annotations

from typing import Any

import pytest

from faregate.errors import InvalidRequest
from services.router.providers.anthropic_request import to_messages_request


def translate(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return to_messages_request("claude-x", {"model": "public", **body}, "claude")


def test_sampling_parameters_map_to_their_anthropic_names() -> None:
    out = translate(
        temperature=1.7, top_p=0.9, top_k=40, stop="END", user="user-42", max_tokens=300, seed=1, presence_penalty=1
    )
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 300,
        "temperature": 1.0,  # Anthropic's range ends at 1
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }
    assert translate(stop=["a", "", "b"])["stop_sequences"] == ["a", "b"]
    assert translate(max_completion_tokens=64)["max_tokens"] == 64
    assert translate(temperature=0)["temperature"] == 0.0


def test_images_and_pdfs_become_media_blocks() -> None:
    content = [
        {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    [turn] = translate(messages=[{"role": "user", "content": content}])["messages"]
    assert turn["content"] == [
        {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
    ]


def test_system_prompt_with_cache_markers_stays_in_blocks() -> None:
    system = [{"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}]
    out = translate(messages=[{"role": "system", "content": system}, {"role": "user", "content": "q"}])
    assert out["system"] == [{"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}]


def test_turns_of_one_role_are_merged_and_empty_ones_dropped() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "answer"},
        {"role": "user", "content": "again"},
    ]
    out = translate(messages=messages)["messages"]
    assert out == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "answer"}]},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", False, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any] | None) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = translate(tools=tools, tool_choice=choice, parallel_tool_calls=parallel)
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
    assert out.get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in translate(tool_choice="required")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}, ""),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, ""),
        ({"messages": [{"role": "tool", "content": "result without a call id"}]}, "messages[0].tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0]",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "g"}}]}, "tools[0]"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_what_claude_cannot_take_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        translate(**body)
    assert (info.value.param or "").startswith(param)
