"""Opaque page cursors: the position after the last row a page showed.

A cursor is URL-safe base64 of ``<kind>:<parts…>``; a cursor of another kind, or one that
does not decode, is a 400 (``invalid_cursor``), never a silently different page.
"""

from __future__ import annotations

import base64
import binascii

from faregate.errors import InvalidRequest

MAX_PAGE = 1000  # the public views allow at most 100; internal callers (tests, tools) more
DEFAULT_PAGE = 20


def encode(kind: str, *parts: object) -> str:
    raw = ":".join([kind, *(str(p) for p in parts)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(kind: str, cursor: str, count: int) -> list[str]:
    """The ``count`` parts of a cursor made by :func:`encode` with the same ``kind``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    found, *parts = raw.split(":", count)
    if found != kind or len(parts) != count or not all(parts):
        raise InvalidRequest("cursor is not one this list gave out", code="invalid_cursor", param="cursor")
    return parts


def page_size(limit: int) -> int:
    if limit < 0 or limit > MAX_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    return limit or DEFAULT_PAGE
