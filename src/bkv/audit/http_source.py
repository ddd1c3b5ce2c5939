"""HTTP adapter of :class:`bkv.audit.verify.WitnessSource` (httpx, bounded reads).

Every response is read with a byte cap before parsing, every request has a
timeout, and anything but ``200`` is a :class:`FetchError` naming the path and
the witness's own error class when it sent one. Every JSON body, error bodies
included, is parsed strictly by the one bounded parser
(:func:`bkv.wire.strict_json.parse_json_object`: one object, no duplicate keys, no
NaN/Infinity, no nesting or integer that escapes as anything but ``CodecError``).
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from bkv.errors import CodecError, FetchError
from bkv.wire.strict_json import parse_json_object, quote_untrusted

#: Largest JSON document the auditor reads (an audit response carries a hex artifact).
MAX_JSON_RESPONSE: Final = 1 << 20
#: Seconds for connect/read of one request.
TIMEOUT_SECONDS: Final = 10.0


class HttpWitnessSource:
    """Reads a witness's public API over HTTP(S)."""

    def __init__(self, base_url: str, *, timeout: float = TIMEOUT_SECONDS) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("witness URL must start with http:// or https://")
        self._base = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpWitnessSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_bytes(self, path: str, max_size: int) -> bytes:
        url = self._base + path
        try:
            with self._client.stream("GET", url) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_size:
                        raise FetchError(f"GET {path}: response over {max_size} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            raise FetchError(f"GET {path}: {type(exc).__name__}") from None
        if status != 200:
            raise FetchError(f"GET {path}: HTTP {status}{_witness_error(bytes(body))}")
        return bytes(body)

    def get_json(self, path: str) -> Any:
        """A JSON object, parsed strictly: duplicate keys and NaN/Infinity are refused.

        A duplicate key would let the witness show the auditor one value and another
        JSON parser (a client's, a second auditor's) the other.
        """
        body = self.get_bytes(path, MAX_JSON_RESPONSE)
        try:
            return parse_json_object(body, MAX_JSON_RESPONSE)
        except CodecError as exc:
            raise type(exc)(f"GET {path}: response is not a strict JSON object: {exc}") from None


def _witness_error(body: bytes) -> str:
    """`` (ErrorClass: message)`` from a witness JSON error body, if it is one.

    The body is the (untrusted) witness's: a body nested thousands deep must
    leave the caller's ``FetchError`` intact, not replace it with a RecursionError.
    """
    try:
        data = parse_json_object(body, MAX_JSON_RESPONSE)
    except CodecError:
        return ""
    if isinstance(data.get("error"), str) and isinstance(data.get("message"), str):
        return f" ({quote_untrusted(data['error'])}: {quote_untrusted(data['message'])})"
    return ""
