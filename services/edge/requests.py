"""Request validation: the one check of an inference body, at the gateway core.

``parse(raw, endpoint)`` parses the client's JSON once and refuses, with ``InvalidRequest``
naming ``param``, what OpenAI's request schemas (``CreateChatCompletionRequest``,
``CreateEmbeddingRequest`` in OpenAI's OpenAPI document) do not allow for the fields they
define — so a malformed body never reaches the router, an upstream, or a provider's breaker
(issue 22). What it accepts is valid against those schemas (tests/unit/edge/test_requests.py
checks it with Hypothesis and jsonschema); it accepts less in two places, where the router
needs it: ``model`` a non-empty string and ``max_tokens``/``max_completion_tokens`` ≥ 1.

Beyond the schemas: nesting is bounded (:data:`MAX_DEPTH`) everywhere, since the router
re-serialises the body and free-form fields (tool parameters, JSON schemas, extra keys) are
otherwise unbounded; Faregate's own fields (``models``, ``task``) are left to the router;
other unknown fields pass through to the upstream, as OpenAI-compatible servers take extras.

The checks are written by hand, field by field (a schema interpreter per request would cost
more than the rest of the edge's work): one dict lookup per field, one pass over messages.
Error messages name the field and what it must be, never its value (it may be prompt text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from faregate.errors import InvalidRequest

MAX_DEPTH = 64  # arrays/objects nested deeper than this are refused (orjson itself stops at 1024)

Check = Callable[[Any, str], None]


def parse(raw: bytes, embeddings: bool = False) -> dict[str, Any]:
    """The body as a dict, checked for chat completions or (``embeddings``) embeddings."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    fields = _EMBEDDING_FIELDS if embeddings else _CHAT_FIELDS
    for name, value in body.items():
        check = fields.get(name)
        if check is not None:
            check(value, name)
        else:
            _free(value, name)
    if "model" not in body and not body.get("models"):
        raise InvalidRequest("'model' is required", param="model")
    if embeddings:
        if "input" not in body:
            raise InvalidRequest("'input' is required", param="input")
    elif "messages" not in body:
        raise InvalidRequest("'messages' is required", param="messages")
    return body


# -- building blocks ---------------------------------------------------------------------


def _bad(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' must be {what}", param=param)


def _too_deep(param: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' is nested more than {MAX_DEPTH} levels deep", param=param)


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` holds arrays or objects nested more than ``limit`` levels."""
    if not isinstance(value, (list, dict)):
        return False
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        nxt = []
        for v in level:
            for c in v.values() if isinstance(v, dict) else v:
                if isinstance(c, (list, dict)):
                    nxt.append(c)
        level = nxt
    return False


def _free(value: Any, param: str) -> None:
    """A top-level field's value (the body is level 1, the value level 2): its nesting is bounded."""
    if _deeper(value, MAX_DEPTH - 1):
        raise _too_deep(param)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_num(v: Any) -> bool:
    return type(v) is int or type(v) is float


def _string(v: Any, p: str) -> None:
    if type(v) is not str:
        raise _bad(p, "a string")


def _model(v: Any, p: str) -> None:
    if type(v) is not str or not v:
        raise _bad(p, "a non-empty string")


def _boolean(v: Any, p: str) -> None:
    if type(v) is not bool:
        raise _bad(p, "a boolean")


def _nullable(check: Check) -> Check:
    def nullable(v: Any, p: str) -> None:
        if v is not None:
            check(v, p)

    return nullable


def _number(lo: float, hi: float) -> Check:
    def number(v: Any, p: str) -> None:
        if v is not None and (not _is_num(v) or not lo <= v <= hi):
            raise _bad(p, f"a number from {lo:g} to {hi:g}")

    return number


def _integer(lo: int, hi: int | None = None, *, nullable: bool = True) -> Check:
    what = f"an integer from {lo} to {hi}" if hi is not None else f"an integer of at least {lo}"

    def integer(v: Any, p: str) -> None:
        if (v is not None or not nullable) and (not _is_int(v) or v < lo or (hi is not None and v > hi)):
            raise _bad(p, what)

    return integer


def _one_of(*values: str, nullable: bool = True) -> Check:
    allowed = frozenset(values)
    what = "one of " + ", ".join(repr(v) for v in values)

    def one_of(v: Any, p: str) -> None:
        if (v is not None or not nullable) and (type(v) is not str or v not in allowed):
            raise _bad(p, what)

    return one_of


def _object(v: Any, p: str) -> dict[str, Any]:
    if type(v) is not dict:
        raise _bad(p, "an object")
    return v


def _required_string(obj: dict[str, Any], key: str, p: str) -> None:
    if type(obj.get(key)) is not str:
        raise _bad(f"{p}.{key}", "a string")


# -- chat completions --------------------------------------------------------------------

_ROLES_TEXT_ONLY = frozenset({"text"})
_PART_TYPES = {
    "system": _ROLES_TEXT_ONLY,
    "developer": _ROLES_TEXT_ONLY,
    "tool": _ROLES_TEXT_ONLY,
    "user": frozenset({"text", "image_url", "input_audio", "file"}),
    "assistant": frozenset({"text", "refusal"}),
}


def _part(part: Any, p: str, allowed: frozenset[str]) -> None:
    if type(part) is not dict:
        raise _bad(p, "a content part object")
    kind = part.get("type")
    if kind not in allowed:
        raise _bad(f"{p}.type", "one of " + ", ".join(repr(t) for t in sorted(allowed)))
    if kind == "text":
        _required_string(part, "text", p)
    elif kind == "refusal":
        _required_string(part, "refusal", p)
    elif kind == "image_url":
        image = _object(part.get("image_url"), f"{p}.image_url")
        _required_string(image, "url", f"{p}.image_url")
        _one_of("auto", "low", "high")(image.get("detail", "auto"), f"{p}.image_url.detail")
    elif kind == "input_audio":
        audio = _object(part.get("input_audio"), f"{p}.input_audio")
        _required_string(audio, "data", f"{p}.input_audio")
        _one_of("wav", "mp3", nullable=False)(audio.get("format"), f"{p}.input_audio.format")
    else:  # file
        file = _object(part.get("file"), f"{p}.file")
        for key in ("filename", "file_data", "file_id"):
            if key in file:
                _required_string(file, key, f"{p}.file")
    if "prompt_cache_breakpoint" in part:
        mark = _object(part["prompt_cache_breakpoint"], f"{p}.prompt_cache_breakpoint")
        _one_of("explicit", nullable=False)(mark.get("mode"), f"{p}.prompt_cache_breakpoint.mode")


def _content(content: Any, p: str, role: str) -> None:
    if type(content) is str:
        return
    if type(content) is not list or not content:
        raise _bad(p, "a string or a non-empty array of content parts")
    allowed = _PART_TYPES[role]
    for j, part in enumerate(content):
        _part(part, f"{p}[{j}]", allowed)


def _tool_calls(calls: Any, p: str) -> None:
    if type(calls) is not list:
        raise _bad(p, "an array of tool calls")
    for j, call in enumerate(calls):
        q = f"{p}[{j}]"
        call = _object(call, q)
        _required_string(call, "id", q)
        kind = call.get("type")
        if kind not in ("function", "custom"):
            raise _bad(f"{q}.type", "'function' or 'custom'")
        inner = _object(call.get(kind), f"{q}.{kind}")
        _required_string(inner, "name", f"{q}.{kind}")
        _required_string(inner, "arguments" if kind == "function" else "input", f"{q}.{kind}")


def _message(m: Any, p: str) -> None:
    if type(m) is not dict:
        raise _bad(p, "a message object")
    role = m.get("role")
    if role not in _PART_TYPES and role != "function":
        raise _bad(f"{p}.role", "one of 'system', 'developer', 'user', 'assistant', 'tool', 'function'")
    content = m.get("content")
    if role == "assistant":
        if content is not None:
            _content(content, f"{p}.content", role)
        if m.get("refusal") is not None:
            _string(m["refusal"], f"{p}.refusal")
        if "tool_calls" in m:
            _tool_calls(m["tool_calls"], f"{p}.tool_calls")
        if m.get("function_call") is not None:
            call = _object(m["function_call"], f"{p}.function_call")
            _required_string(call, "name", f"{p}.function_call")
            _required_string(call, "arguments", f"{p}.function_call")
        if m.get("audio") is not None:
            _required_string(_object(m["audio"], f"{p}.audio"), "id", f"{p}.audio")
    elif role == "function":
        if "content" not in m or (content is not None and type(content) is not str):
            raise _bad(f"{p}.content", "a string or null")
        _required_string(m, "name", p)
    else:
        if content is None:
            raise _bad(f"{p}.content", "a string or a non-empty array of content parts")
        _content(content, f"{p}.content", role)
        if role == "tool":
            _required_string(m, "tool_call_id", p)
    if "name" in m:
        _string(m["name"], f"{p}.name")


def _messages(v: Any, p: str) -> None:
    if type(v) is not list or not v:
        raise _bad(p, "a non-empty array of messages")
    for i, m in enumerate(v):
        _message(m, f"{p}[{i}]")
    _free(v, p)  # extra keys, and what the checks above leave free-form


def _stream_options(v: Any, p: str) -> None:
    if v is None:
        return
    options = _object(v, p)
    for key in ("include_usage", "include_obfuscation"):
        if key in options:
            _boolean(options[key], f"{p}.{key}")
    _free(options, p)


def _stop(v: Any, p: str) -> None:
    if v is None or type(v) is str:
        return
    if type(v) is not list or not 1 <= len(v) <= 4 or any(type(s) is not str for s in v):
        raise _bad(p, "a string or an array of 1 to 4 strings")


def _logit_bias(v: Any, p: str) -> None:
    if v is not None and (type(v) is not dict or not all(_is_int(b) for b in v.values())):
        raise _bad(p, "an object of integers")


def _metadata(v: Any, p: str) -> None:
    if v is not None and (type(v) is not dict or not all(type(s) is str for s in v.values())):
        raise _bad(p, "an object of strings")


def _function(fn: Any, p: str) -> None:
    fn = _object(fn, p)
    _required_string(fn, "name", p)
    if "description" in fn:
        _string(fn["description"], f"{p}.description")
    if "parameters" in fn:
        _object(fn["parameters"], f"{p}.parameters")
    if fn.get("strict") is not None:
        _boolean(fn["strict"], f"{p}.strict")


def _tools(v: Any, p: str) -> None:
    if type(v) is not list:
        raise _bad(p, "an array of tools")
    for i, tool in enumerate(v):
        q = f"{p}[{i}]"
        tool = _object(tool, q)
        kind = tool.get("type")
        if kind == "function":
            _function(tool.get("function"), f"{q}.function")
        elif kind == "custom":
            custom = _object(tool.get("custom"), f"{q}.custom")
            _required_string(custom, "name", f"{q}.custom")
            if "format" in custom:
                _one_of("text", "grammar", nullable=False)(
                    _object(custom["format"], f"{q}.custom.format").get("type"), f"{q}.custom.format.type"
                )
        else:
            raise _bad(f"{q}.type", "'function' or 'custom'")
    _free(v, p)


def _functions(v: Any, p: str) -> None:
    if type(v) is not list or not 1 <= len(v) <= 128:
        raise _bad(p, "an array of 1 to 128 functions")
    for i, fn in enumerate(v):
        _function(fn, f"{p}[{i}]")
    _free(v, p)


def _tool_choice(v: Any, p: str) -> None:
    if type(v) is str:
        if v not in ("none", "auto", "required"):
            raise _bad(p, "'none', 'auto', 'required' or an object")
        return
    choice = _object(v, p)
    kind = choice.get("type")
    if kind in ("function", "custom"):
        _required_string(_object(choice.get(kind), f"{p}.{kind}"), "name", f"{p}.{kind}")
    elif kind == "allowed_tools":
        allowed = _object(choice.get("allowed_tools"), f"{p}.allowed_tools")
        _one_of("auto", "required", nullable=False)(allowed.get("mode"), f"{p}.allowed_tools.mode")
        tools = allowed.get("tools")
        if type(tools) is not list or any(type(t) is not dict for t in tools):
            raise _bad(f"{p}.allowed_tools.tools", "an array of objects")
    else:
        raise _bad(f"{p}.type", "'function', 'custom' or 'allowed_tools'")
    _free(choice, p)


def _function_call(v: Any, p: str) -> None:
    if type(v) is str:
        if v not in ("none", "auto"):
            raise _bad(p, "'none', 'auto' or an object")
        return
    _required_string(_object(v, p), "name", p)
    _free(v, p)


def _response_format(v: Any, p: str) -> None:
    fmt = _object(v, p)
    kind = fmt.get("type")
    if kind == "json_schema":
        schema = _object(fmt.get("json_schema"), f"{p}.json_schema")
        _required_string(schema, "name", f"{p}.json_schema")
        if "description" in schema:
            _string(schema["description"], f"{p}.json_schema.description")
        if "schema" in schema:
            _object(schema["schema"], f"{p}.json_schema.schema")
        if schema.get("strict") is not None:
            _boolean(schema["strict"], f"{p}.json_schema.strict")
    elif kind not in ("text", "json_object"):
        raise _bad(f"{p}.type", "'text', 'json_object' or 'json_schema'")
    _free(fmt, p)


def _modalities(v: Any, p: str) -> None:
    if v is not None and (type(v) is not list or any(m not in ("text", "audio") for m in v)):
        raise _bad(p, "an array of 'text' and 'audio'")


def _loose_object(v: Any, p: str) -> None:
    """Fields passed on whole (audio, prediction, web search, moderation): shape and depth."""
    if v is not None:
        _free(_object(v, p), p)


def _short_string(v: Any, p: str) -> None:
    if v is not None and (type(v) is not str or len(v) > 64):
        raise _bad(p, "a string of at most 64 characters")


_CHAT_FIELDS: dict[str, Check] = {
    "model": _model,
    "messages": _messages,
    "stream": _nullable(_boolean),
    "stream_options": _stream_options,
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "n": _integer(1, 128),
    "max_tokens": _integer(1),
    "max_completion_tokens": _integer(1),
    "seed": _integer(-(2**63), 2**63 - 1),
    "logprobs": _nullable(_boolean),
    "top_logprobs": _integer(0, 20, nullable=False),
    "stop": _stop,
    "logit_bias": _logit_bias,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "functions": _functions,
    "function_call": _function_call,
    "response_format": _response_format,
    "user": _string,
    "safety_identifier": _short_string,
    "prompt_cache_key": _nullable(_string),
    "metadata": _metadata,
    "store": _nullable(_boolean),
    "service_tier": _one_of("auto", "default", "flex", "scale", "priority", "fast"),
    "reasoning_effort": _one_of("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": _one_of("low", "medium", "high"),
    "modalities": _modalities,
    "audio": _loose_object,
    "prediction": _loose_object,
    "web_search_options": _loose_object,
    "moderation": _loose_object,
}


# -- embeddings --------------------------------------------------------------------------


def _input(v: Any, p: str) -> None:
    if type(v) is str:
        if not v:
            raise _bad(p, "a non-empty string or array")
        return
    what = "a string, or an array of 1 to 2048 strings, integers or non-empty arrays of integers"
    if type(v) is not list or not 1 <= len(v) <= 2048:
        raise _bad(p, what)
    first = type(v[0])
    if first is str or first is int:
        if any(type(x) is not first for x in v):
            raise _bad(p, what)
    elif first is list:
        if any(type(x) is not list or not x or any(type(t) is not int for t in x) for x in v):
            raise _bad(p, what)
    else:
        raise _bad(p, what)


_EMBEDDING_FIELDS: dict[str, Check] = {
    "model": _model,
    "input": _input,
    "encoding_format": _one_of("float", "base64", nullable=False),
    "dimensions": _integer(1, nullable=False),
    "user": _string,
}
