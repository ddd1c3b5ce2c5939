"""The SDK reads the untrusted host's answers only up to a named limit.

The transports below stand in for a malicious host (the adversary, not a part
of ours): they stream far more than any real answer, and count how much of it
the SDK pulled before refusing.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from host_world import pinned

from bkv.client import sdk
from bkv.client.sdk import MAX_ANSWER_SIZE, VaultClient
from bkv.crypto import channel
from bkv.errors import CodecError, FleetUnreachableError, UnauthorizedError

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
