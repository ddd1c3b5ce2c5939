"""A witness's error body is untrusted JSON: the auditor parses it bounded (real HTTP server).

Whatever the body, a non-200 answer is a :class:`FetchError` naming the path and the
status; the witness's own ``error``/``message`` are added only from a strict JSON object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bkv.audit.http_source import HttpWitnessSource
from bkv.errors import FetchError

ERROR_BODIES = {
    "/nested": b"[" * 4000,  # deeper than Python's recursion limit
    "/nested-object": b'{"error":' * 2000,
    "/huge-integer": b'{"error": "E", "message": ' + b"1" * 5000 + b"}",
    "/duplicate": b'{"error": "E", "message": "shown", "message": "hidden"}',
    "/nan": b'{"error": "E", "message": NaN}',
    "/garbage": b"\xff\xfe",
    "/empty": b"",
    "/list": b'["error"]',
    "/honest": b'{"error": "UnknownEpochError", "message": "no epoch 9"}',
    "/flooding": b'{"error": "E\\nforged", "message": "' + b"m" * 100_000 + b'"}',
}


_HONEST = {"/honest", "/flooding"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ERROR_BODIES.get(self.path, b"")
        self.send_response(404 if self.path in _HONEST else 500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("path", sorted(set(ERROR_BODIES) - _HONEST))
def test_a_hostile_error_body_is_a_plain_fetch_error(url: str, path: str) -> None:
    with HttpWitnessSource(url) as source, pytest.raises(FetchError) as raised:
        source.get_json(path)
    assert str(raised.value) == f"GET {path}: HTTP 500"


def test_an_honest_error_body_names_the_witness_error(url: str) -> None:
    with HttpWitnessSource(url) as source, pytest.raises(FetchError) as raised:
        source.get_json("/honest")
    assert str(raised.value) == "GET /honest: HTTP 404 (UnknownEpochError: no epoch 9)"


def test_a_witness_message_is_cut_short_and_cannot_forge_a_line(url: str) -> None:
    with HttpWitnessSource(url) as source, pytest.raises(FetchError) as raised:
        source.get_json("/flooding")
    text = str(raised.value)
    assert text.startswith("GET /flooding: HTTP 404 (E?forged: mmm")
    assert "\n" not in text
    assert len(text) < 300
