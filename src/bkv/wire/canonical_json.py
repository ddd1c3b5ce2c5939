"""Strict canonical JSON for artifacts that people and outside tools read.

The fleet-key artifact and similar documents are hashed and signed, so they
need exactly one byte encoding. This module implements a subset of the JSON
Canonicalization Scheme (JCS, RFC 8785) — every output is valid JCS, and
:func:`loads` accepts only bytes that :func:`dumps` would produce:

- values: ``null``, ``true``/``false``, integers, strings, arrays, objects.
  No floating point: numbers are integers within the I-JSON safe range
  ``[-(2**53 - 1), 2**53 - 1]`` (RFC 7493 section 2.2), which JCS serializes as
  plain decimal (RFC 8785 section 3.2.2.3), so no float formatting is involved;
- UTF-8, no byte order mark, no whitespace between tokens (RFC 8785 section 3.2.1);
- object members sorted by the UTF-16 code units of their names (RFC 8785
  section 3.2.3), names unique (RFC 8259 section 4 "SHOULD", made a MUST);
- strings escaped as RFC 8785 section 3.2.2.2 says: ``\\"``, ``\\\\``, ``\\b``, ``\\f``,
  ``\\n``, ``\\r``, ``\\t``, other controls below U+0020 as ``\\u00xx`` (lower-case
  hex), everything else literal; lone surrogates are rejected (RFC 7493 section 2.1).

Decoding checks the size and nesting-depth limits before parsing, parses with
duplicate names, non-integers, NaN/Infinity refused, then re-encodes the value
and compares bytes: any other spelling (whitespace, unsorted names, ``-0``,
``1e2``, ``\\u0041`` for ``A``, ...) is :class:`~bkv.errors.NonCanonicalError`.
Values decode to ``None``, ``bool``, ``int``, ``str``, ``list``, ``dict``
(:func:`dumps` also takes tuples, as arrays).
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

from bkv.errors import (
    InvalidValueError,
    NonCanonicalError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
)

#: Largest canonical JSON document accepted or produced by default.
MAX_JSON_SIZE = 1 << 20
#: Deepest nesting of arrays/objects accepted or produced by default.
MAX_JSON_DEPTH = 32
#: I-JSON / JCS integer range (RFC 7493 section 2.2): exactly representable as doubles.
MAX_SAFE_INTEGER = (1 << 53) - 1
MIN_SAFE_INTEGER = -MAX_SAFE_INTEGER

JsonValue: TypeAlias = bool | int | str | list["JsonValue"] | dict[str, "JsonValue"] | None


def _utf16_key(name: str) -> bytes:
    # Big-endian UTF-16 bytes compare in the same order as UTF-16 code units.
    return name.encode("utf-16-be", "surrogatepass")


def _check_string(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: string holds a lone surrogate") from None


def _encode_string(text: str) -> str:
    # json.dumps(ensure_ascii=False) escapes exactly the RFC 8785 set: '"', '\\',
    # the short forms \b \f \n \r \t and other C0 controls as lower-case \u00xx.
    return json.dumps(text, ensure_ascii=False)


def _encode(value: object, parts: list[str], depth: int, max_depth: int) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        if not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} outside the I-JSON safe range")
        parts.append(str(int(value)))
    elif isinstance(value, str):
        _check_string(value, "string")
        parts.append(_encode_string(value))
    elif isinstance(value, list | tuple):
        if depth >= max_depth:
            raise ValueError(f"nesting deeper than {max_depth}")
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, parts, depth + 1, max_depth)
        parts.append("]")
    elif isinstance(value, dict):
        if depth >= max_depth:
            raise ValueError(f"nesting deeper than {max_depth}")
        for name in value:
            if not isinstance(name, str):
                raise TypeError(f"object member names must be str, not {type(name).__name__}")
            _check_string(name, "member name")
        parts.append("{")
        for index, name in enumerate(sorted(value, key=_utf16_key)):
            if index:
                parts.append(",")
            parts.append(_encode_string(name))
            parts.append(":")
            _encode(value[name], parts, depth + 1, max_depth)
        parts.append("}")
    elif isinstance(value, float):
        raise TypeError("floating-point numbers are not allowed in canonical JSON")
    else:
        raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def dumps(
    value: object, *, max_size: int = MAX_JSON_SIZE, max_depth: int = MAX_JSON_DEPTH
) -> bytes:
    """The canonical JSON bytes of ``value``.

    ``TypeError`` for values outside the subset (floats, bytes, non-str names, ...);
    ``ValueError`` for out-of-range integers, lone surrogates, or output over the limits.
    """
    parts: list[str] = []
    _encode(value, parts, 0, max_depth)
    data = "".join(parts).encode("utf-8")
    if len(data) > max_size:
        raise ValueError(f"canonical JSON is {len(data)} bytes, over max_size={max_size}")
    return data


def _check_depth(text: str, max_depth: int) -> None:
    """Reject nesting deeper than ``max_depth`` before the recursive parser sees it."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise SizeLimitError(f"canonical JSON nests deeper than {max_depth}")
        elif char in "]}":
            # Clamped at 0: an unmatched closer must not hide the openers after it.
            depth = max(depth - 1, 0)


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            raise NonCanonicalError("canonical JSON object has a duplicate member name")
        result[name] = value
    return result


def _refuse_float(literal: str) -> Any:
    raise InvalidValueError("canonical JSON allows integers only, not fractions or exponents")


def _refuse_constant(literal: str) -> Any:
    raise InvalidValueError(f"canonical JSON does not allow {literal}")


def _check_ints(value: Any) -> None:
    # Iterative: the depth is already bounded, but keep the walk flat anyway.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        if isinstance(item, int):
            if not MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise InvalidValueError("canonical JSON integer outside the I-JSON safe range")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def _parse(text: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_members,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise TrailingBytesError("bytes after the canonical JSON value") from None
        if exc.pos >= len(text) or exc.msg.startswith("Unterminated string"):
            raise TruncatedError("canonical JSON ends before its value does") from None
        raise NonCanonicalError(f"not JSON: {exc.msg} at offset {exc.pos}") from None
    except ValueError:
        # Integers longer than Python's int/str conversion limit (4300 digits).
        raise InvalidValueError("canonical JSON integer outside the I-JSON safe range") from None


def loads(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = MAX_JSON_SIZE,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse canonical JSON strictly; raise only :class:`~bkv.errors.CodecError` subclasses.

    Returns ``None``/``bool``/``int``/``str``/``list``/``dict`` values.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > max_size:
        raise SizeLimitError(f"canonical JSON is {len(raw)} bytes, over the limit of {max_size}")
    if not raw:
        raise TruncatedError("canonical JSON input is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NonCanonicalError("canonical JSON is not valid UTF-8") from None
    _check_depth(text, max_depth)
    value = _parse(text)
    _check_ints(value)
    try:
        again = dumps(value, max_size=max_size, max_depth=max_depth)
    except (TypeError, ValueError):
        # A lone surrogate escape (\ud800) parses but has no UTF-8 form.
        raise NonCanonicalError("canonical JSON string holds a lone surrogate") from None
    if again != raw:
        raise NonCanonicalError("JSON is not in canonical form (RFC 8785 subset)")
    return value
