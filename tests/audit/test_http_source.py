"""The auditor's HTTP adapter parses witness JSON strictly (a real server on 127.0.0.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bkv.audit.http_source import HttpWitnessSource
from bkv.errors import CodecError, FetchError, NonCanonicalError

BODIES = {
    "/ok": b'{"name":"bkv.fleet_keys.v1","last_verified_epoch":1}',
    "/duplicate": b'{"last_verified_epoch":1,"last_verified_epoch":9}',
    "/nan": b'{"last_verified_epoch":NaN}',
    "/infinity": b'{"epoch":-Infinity}',
    "/list": b"[1,2]",
    "/garbage": b"\xff\xfe",
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = BODIES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

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


def test_strict_object_accepted(url: str) -> None:
    with HttpWitnessSource(url) as source:
        assert source.get_json("/ok")["last_verified_epoch"] == 1


@pytest.mark.parametrize("path", ["/duplicate", "/nan", "/infinity"])
def test_duplicate_keys_and_constants_refused(url: str, path: str) -> None:
    with HttpWitnessSource(url) as source, pytest.raises(NonCanonicalError):
        source.get_json(path)


@pytest.mark.parametrize("path", ["/list", "/garbage"])
def test_non_objects_refused(url: str, path: str) -> None:
    with HttpWitnessSource(url) as source, pytest.raises(CodecError):
        source.get_json(path)


def test_not_found_is_fetch_error(url: str) -> None:
    with HttpWitnessSource(url) as source, pytest.raises(FetchError, match="404"):
        source.get_json("/missing")
