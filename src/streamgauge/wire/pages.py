"""Opaque page tokens: the ``next`` of one page, passed back unchanged as ``page=``."""

from __future__ import annotations

import base64
import binascii
import re

from streamgauge.wire.errors import WireError

MAX_TOKEN_CHARS = 1024
"""Longest page token accepted; the tokens the server hands out are far shorter."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def encode_page(key: str) -> str:
    """An opaque page token for ``key`` (base64url of its UTF-8, unpadded)."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_page(token: str) -> str:
    """The key of a token made by :func:`encode_page`; ``WireError`` for anything else (not
    base64url, not UTF-8 inside, too long)."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii() or not _TOKEN.fullmatch(token):
        raise WireError("not a page token")
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError("not a page token") from exc
