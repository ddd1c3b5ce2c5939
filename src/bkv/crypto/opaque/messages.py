"""OPAQUE protocol messages (RFC 9807 sections 5.1, 6.1 and 6.4.1), ristretto255-SHA512.

Every message has one fixed size, so the encoding is the RFC's concatenation
of fixed-length fields. ``from_bytes`` is strict: a wrong length raises
:class:`TruncatedError` / :class:`TrailingBytesError`, and every group element
is decoded at once (canonical, non-identity, else :class:`InvalidPointError`).

Constructors check field types and lengths only (``ValueError``: caller
misuse); they are how the protocol code builds its own outputs, whose points
it just computed. Untrusted bytes must enter through ``from_bytes``. As a
second line, every point the protocol multiplies goes through libsodium's
``crypto_scalarmult_ristretto255``, which itself rejects non-canonical
encodings and identity results (:func:`bkv.crypto.ristretto.scalar_mult`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from bkv.crypto import ristretto
from bkv.crypto.opaque.config import NM, NN, NOE, NPK
from bkv.errors import TrailingBytesError, TruncatedError

ENVELOPE_SIZE = NN + NM
REGISTRATION_REQUEST_SIZE = NOE
REGISTRATION_RESPONSE_SIZE = NOE + NPK
REGISTRATION_RECORD_SIZE = NPK + 64 + ENVELOPE_SIZE
MASKED_RESPONSE_SIZE = NPK + ENVELOPE_SIZE
CREDENTIAL_REQUEST_SIZE = NOE
CREDENTIAL_RESPONSE_SIZE = NOE + NN + MASKED_RESPONSE_SIZE
AUTH_REQUEST_SIZE = NN + NPK
AUTH_RESPONSE_SIZE = NN + NPK + NM
KE1_SIZE = CREDENTIAL_REQUEST_SIZE + AUTH_REQUEST_SIZE
KE2_SIZE = CREDENTIAL_RESPONSE_SIZE + AUTH_RESPONSE_SIZE
KE3_SIZE = NM
MASKING_KEY_SIZE = 64  # Nh


def _check_size(name: str, data: bytes, size: int) -> bytes:
    """Exact-length check for decoding untrusted bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes")
    if len(data) < size:
        raise TruncatedError(f"{name}: {len(data)} bytes, expected {size}")
    if len(data) > size:
        raise TrailingBytesError(f"{name}: {len(data)} bytes, expected {size}")
    return data if type(data) is bytes else bytes(data)


def _split(data: bytes, *sizes: int) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    for size in sizes:
        out.append(data[offset : offset + size])
        offset += size
    return out


def _require_len(name: str, value: bytes, size: int) -> None:
    """Constructor check: a wrong length here is a programming error."""
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def _require_element(name: str, value: bytes) -> None:
    _require_len(name, value, NPK)


def _element(data: bytes) -> bytes:
    """Decode an element field of untrusted input (canonical, non-identity)."""
    return ristretto.decode_element(data)


@dataclass(frozen=True)
class RegistrationRequest:
    """RFC 9807 section 5.1: the client's blinded password."""

    blinded_message: bytes

    def __post_init__(self) -> None:
        _require_element("blinded_message", self.blinded_message)

    def to_bytes(self) -> bytes:
        """Canonical encoding (32 bytes)."""
        return self.blinded_message

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        return cls(_element(_check_size("RegistrationRequest", data, REGISTRATION_REQUEST_SIZE)))


@dataclass(frozen=True)
class RegistrationResponse:
    """RFC 9807 section 5.1: the evaluated element and the server's public key."""

    evaluated_message: bytes
    server_public_key: bytes

    def __post_init__(self) -> None:
        _require_element("evaluated_message", self.evaluated_message)
        _require_element("server_public_key", self.server_public_key)

    def to_bytes(self) -> bytes:
        """Canonical encoding (64 bytes)."""
        return self.evaluated_message + self.server_public_key

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("RegistrationResponse", data, REGISTRATION_RESPONSE_SIZE)
        evaluated, server_public_key = _split(data, NOE, NPK)
        return cls(_element(evaluated), _element(server_public_key))


@dataclass(frozen=True)
class Envelope:
    """RFC 9807 section 4.1.1 (Envelope): nonce and the auth tag over the cleartext credentials."""

    nonce: bytes
    auth_tag: bytes

    def __post_init__(self) -> None:
        _require_len("envelope nonce", self.nonce, NN)
        _require_len("envelope auth_tag", self.auth_tag, NM)

    def to_bytes(self) -> bytes:
        """Canonical encoding (96 bytes)."""
        return self.nonce + self.auth_tag

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("Envelope", data, ENVELOPE_SIZE)
        return cls(*_split(data, NN, NM))


@dataclass(frozen=True)
class RegistrationRecord:
    """RFC 9807 section 5.1: what the server stores per credential.

    The masking key is kept out of the repr: with it, anyone can unmask the
    server's credential responses for this record.
    """

    client_public_key: bytes
    masking_key: bytes = field(repr=False)
    envelope: Envelope

    def __post_init__(self) -> None:
        _require_element("client_public_key", self.client_public_key)
        _require_len("masking_key", self.masking_key, MASKING_KEY_SIZE)
        if not isinstance(self.envelope, Envelope):
            raise TypeError("envelope must be an Envelope")

    def to_bytes(self) -> bytes:
        """Canonical encoding (192 bytes); RFC 9807 calls it registration_upload."""
        return self.client_public_key + self.masking_key + self.envelope.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("RegistrationRecord", data, REGISTRATION_RECORD_SIZE)
        public_key, masking_key, envelope = _split(data, NPK, MASKING_KEY_SIZE, ENVELOPE_SIZE)
        return cls(_element(public_key), masking_key, Envelope.from_bytes(envelope))


@dataclass(frozen=True)
class CredentialRequest:
    """RFC 9807 section 6.1: the client's blinded password at login."""

    blinded_message: bytes

    def __post_init__(self) -> None:
        _require_element("blinded_message", self.blinded_message)

    def to_bytes(self) -> bytes:
        """Canonical encoding (32 bytes)."""
        return self.blinded_message

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        return cls(_element(_check_size("CredentialRequest", data, CREDENTIAL_REQUEST_SIZE)))


@dataclass(frozen=True)
class CredentialResponse:
    """RFC 9807 section 6.1: evaluated element and the masked server key and envelope."""

    evaluated_message: bytes
    masking_nonce: bytes
    masked_response: bytes

    def __post_init__(self) -> None:
        _require_element("evaluated_message", self.evaluated_message)
        _require_len("masking_nonce", self.masking_nonce, NN)
        _require_len("masked_response", self.masked_response, MASKED_RESPONSE_SIZE)

    def to_bytes(self) -> bytes:
        """Canonical encoding (192 bytes)."""
        return self.evaluated_message + self.masking_nonce + self.masked_response

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("CredentialResponse", data, CREDENTIAL_RESPONSE_SIZE)
        evaluated, masking_nonce, masked = _split(data, NOE, NN, MASKED_RESPONSE_SIZE)
        return cls(_element(evaluated), masking_nonce, masked)


@dataclass(frozen=True)
class AuthRequest:
    """RFC 9807 section 6.4.1: the client's nonce and ephemeral public key share."""

    client_nonce: bytes
    client_public_keyshare: bytes

    def __post_init__(self) -> None:
        _require_len("client_nonce", self.client_nonce, NN)
        _require_element("client_public_keyshare", self.client_public_keyshare)

    def to_bytes(self) -> bytes:
        """Canonical encoding (64 bytes)."""
        return self.client_nonce + self.client_public_keyshare

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("AuthRequest", data, AUTH_REQUEST_SIZE)
        nonce, keyshare = _split(data, NN, NPK)
        return cls(nonce, _element(keyshare))


@dataclass(frozen=True)
class AuthResponse:
    """RFC 9807 section 6.4.1: the server's nonce, ephemeral key share and MAC."""

    server_nonce: bytes
    server_public_keyshare: bytes
    server_mac: bytes

    def __post_init__(self) -> None:
        _require_len("server_nonce", self.server_nonce, NN)
        _require_element("server_public_keyshare", self.server_public_keyshare)
        _require_len("server_mac", self.server_mac, NM)

    def to_bytes(self) -> bytes:
        """Canonical encoding (128 bytes)."""
        return self.server_nonce + self.server_public_keyshare + self.server_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("AuthResponse", data, AUTH_RESPONSE_SIZE)
        nonce, keyshare, mac = _split(data, NN, NPK, NM)
        return cls(nonce, _element(keyshare), mac)


@dataclass(frozen=True)
class KE1:
    """RFC 9807 section 6.1: the client's first login message."""

    credential_request: CredentialRequest
    auth_request: AuthRequest

    def __post_init__(self) -> None:
        if not isinstance(self.credential_request, CredentialRequest):
            raise TypeError("credential_request must be a CredentialRequest")
        if not isinstance(self.auth_request, AuthRequest):
            raise TypeError("auth_request must be an AuthRequest")

    def to_bytes(self) -> bytes:
        """Canonical encoding (96 bytes)."""
        return self.credential_request.to_bytes() + self.auth_request.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("KE1", data, KE1_SIZE)
        request, auth = _split(data, CREDENTIAL_REQUEST_SIZE, AUTH_REQUEST_SIZE)
        return cls(CredentialRequest.from_bytes(request), AuthRequest.from_bytes(auth))


@dataclass(frozen=True)
class KE2:
    """RFC 9807 section 6.1: the server's login response."""

    credential_response: CredentialResponse
    auth_response: AuthResponse

    def __post_init__(self) -> None:
        if not isinstance(self.credential_response, CredentialResponse):
            raise TypeError("credential_response must be a CredentialResponse")
        if not isinstance(self.auth_response, AuthResponse):
            raise TypeError("auth_response must be an AuthResponse")

    def to_bytes(self) -> bytes:
        """Canonical encoding (320 bytes)."""
        return self.credential_response.to_bytes() + self.auth_response.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = _check_size("KE2", data, KE2_SIZE)
        response, auth = _split(data, CREDENTIAL_RESPONSE_SIZE, AUTH_RESPONSE_SIZE)
        return cls(CredentialResponse.from_bytes(response), AuthResponse.from_bytes(auth))


@dataclass(frozen=True)
class KE3:
    """RFC 9807 section 6.1: the client's MAC, proving it derived the same keys."""

    client_mac: bytes

    def __post_init__(self) -> None:
        _require_len("client_mac", self.client_mac, NM)

    def to_bytes(self) -> bytes:
        """Canonical encoding (64 bytes)."""
        return self.client_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        return cls(_check_size("KE3", data, KE3_SIZE))
