"""The edge's one request check (services/edge/requests.py) against OpenAI's own request
schemas: bad bodies are 400s naming ``param``; whatever it accepts is valid by the schema."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import orjson
import pytest

from faregate.errors import InvalidRequest
from services.edge import requests
from tests.openai_schema import validate

USER = {"role": "user", "content": "a secret prompt"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()  # json: orjson will not write past 254 levels


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_CHAT = [
    (chat(temperature="hot"), "temperature"),
    (chat(temperature=2.5), "temperature"),
    (chat(top_p=True), "top_p"),
    (chat(n=-1), "n"),
    (chat(n=0), "n"),
    (chat(n=129), "n"),
    (chat(n=1.5), "n"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_completion_tokens="10"), "max_completion_tokens"),
    (chat(stream="yes"), "stream"),
    (chat(stream_options="x"), "stream_options"),
    (chat(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (chat(tools="x"), "tools"),
    (chat(tools=[{"type": "function"}]), "tools[0].function"),
    (chat(tools=[{"type": "function", "function": {"name": 1}}]), "tools[0].function.name"),
    (chat(tools=[{"type": "browser"}]), "tools[0].type"),
    (chat(tool_choice="always"), "tool_choice"),
    (chat(tool_choice={"type": "function"}), "tool_choice.function"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(stop=5), "stop"),
    (chat(logit_bias={"50256": "x"}), "logit_bias"),
    (chat(response_format={"type": "xml"}), "response_format.type"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema"),
    (chat(seed="1"), "seed"),
    (chat(top_logprobs=21), "top_logprobs"),
    (chat(metadata={"a": 1}), "metadata"),
    (chat(service_tier="gold"), "service_tier"),
    (chat(user=7), "user"),
    (chat(model=""), "model"),
    (chat(model=3), "model"),
    ({"messages": [USER]}, "model"),
    ({"model": "m"}, "messages"),
    (chat(messages=[]), "messages"),
    (chat(messages="hi"), "messages"),
    (chat(messages=[1, 2]), "messages[0]"),
    (chat(messages=[USER, None]), "messages[1]"),
    (chat(messages=[{}]), "messages[0].role"),
    (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user"}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": []}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": [1]}]), "messages[0].content[0]"),
    (chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
    (chat(messages=[{"role": "user", "content": [{"type": "video"}]}]), "messages[0].content[0].type"),
    (chat(messages=[{"role": "system", "content": [{"type": "image_url"}]}]), "messages[0].content[0].type"),
    (
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0].image_url.url",
    ),
    (chat(messages=[{"role": "user", "content": "x", "name": 1}]), "messages[0].name"),
    (chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    (
        chat(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]),
        "messages[0].tool_calls[0].function",
    ),
    (chat(messages=[{"role": "assistant", "content": 1}]), "messages[0].content"),
    (chat(messages=[{"role": "function", "content": "x"}]), "messages[0].name"),
    # nesting: the router re-serialises the body, and orjson refuses past 254 levels
    (chat(messages=[{"role": "user", "content": "x", "extra": nested(300)}]), "messages"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "x", "x": nested(300)}]}]), "messages"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"a": nested(300)}}}]), "tools"),
    (chat(something_else=nested(300)), "something_else"),
]

BAD_EMBEDDINGS = [
    ({"model": "m"}, "input"),
    ({"input": "x"}, "model"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": [None]}, "input"),
    ({"model": "m", "input": ["a", 1]}, "input"),
    ({"model": "m", "input": [[]]}, "input"),
    ({"model": "m", "input": [[1, "2"]]}, "input"),
    ({"model": "m", "input": ["x"] * 2049}, "input"),
    ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "x", "extra": nested(300)}, "extra"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_a_bad_chat_body_is_refused_naming_its_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        requests.parse(raw(body))
    assert refused.value.param == param and refused.value.http_status == 400
    assert "secret" not in refused.value.message  # never the prompt's text


@pytest.mark.parametrize(("body", "param"), BAD_EMBEDDINGS, ids=[p for _, p in BAD_EMBEDDINGS])
def test_a_bad_embeddings_body_is_refused_naming_its_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        requests.parse(raw(body), embeddings=True)
    assert refused.value.param == param


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"x"', b"null", b"{" * 2000])
def test_what_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        requests.parse(body)


GOOD_CHAT = [
    chat(),
    chat(temperature=0, top_p=1, n=2, max_tokens=5, max_completion_tokens=7, seed=-3, stream=None),
    chat(stream=True, stream_options={"include_usage": True}, stop=["\n"], logprobs=True, top_logprobs=3),
    chat(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
    ),
    chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"a": nested(40)}}}),
    chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "x"}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "name": "bot"},
        ]
    ),
    chat(logit_bias={"50256": -100}, metadata={"k": "v"}, user="u", store=False, service_tier="auto"),
    chat(reasoning_effort="low", verbosity="high", modalities=["text"], safety_identifier="s"),
    chat(top_k=40, repetition_penalty=1.1),  # extras other OpenAI-compatible servers take pass through
]

GOOD_EMBEDDINGS = [
    {"model": "m", "input": "x"},
    {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8, "user": "u"},
    {"model": "m", "input": [1, 2, 3]},
    {"model": "m", "input": [[1, 2], [3]]},
]


@pytest.mark.parametrize("body", GOOD_CHAT)
def test_a_good_chat_body_is_accepted_and_valid_by_the_schema(body: dict[str, Any]) -> None:
    assert requests.parse(orjson.dumps(body)) == body
    validate("CreateChatCompletionRequest", body)


@pytest.mark.parametrize("body", GOOD_EMBEDDINGS)
def test_a_good_embeddings_body_is_accepted_and_valid_by_the_schema(body: dict[str, Any]) -> None:
    assert requests.parse(orjson.dumps(body), embeddings=True) == body
    validate("CreateEmbeddingRequest", body)


def test_faregate_fallbacks_stand_in_for_the_model() -> None:
    assert requests.parse(orjson.dumps({"models": ["a", "b"], "messages": [USER]}))["models"] == ["a", "b"]


# -- generated bodies: whatever is accepted is valid by OpenAI's schema ---------------------

# Fields checked only for their shape (passed on whole) are left out: the property is for the
# fields the check claims to know.
LOOSE = {"audio", "prediction", "web_search_options", "moderation"}
FIELDS = sorted(set(requests._CHAT_FIELDS) - LOOSE)
SCALARS: list[Any] = [None, True, False, 0, 1, -1, 2, 3, 21, 128, 129, 2**40, 0.5, 1.5, 2.5, -2.5, "", "x"]
SCALARS += ["auto", "none", "required", "text", "audio", "low", "function", "json_object", "user", "float"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice(SCALARS)
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["type", "name", "text", "content", "role", "function", "url", "image_url", "include_usage", "x"]
    keys += ["tool_call_id", "arguments", "json_schema", "parameters", "id", "mode", "tools", "refusal"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _message(rng: random.Random) -> Any:
    if rng.random() < 0.2:
        return _value(rng)
    m = {"role": rng.choice(["system", "developer", "user", "assistant", "tool", "function", "x"])}
    for key in rng.sample(["content", "name", "tool_call_id", "tool_calls", "refusal", "function_call"], 3):
        if rng.random() < 0.6:
            m[key] = rng.choice(["hi", None, [{"type": "text", "text": "t"}], _value(rng)])
    return m


def _body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [USER]}
    for name in rng.sample(FIELDS, rng.randint(1, 4)):
        body[name] = [_message(rng) for _ in range(rng.randint(0, 3))] if name == "messages" else _value(rng)
    return body


@pytest.mark.parametrize("seed", range(20))
def test_every_generated_body_it_accepts_is_valid_and_every_refusal_names_a_field(seed: int) -> None:
    rng = random.Random(seed)
    accepted = 0
    for _ in range(500):
        body = _body(rng)
        try:
            requests.parse(orjson.dumps(body))
        except InvalidRequest as refused:
            assert refused.param is not None
            assert refused.param.split("[")[0].split(".")[0] in body, refused.param
            continue
        accepted += 1
        try:
            validate("CreateChatCompletionRequest", body)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"accepted but invalid by OpenAI's schema: {body!r}: {exc.message}") from None
    assert accepted > 0  # the generator reaches both sides


@pytest.mark.parametrize("seed", range(5))
def test_every_generated_embeddings_body_it_accepts_is_valid(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        body: dict[str, Any] = {"model": "m", "input": "x"}
        for name in rng.sample(sorted(requests._EMBEDDING_FIELDS), rng.randint(1, 3)):
            body[name] = _value(rng)
        try:
            requests.parse(orjson.dumps(body), embeddings=True)
        except InvalidRequest as refused:
            assert refused.param in body
            continue
        validate("CreateEmbeddingRequest", body)
