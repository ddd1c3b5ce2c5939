"""OPAQUE protocol messages (RFC 9807 sections 5.1, 6.1 and 6.4.1), ristretto255-SHA512.

Every message has one fixed size, so the encoding is the RFC's concatenation
of fixed-length fields. ``from_bytes`` is strict: a wrong length raises
:class:`TruncatedError` / :class:`TrailingBytesError`, and every group element
is decoded at once (canonical, non-identity, else :class:`InvalidPointError`).

Constructors check field types and lengths only (``ValueError``: caller
misuse); they are how the protocol code builds its own outputs, whose points
it just computed. Untrusted bytes must enter through ``from_bytes`` (or through
the server's ``*_bytes`` functions, which make the same checks). As a
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


def exact_bytes(name: str, data: bytes, size: int) -> bytes:
    """Exact-length check for decoding untrusted bytes; returns them as ``bytes``."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name} must be bytes")
        data = bytes(data)
    if len(data) != size:
        error = TruncatedError if len(data) < size else TrailingBytesError
        raise error(f"{name}: {len(data)} bytes, expected {size}")
    return data


def _require_len(name: str, value: bytes, size: int) -> None:
    """Constructor check: a wrong length here is a programming error."""
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def _require_fields(message: object, sizes: tuple[tuple[str, int], ...]) -> None:
    """The constructors' full check, field by field, naming the first bad one.

    Each constructor first tests all its fields in one expression (exact ``bytes`` type and
    length, the common case) and calls this only when that test fails, so that the hot path
    pays one comparison per field; a ``bytes`` subclass of the right length passes here.
    """
    for name, size in sizes:
        _require_len(name, getattr(message, name), size)


_element = ristretto.decode_element
"""Decode an element field of untrusted input (canonical, non-identity)."""


@dataclass(frozen=True)
class RegistrationRequest:
    """RFC 9807 section 5.1: the client's blinded password."""

    blinded_message: bytes

    def __post_init__(self) -> None:
        if not (type(self.blinded_message) is bytes and len(self.blinded_message) == NOE):
            _require_fields(self, (("blinded_message", NOE),))

    def to_bytes(self) -> bytes:
        """Canonical encoding (32 bytes)."""
        return self.blinded_message

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        return cls(_element(exact_bytes("RegistrationRequest", data, REGISTRATION_REQUEST_SIZE)))


@dataclass(frozen=True)
class RegistrationResponse:
    """RFC 9807 section 5.1: the evaluated element and the server's public key."""

    evaluated_message: bytes
    server_public_key: bytes

    def __post_init__(self) -> None:
        if not (
            type(self.evaluated_message) is bytes
            and len(self.evaluated_message) == NOE
            and type(self.server_public_key) is bytes
            and len(self.server_public_key) == NPK
        ):
            _require_fields(self, (("evaluated_message", NOE), ("server_public_key", NPK)))

    def to_bytes(self) -> bytes:
        """Canonical encoding (64 bytes)."""
        return self.evaluated_message + self.server_public_key

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = exact_bytes("RegistrationResponse", data, REGISTRATION_RESPONSE_SIZE)
        return cls(_element(data[:NOE]), _element(data[NOE:]))


@dataclass(frozen=True)
class Envelope:
    """RFC 9807 section 4.1.1 (Envelope): nonce and the auth tag over the cleartext credentials."""

    nonce: bytes
    auth_tag: bytes

    def __post_init__(self) -> None:
        if not (
            type(self.nonce) is bytes
            and len(self.nonce) == NN
            and type(self.auth_tag) is bytes
            and len(self.auth_tag) == NM
        ):
            _require_fields(self, (("nonce", NN), ("auth_tag", NM)))

    def to_bytes(self) -> bytes:
        """Canonical encoding (96 bytes)."""
        return self.nonce + self.auth_tag

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = exact_bytes("Envelope", data, ENVELOPE_SIZE)
        return cls(data[:NN], data[NN:])


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
        if not (
            type(self.client_public_key) is bytes
            and len(self.client_public_key) == NPK
            and type(self.masking_key) is bytes
            and len(self.masking_key) == MASKING_KEY_SIZE
        ):
            _require_fields(self, (("client_public_key", NPK), ("masking_key", MASKING_KEY_SIZE)))
        if not isinstance(self.envelope, Envelope):
            raise TypeError("envelope must be an Envelope")

    def to_bytes(self) -> bytes:
        """Canonical encoding (192 bytes); RFC 9807 calls it registration_upload."""
        envelope = self.envelope
        return self.client_public_key + self.masking_key + envelope.nonce + envelope.auth_tag

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = exact_bytes("RegistrationRecord", data, REGISTRATION_RECORD_SIZE)
        key_end = NPK + MASKING_KEY_SIZE
        nonce_end = key_end + NN
        envelope = Envelope(data[key_end:nonce_end], data[nonce_end:])
        return cls(_element(data[:NPK]), data[NPK:key_end], envelope)


@dataclass(frozen=True)
class CredentialRequest:
    """RFC 9807 section 6.1: the client's blinded password at login."""

    blinded_message: bytes

    def __post_init__(self) -> None:
        if not (type(self.blinded_message) is bytes and len(self.blinded_message) == NOE):
            _require_fields(self, (("blinded_message", NOE),))

    def to_bytes(self) -> bytes:
        """Canonical encoding (32 bytes)."""
        return self.blinded_message

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        return cls(_element(exact_bytes("CredentialRequest", data, CREDENTIAL_REQUEST_SIZE)))


@dataclass(frozen=True)
class CredentialResponse:
    """RFC 9807 section 6.1: evaluated element and the masked server key and envelope."""

    evaluated_message: bytes
    masking_nonce: bytes
    masked_response: bytes

    def __post_init__(self) -> None:
        if not (
            type(self.evaluated_message) is bytes
            and len(self.evaluated_message) == NOE
            and type(self.masking_nonce) is bytes
            and len(self.masking_nonce) == NN
            and type(self.masked_response) is bytes
            and len(self.masked_response) == MASKED_RESPONSE_SIZE
        ):
            _require_fields(self, _CREDENTIAL_RESPONSE_FIELDS)

    def to_bytes(self) -> bytes:
        """Canonical encoding (192 bytes)."""
        return self.evaluated_message + self.masking_nonce + self.masked_response

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = exact_bytes("CredentialResponse", data, CREDENTIAL_RESPONSE_SIZE)
        return cls(*_credential_response_fields(data))


_CREDENTIAL_RESPONSE_FIELDS = (
    ("evaluated_message", NOE),
    ("masking_nonce", NN),
    ("masked_response", MASKED_RESPONSE_SIZE),
)


def _credential_response_fields(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(evaluated_message decoded strictly, masking_nonce, masked_response) of exact-size bytes."""
    nonce_end = NOE + NN
    return _element(data[:NOE]), data[NOE:nonce_end], data[nonce_end:]


@dataclass(frozen=True)
class AuthRequest:
    """RFC 9807 section 6.4.1: the client's nonce and ephemeral public key share."""

    client_nonce: bytes
    client_public_keyshare: bytes

    def __post_init__(self) -> None:
        if not (
            type(self.client_nonce) is bytes
            and len(self.client_nonce) == NN
            and type(self.client_public_keyshare) is bytes
            and len(self.client_public_keyshare) == NPK
        ):
            _require_fields(self, (("client_nonce", NN), ("client_public_keyshare", NPK)))

    def to_bytes(self) -> bytes:
        """Canonical encoding (64 bytes)."""
        return self.client_nonce + self.client_public_keyshare

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = exact_bytes("AuthRequest", data, AUTH_REQUEST_SIZE)
        return cls(data[:NN], _element(data[NN:]))


@dataclass(frozen=True)
class AuthResponse:
    """RFC 9807 section 6.4.1: the server's nonce, ephemeral key share and MAC."""

    server_nonce: bytes
    server_public_keyshare: bytes
    server_mac: bytes

    def __post_init__(self) -> None:
        if not (
            type(self.server_nonce) is bytes
            and len(self.server_nonce) == NN
            and type(self.server_public_keyshare) is bytes
            and len(self.server_public_keyshare) == NPK
            and type(self.server_mac) is bytes
            and len(self.server_mac) == NM
        ):
            _require_fields(self, _AUTH_RESPONSE_FIELDS)

    def to_bytes(self) -> bytes:
        """Canonical encoding (128 bytes)."""
        return self.server_nonce + self.server_public_keyshare + self.server_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        data = exact_bytes("AuthResponse", data, AUTH_RESPONSE_SIZE)
        return cls(*_auth_response_fields(data))


_AUTH_RESPONSE_FIELDS = (("server_nonce", NN), ("server_public_keyshare", NPK), ("server_mac", NM))


def _auth_response_fields(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(server_nonce, server_public_keyshare decoded strictly, server_mac) of exact-size bytes."""
    keyshare_end = NN + NPK
    return data[:NN], _element(data[NN:keyshare_end]), data[keyshare_end:]


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
        auth = self.auth_request
        return (
            self.credential_request.blinded_message
            + auth.client_nonce
            + auth.client_public_keyshare
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding: one length check, then each field (both elements decoded once)."""
        data = exact_bytes("KE1", data, KE1_SIZE)
        nonce_end = CREDENTIAL_REQUEST_SIZE + NN
        return cls(
            CredentialRequest(_element(data[:CREDENTIAL_REQUEST_SIZE])),
            AuthRequest(data[CREDENTIAL_REQUEST_SIZE:nonce_end], _element(data[nonce_end:])),
        )


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
        response = self.credential_response
        auth = self.auth_response
        return b"".join(
            (
                response.evaluated_message,
                response.masking_nonce,
                response.masked_response,
                auth.server_nonce,
                auth.server_public_keyshare,
                auth.server_mac,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding: one length check, then each field (both elements decoded once)."""
        data = exact_bytes("KE2", data, KE2_SIZE)
        return cls(
            CredentialResponse(*_credential_response_fields(data[:CREDENTIAL_RESPONSE_SIZE])),
            AuthResponse(*_auth_response_fields(data[CREDENTIAL_RESPONSE_SIZE:])),
        )


@dataclass(frozen=True)
class KE3:
    """RFC 9807 section 6.1: the client's MAC, proving it derived the same keys."""

    client_mac: bytes

    def __post_init__(self) -> None:
        if not (type(self.client_mac) is bytes and len(self.client_mac) == NM):
            _require_fields(self, (("client_mac", NM),))

    def to_bytes(self) -> bytes:
        """Canonical encoding (64 bytes)."""
        return self.client_mac

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Strict decoding."""
        if type(data) is not bytes or len(data) != KE3_SIZE:
            data = exact_bytes("KE3", data, KE3_SIZE)  # raises, or converts a bytes-like
        # ``data`` is now exactly what __post_init__ accepts, so the generated __init__ is
        # skipped: it is most of the cost of the KE3 check (RFC 9807 section 6.4.5).
        ke3 = object.__new__(cls)
        ke3.__dict__["client_mac"] = data
        return ke3
