"""An OpenAI chat-completions body as an Anthropic Messages API request.

==============================  ===============================================================
OpenAI                          Anthropic
==============================  ===============================================================
system / developer messages     top-level ``system`` (all of them, in order)
user, assistant messages        turns; consecutive turns of one role are merged into one
content parts                   text → text; ``image_url`` data: URL → base64 image, http(s) →
                                url image; ``file`` with a PDF data URL → document
assistant ``tool_calls``        ``tool_use`` blocks (arguments parsed from their JSON string)
``role: tool`` messages         ``tool_result`` blocks of a user turn
``tools`` (function)            ``{name, description, input_schema}``
``tool_choice``                 auto → auto, none → none, required → any, named → tool;
                                ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``
``max_completion_tokens``,      ``max_tokens`` (the smaller of the two; Anthropic requires it:
``max_tokens``                  4096 when neither is given)
``temperature``                 the same, capped at 1 (Anthropic's range is 0–1, OpenAI's 0–2)
``top_p``, ``top_k``            the same
``stop``                        ``stop_sequences``
``user``                        ``metadata.user_id``
==============================  ===============================================================

Other OpenAI parameters (``response_format``, penalties, ``seed``, ``logprobs``…) have no
Anthropic counterpart and are not sent. ``n`` above 1 and content Anthropic cannot take
(audio, uploaded file ids) are refused with ``InvalidRequest`` naming the field.
"""

from __future__ import annotations

from typing import Any

import orjson

from faregate.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 4096


def to_messages_request(model: str, body: dict[str, Any], provider: str) -> dict[str, Any]:
    """The Messages API request for the upstream model id ``model``."""
    if body.get("n") not in (None, 1):
        raise InvalidRequest(f"provider {provider} answers one choice per request: 'n' must be 1", param="n")
    system, turns = _conversation(body.get("messages") or [])
    limits = [body.get(k) for k in ("max_completion_tokens", "max_tokens")]
    numbers = [v for v in limits if isinstance(v, int) and not isinstance(v, bool)]
    payload: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": min(numbers, default=DEFAULT_MAX_TOKENS),
    }
    if system:
        cached = any("cache_control" in block for block in system)
        payload["system"] = system if cached else "\n\n".join(block["text"] for block in system)
    if isinstance(body.get("temperature"), int | float) and not isinstance(body.get("temperature"), bool):
        payload["temperature"] = min(max(float(body["temperature"]), 0.0), 1.0)
    for name in ("top_p", "top_k"):
        if isinstance(body.get(name), int | float) and not isinstance(body.get(name), bool):
            payload[name] = body[name]
    stop = body.get("stop")
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if any(isinstance(s, str) and s for s in sequences):
        payload["stop_sequences"] = [s for s in sequences if isinstance(s, str) and s]
    if isinstance(body.get("user"), str) and body["user"]:
        payload["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array", param="tools")
        payload["tools"] = [_tool(t, i) for i, t in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            payload["tool_choice"] = choice
    return payload


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, turns) of OpenAI chat messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(b for b in _parts(m.get("content"), f"messages[{i}].content") if b["type"] == "text")
        elif role == "user":
            _add_turn(turns, "user", _parts(m.get("content"), f"messages[{i}].content"))
        elif role == "assistant":
            _add_turn(turns, "assistant", _assistant_blocks(m, i))
        elif role == "tool":
            _add_turn(turns, "user", [_tool_result(m, i)])
        else:
            raise InvalidRequest(f"messages[{i}].role {role!r} is not supported", param=f"messages[{i}].role")
    return system, turns


def _add_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append a turn, or extend the last one if it has the same role (tool results, then text)."""
    if not blocks:
        return  # Anthropic refuses empty turns and empty text blocks
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Content blocks of a message's content: a string or a list of OpenAI content parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or an array of parts", param=where)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if isinstance(text, str) and text:
                blocks.append(_cached({"type": "text", "text": text}, part))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append(_cached({"type": "image", "source": _source(url, here, "image/")}, part))
        elif kind == "file":
            file = part.get("file") if isinstance(part.get("file"), dict) else {}
            data = file.get("file_data")
            if not isinstance(data, str):
                raise InvalidRequest(f"{here}: only inline PDF files (file_data) can be sent to Claude", param=here)
            blocks.append(_cached({"type": "document", "source": _source(data, here, "application/pdf")}, part))
        else:
            raise InvalidRequest(f"{here}: content of type {kind!r} cannot be sent to Claude", param=here)
    return blocks


def _source(url: Any, where: str, accepted: str) -> dict[str, Any]:
    """An Anthropic media source from a data: URL (base64) or an http(s) URL."""
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if sep and encoding == "base64" and media_type.startswith(accepted):
            return {"type": "base64", "media_type": media_type, "data": data}
        raise InvalidRequest(f"{where}: a data URL must be base64 {accepted}…", param=where)
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise InvalidRequest(f"{where}: expected a data: or http(s) URL", param=where)


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Keep a part's Anthropic ``cache_control`` marker (clients send it for prompt caching)."""
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _assistant_blocks(message: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = _parts(message.get("content"), f"messages[{i}].content")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"messages[{i}].tool_calls must be an array", param=f"messages[{i}].tool_calls")
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not call.get("id"):
            raise InvalidRequest(f"{where} must have an id and a function name", param=where)
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}.function.arguments is not valid JSON", param=where) from exc
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}.function.arguments must be a JSON object", param=where)
        blocks.append({"type": "tool_use", "id": str(call["id"]), "name": function["name"], "input": arguments})
    return blocks


def _tool_result(message: dict[str, Any], i: int) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"messages[{i}].tool_call_id is required", param=f"messages[{i}].tool_call_id")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            result["content"] = content
    else:
        blocks = _parts(content, f"messages[{i}].content")
        if blocks:
            result["content"] = blocks
    return result


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"tools[{i}] must be a function tool with a name", param=f"tools[{i}]")
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = {"type": "auto"} if parallel is False else None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest("'tool_choice' must be auto, none, required or a named function", param="tool_choice")
    if out and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out
