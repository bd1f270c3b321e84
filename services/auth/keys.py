"""API keys: format, generation, and keyed hashing.

A key is ``gw_live_`` or ``gw_test_`` followed by 32 base62 characters (~190 bits). Only an
HMAC-SHA256 of the whole key under the server's secret is stored; a key that is not of the
exact format is refused before any lookup, so garbage costs no database work.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from faregate.errors import AuthenticationFailed, Reason
from faregate.values import KeyMode

PREFIXES = {KeyMode.LIVE: "gw_live_", KeyMode.TEST: "gw_test_"}
BODY_LENGTH = 32
MAX_PRESENTED_LENGTH = 256
_ALPHABET = string.ascii_letters + string.digits
_FORMAT = re.compile(rf"gw_(live|test)_[A-Za-z0-9]{{{BODY_LENGTH}}}")


def generate(mode: KeyMode) -> str:
    return PREFIXES[mode] + "".join(secrets.choice(_ALPHABET) for _ in range(BODY_LENGTH))


def mode_of(presented: str) -> KeyMode:
    """The key's mode if it is well-formed; otherwise AuthenticationFailed, with no I/O."""
    if len(presented) > MAX_PRESENTED_LENGTH:
        raise AuthenticationFailed("API key is too long", reason=Reason.KEY_UNKNOWN)
    match = _FORMAT.fullmatch(presented)
    if match is None:
        raise AuthenticationFailed(
            "malformed API key: expected gw_live_… or gw_test_… followed by 32 letters or digits",
            reason=Reason.KEY_UNKNOWN,
        )
    return KeyMode(match.group(1))


def masked(key: str) -> str:
    return f"{key[:12]}…{key[-4:]}"


class KeyHasher:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the key-hashing secret must be at least 16 bytes")
        self._secret = secret

    def digest(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()

    @staticmethod
    def matches(stored: bytes, computed: bytes) -> bool:
        return hmac.compare_digest(stored, computed)
