"""The SDK reads the untrusted host's answers only up to a named limit.

The transports below stand in for a malicious host (the adversary, not a part
of ours): they stream far more than any real answer, and count how much of it
the SDK pulled before refusing.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import httpx
import pytest
from host_world import pinned

from bkv.client import sdk
from bkv.client.sdk import MAX_ANSWER_SIZE, VaultClient
from bkv.crypto import channel
from bkv.errors import CodecError, FleetUnreachableError, RetryAfterError, UnauthorizedError

_, PK = channel.derive_channel_key_pair(bytes(range(32)))
FLEET = pinned("fleet-1", PK, bytes(32))
CHUNK = 1024
CHUNKS = 1024  # a 1 MiB answer


class FloodingHost(httpx.BaseTransport):
    """Answers every request with ``status`` and a 1 MiB body, sent in 1 KiB chunks."""

    def __init__(self, status: int = 200, content_type: str = sdk.OCTET_STREAM) -> None:
        self.status = status
        self.content_type = content_type
        self.chunks_sent = 0

    def _body(self) -> Iterator[bytes]:
        for _ in range(CHUNKS):
            self.chunks_sent += 1
            yield b"\x00" * CHUNK

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            self.status,
            headers={"content-type": self.content_type},
            stream=_Stream(self._body()),
        )


class _Stream(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks


def client(transport: httpx.BaseTransport) -> VaultClient:
    return VaultClient("http://host.invalid", "token", b"alice", FLEET, transport=transport)


def test_oversized_vault_answer_is_refused_without_reading_it_all() -> None:
    host = FloodingHost()
    with client(host) as vault, pytest.raises(CodecError, match="over"):
        vault.status()
    # Refused as soon as the limit was passed, not after the whole megabyte.
    assert host.chunks_sent <= MAX_ANSWER_SIZE // CHUNK + 2


def test_oversized_error_body_is_refused_too() -> None:
    host = FloodingHost(status=401, content_type="application/json")
    with client(host) as vault, pytest.raises(CodecError):
        vault.status()
    assert host.chunks_sent < CHUNKS


def test_small_error_body_still_maps_to_its_typed_error() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "UnauthorizedError", "message": "no"})

    with client(httpx.MockTransport(answer)) as vault, pytest.raises(UnauthorizedError):
        vault.status()


def test_oversized_bundle_is_refused_without_reading_it_all() -> None:
    host = FloodingHost()
    with (
        httpx.Client(base_url="http://host.invalid", transport=host) as http,
        pytest.raises(CodecError, match="over"),
    ):
        sdk._fetch_bundle(http, 0)
    assert host.chunks_sent < CHUNKS


def test_unreachable_host_is_fleet_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with client(httpx.MockTransport(refuse)) as vault, pytest.raises(FleetUnreachableError):
        vault.status()


class GzipBombHost(httpx.BaseTransport):
    """Answers with a gzip body (``encoding``) that inflates 1000-fold; records the request."""

    def __init__(self, encoding: str = "gzip") -> None:
        self.encoding = encoding
        self.accept_encoding: list[str | None] = []
        self.chunks_sent = 0
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip container
        self.payload = packer.compress(bytes(4 * 1024 * 1024)) + packer.flush()

    def _body(self) -> Iterator[bytes]:
        for start in range(0, len(self.payload), CHUNK):
            self.chunks_sent += 1
            yield self.payload[start : start + CHUNK]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.accept_encoding.append(request.headers.get("accept-encoding"))
        return httpx.Response(
            200,
            headers={"content-type": sdk.OCTET_STREAM, "content-encoding": self.encoding},
            stream=_Stream(self._body()),
        )


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
def test_a_compressed_answer_is_refused_unread_and_identity_is_asked_for(encoding: str) -> None:
    """A gzip bomb: 4 KiB of limit must not mean 4 MiB inflated in memory."""
    host = GzipBombHost(encoding)
    with client(host) as vault, pytest.raises(CodecError, match="content encoding"):
        vault.status()
    assert host.accept_encoding == ["identity"]
    assert host.chunks_sent == 0  # refused on the header, before any body chunk was pulled


def test_the_limit_counts_bytes_on_the_wire_not_after_decoding() -> None:
    host = GzipBombHost()
    # Direct use of the reader (as the bundle fetch and /v1/request do): the limit holds
    # even if a caller's own transport or headers asked for compression.
    with (
        httpx.Client(base_url="http://host.invalid", transport=host) as http,
        pytest.raises(CodecError),
    ):
        sdk._send(
            http,
            "POST",
            "/v1/request",
            MAX_ANSWER_SIZE,
            "answer",
            content=b"x",
            headers={"accept-encoding": "gzip"},
        )
    assert host.accept_encoding == ["identity"]  # the SDK's header wins
    assert host.chunks_sent <= 1


def test_non_ascii_digit_headers_do_not_crash_the_sdk() -> None:
    # "²" passes str.isdigit() but int() refuses it: a hostile host must get a
    # typed error (or be ignored), never an untyped ValueError from the SDK.
    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers=[(b"retry-after", "²".encode())], json={})

    with client(httpx.MockTransport(limited)) as vault, pytest.raises(RetryAfterError) as err:
        vault.status()
    assert err.value.retry_after_seconds is None


def test_retry_after_in_ascii_digits_is_passed_on() -> None:
    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "7"}, json={})

    with client(httpx.MockTransport(limited)) as vault, pytest.raises(RetryAfterError) as err:
        vault.status()
    assert err.value.retry_after_seconds == 7
