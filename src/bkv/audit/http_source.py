"""HTTP adapter of :class:`bkv.audit.verify.WitnessSource` (httpx, bounded reads).

Every response is read with a byte cap before parsing, every request has a
timeout, and anything but ``200`` is a :class:`FetchError` naming the path and
the witness's own error class when it sent one. JSON is parsed strictly
(:func:`bkv.witness.strict_json.parse_json_object`: one object, no duplicate keys, no
NaN/Infinity; ``CodecError`` subclasses).
"""

from __future__ import annotations

import json
from typing import Any, Final

import httpx

from bkv.errors import CodecError, FetchError
from bkv.wire.strict_json import parse_json_object

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
    """`` (ErrorClass: message)`` from a witness JSON error body, if it is one."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data.get("message")
        return f" ({data['error']}: {message})" if isinstance(message, str) else ""
    return ""
