"""Strict, bounded JSON input: the one parser for JSON that arrives from outside.

Every JSON document that crosses a trust boundary (an HTTP body, a witness or host
answer, an error body from a server we do not trust) is read here: a size limit
before parsing, UTF-8, exactly one object, no duplicate keys, no NaN or Infinity,
and no way for a deeply nested or huge-integer document to escape as anything but
:class:`bkv.errors.CodecError` (docs/protocol.md, "JSON"). Values are then read
with :func:`parse_hex` and :func:`parse_uint64`, which accept one spelling each.
"""

from __future__ import annotations

import json
from typing import Any

from bkv.errors import CodecError, NonCanonicalError, SizeLimitError

__all__ = [
    "MAX_QUOTED_TEXT",
    "UINT64_MAX",
    "parse_hex",
    "parse_json_object",
    "parse_uint64",
    "quote_untrusted",
]

UINT64_MAX = (1 << 64) - 1

#: How much of a peer's free text (an error ``message``) goes into our own errors.
MAX_QUOTED_TEXT = 200


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise NonCanonicalError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise NonCanonicalError(f"JSON constant {name} is not allowed")


def parse_json_object(body: bytes, max_size: int) -> dict[str, Any]:
    """Parse a JSON object strictly: size limit, UTF-8, no duplicate keys, no NaN."""
    if not body:
        raise SizeLimitError("empty request body")
    if len(body) > max_size:
        raise SizeLimitError(f"request body over {max_size} bytes")
    try:
        data = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError and integers beyond Python's digit limit;
        # RecursionError a deeply nested body. Neither may escape as a server error.
        raise CodecError("request body is not UTF-8 JSON within limits") from None
    if not isinstance(data, dict):
        raise CodecError("request body is not a JSON object")
    return data


def parse_hex(value: object, field: str, *, max_bytes: int, exact: int | None = None) -> bytes:
    """Lowercase even-length hex within limits (CodecError subclasses)."""
    if not isinstance(value, str):
        raise CodecError(f"{field} must be a hex string")
    if len(value) > 2 * max_bytes:
        raise SizeLimitError(f"{field} is over {max_bytes} bytes")
    if len(value) % 2 or any(c not in "0123456789abcdef" for c in value):
        raise NonCanonicalError(f"{field} is not lowercase hex")
    raw = bytes.fromhex(value)
    if exact is not None and len(raw) != exact:
        raise SizeLimitError(f"{field} must be {exact} bytes")
    if not raw:
        raise SizeLimitError(f"{field} is empty")
    return raw


def parse_uint64(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= UINT64_MAX:
        raise CodecError(f"{field} must be an integer in [0, 2**64)")
    return value


def quote_untrusted(value: object, max_len: int = MAX_QUOTED_TEXT) -> str:
    """A peer's free text, made safe to put in an error or a log line.

    Only a string is quoted; it is cut to ``max_len`` characters and every
    character that is not printable (control characters, line breaks, escape
    sequences that would repaint a terminal) is replaced by ``?``, so that an
    untrusted server can neither flood our errors nor forge log lines.
    """
    if not isinstance(value, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in value[:max_len])
