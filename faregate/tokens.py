"""Offline token estimates, for when an upstream reports no usage.

No tokenizer files are downloaded at run time. The estimate follows OpenAI's published rule
of thumb (about 4 characters of English per token) with a floor of one token per word-like
run, and every record built from it is marked ``estimated``.
"""

from __future__ import annotations

import re
from typing import Any

_WORDS = re.compile(r"\w+|[^\w\s]")
_PER_MESSAGE = 4  # role and separators, as in OpenAI's chat format accounting


def estimate_text(text: str) -> int:
    if not text:
        return 0
    return max(len(_WORDS.findall(text)), -(-len(text) // 4))


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_messages(messages: list[Any]) -> int:
    total = 3
    for m in messages:
        if isinstance(m, dict):
            total += _PER_MESSAGE + estimate_text(message_text(m.get("content")))
    return total
