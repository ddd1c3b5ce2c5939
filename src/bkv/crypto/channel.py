"""The client <-> HSM channel: requests sealed to the fleet, responses bound to requests.

Sans-IO. Clients seal each request to the fleet's channel public key with HPKE
(RFC 9180) so that only the fleet's HSMs can read it; the HSM's response is
encrypted under a key that only the sender of *that* request can derive. The
host relays both and sees ciphertext, sizes and the caller's clear ``aad``.

Suite
-----
DHKEM(X25519, HKDF-SHA256) (KEM 0x0020), HKDF-SHA256 (KDF 0x0001),
ChaCha20-Poly1305 (AEAD 0x0003), base mode (RFC 9180 section 5.1.1), through
``cryptography.hazmat.primitives.hpke``. ChaCha20-Poly1305 rather than
AES-256-GCM because clients are phones: it is constant-time in plain software
on CPUs without AES instructions, where table-based AES leaks through caches;
both have 256-bit keys and neither is key-committing, which does not matter
here because each ciphertext is only ever opened under one key (the fleet's
single channel key, or the response key derived from one request).

Request (``REQUEST_TAG``)::

    0x01 || enc (32) || HPKE ciphertext of ( response_secret (32) || plaintext )

with ``info = "bkv/channel/v1/request" || len(fleet_id) (1) || fleet_id || SHA-256(aad)``.

cryptography's HPKE API is single-shot and exposes neither the AAD of
RFC 9180 section 5.2 nor the secret export of section 5.3, and it draws the
ephemeral key itself (no injection). We therefore (a) bind the caller's
``aad`` through ``info``, which enters the key schedule (section 5.1:
``info_hash = LabeledExtract("", "info_hash", info)``), so a ciphertext moved to
another aad or fleet fails to open exactly as a wrong AEAD AAD would; and (b)
replace the exporter with a 32-byte ``response_secret`` that the client draws
fresh and sends *inside* the HPKE plaintext. Like an exported secret, it is
known only to the client and to whoever holds the channel private key, and it
is unique to this request.

Response (``RESPONSE_TAG``), derived like Oblivious HTTP (RFC 9458 section 4.4)
with our secret in place of ``Export("message/bhttp response", Nk)``::

    response_nonce = random(32)                       # chosen by the HSM per response
    prk   = HKDF-Extract(salt = enc || response_nonce, ikm = response_secret)
    key   = HKDF-Expand(prk, "bkv/channel/v1/response key"   || request_digest, 32)
    nonce = HKDF-Expand(prk, "bkv/channel/v1/response nonce" || request_digest, 12)
    header = 0x02 || response_nonce (32)
    header || ChaCha20-Poly1305(key, nonce, plaintext, ad = header)

where ``request_digest = SHA-256(sealed request bytes)``. The fresh
``response_nonce`` gives every response its own key and nonce, so a host that
replays one request to the HSM many times never causes a (key, nonce) reuse.

What this does *not* give: freshness. The host can replay a sealed request;
the channel makes the replay's response unreadable to anyone but the original
client, and the HSM application must make replays harmless (it does not rely
on the channel for that).

Tested against the RFC 9180 appendix A.2 vectors (tests/channel): the key
derivation (DeriveKeyPair, section 7.1.3, implemented here) and decryption of
the vector ciphertext by cryptography with the vector's receiver key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import (
    DecryptionError,
    InvalidPointError,
    SizeLimitError,
    TruncatedError,
    UnknownTagError,
)

# --- suite constants (RFC 9180 section 7) -----------------------------------

KEM_ID = 0x0020
"""DHKEM(X25519, HKDF-SHA256)."""
KDF_ID = 0x0001
"""HKDF-SHA256."""
AEAD_ID = 0x0003
"""ChaCha20-Poly1305."""

PRIVATE_KEY_SIZE = 32
"""Nsk for DHKEM(X25519)."""
PUBLIC_KEY_SIZE = 32
"""Npk for DHKEM(X25519)."""
ENC_SIZE = 32
"""Nenc for DHKEM(X25519)."""
TAG_SIZE = 16
"""Nt for ChaCha20-Poly1305."""
AEAD_KEY_SIZE = 32
"""Nk for ChaCha20-Poly1305."""
AEAD_NONCE_SIZE = 12
"""Nn for ChaCha20-Poly1305."""

# --- our formats ------------------------------------------------------------

REQUEST_TAG = 0x01
"""First byte of a sealed request, channel version 1."""
RESPONSE_TAG = 0x02
"""First byte of a sealed response, channel version 1."""

RESPONSE_SECRET_SIZE = 32
RESPONSE_NONCE_SIZE = 32
"""max(Nn, Nk), as RFC 9458 section 4.4 chooses."""
REQUEST_DIGEST_SIZE = 32

MAX_FLEET_ID_SIZE = 64
MAX_AAD_SIZE = 1024
"""The clear aad is routing metadata (account, record id), never bulk data."""
MAX_REQUEST_PLAINTEXT_SIZE = 64 * 1024
MAX_RESPONSE_PLAINTEXT_SIZE = 64 * 1024

MIN_SEALED_REQUEST_SIZE = 1 + ENC_SIZE + RESPONSE_SECRET_SIZE + 1 + TAG_SIZE
MAX_SEALED_REQUEST_SIZE = (
    1 + ENC_SIZE + RESPONSE_SECRET_SIZE + MAX_REQUEST_PLAINTEXT_SIZE + TAG_SIZE
)
MIN_SEALED_RESPONSE_SIZE = 1 + RESPONSE_NONCE_SIZE + 1 + TAG_SIZE
MAX_SEALED_RESPONSE_SIZE = 1 + RESPONSE_NONCE_SIZE + MAX_RESPONSE_PLAINTEXT_SIZE + TAG_SIZE

_REQUEST_INFO_LABEL = b"bkv/channel/v1/request"
_RESPONSE_KEY_LABEL = b"bkv/channel/v1/response key"
_RESPONSE_NONCE_LABEL = b"bkv/channel/v1/response nonce"

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)

# RFC 9180 section 4.1 / 7.1.3: the KEM's own suite_id for its labeled KDF calls.
_KEM_SUITE_ID = b"KEM" + KEM_ID.to_bytes(2, "big")
_HPKE_VERSION_LABEL = b"HPKE-v1"
_MIN_IKM_SIZE = PRIVATE_KEY_SIZE
"""RFC 9180 section 7.1.3: ikm should have at least Nsk bytes of entropy."""


# --- HKDF-SHA256 (RFC 5869) and the labeled variants of RFC 9180 section 4 --


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt, ikm, "sha256")


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    # length <= 255 * 32 always holds here: callers ask for 12 or 32 bytes.
    blocks, previous = [], b""
    for counter in range(1, -(-length // 32) + 1):
        previous = hmac.digest(prk, previous + info + bytes([counter]), "sha256")
        blocks.append(previous)
    return b"".join(blocks)[:length]


def _labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, _HPKE_VERSION_LABEL + _KEM_SUITE_ID + label + ikm)


def _labeled_expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + _HPKE_VERSION_LABEL + _KEM_SUITE_ID + label + info
    return _expand(prk, labeled_info, length)


# --- channel keys -----------------------------------------------------------


def derive_channel_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 7.1.3 DeriveKeyPair for DHKEM(X25519): ``(private, public)`` raw bytes.

    Deterministic, so a fleet can derive its channel key from a seed it already
    protects (and so the RFC's vectors can check it).
    """
    if not isinstance(ikm, bytes):
        raise TypeError("ikm must be bytes")
    if len(ikm) < _MIN_IKM_SIZE:
        raise ValueError(f"ikm must have at least {_MIN_IKM_SIZE} bytes")
    dkp_prk = _labeled_extract(b"", b"dkp_prk", ikm)
    private = _labeled_expand(dkp_prk, b"sk", b"", PRIVATE_KEY_SIZE)
    return private, channel_public_key(private)


def generate_channel_key_pair(rng: Rng = default_rng) -> tuple[bytes, bytes]:
    """A fresh ``(private, public)`` channel key pair: DeriveKeyPair over 32 random bytes."""
    return derive_channel_key_pair(draw(rng, PRIVATE_KEY_SIZE))


def channel_public_key(private_key: bytes) -> bytes:
    """The raw X25519 public key of a raw private key."""
    return _private_key(private_key).public_key().public_bytes_raw()


class ChannelPrivateKey:
    """A channel private key loaded once (loading derives the public key: a scalar
    multiplication an HSM should not pay on every request). Never shown in a repr."""

    __slots__ = ("_key",)

    def __init__(self, private_key: bytes) -> None:
        self._key = _private_key(private_key)

    def __repr__(self) -> str:
        return "ChannelPrivateKey(<secret>)"

    @property
    def key(self) -> X25519PrivateKey:
        return self._key


def _private_key(private_key: bytes) -> X25519PrivateKey:
    if not isinstance(private_key, bytes) or len(private_key) != PRIVATE_KEY_SIZE:
        raise ValueError("a channel private key is exactly 32 bytes")
    return X25519PrivateKey.from_private_bytes(private_key)


def _public_key(public_key: bytes) -> X25519PublicKey:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError("a channel public key is exactly 32 bytes")
    return X25519PublicKey.from_public_bytes(public_key)


# --- per-exchange state -------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _ChannelState:
    fleet_id: bytes
    enc: bytes
    request_digest: bytes
    response_secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        # Secret-free: the fleet and which request this state belongs to.
        return (
            f"{type(self).__name__}(fleet_id={self.fleet_id!r}, "
            f"request_digest={self.request_digest.hex()})"
        )


@dataclass(frozen=True, eq=False, repr=False)
class ClientChannelState(_ChannelState):
    """What the client keeps between sending a request and opening its response."""


@dataclass(frozen=True, eq=False, repr=False)
class ServerChannelState(_ChannelState):
    """What the HSM keeps between opening a request and sealing its response."""


# --- requests -------------------------------------------------------------


def _check_fleet_id(fleet_id: bytes) -> None:
    if not isinstance(fleet_id, bytes):
        raise TypeError("fleet_id must be bytes")
    if not 0 < len(fleet_id) <= MAX_FLEET_ID_SIZE:
        raise ValueError(f"fleet_id must be 1..{MAX_FLEET_ID_SIZE} bytes")


def _check_aad(aad: bytes) -> None:
    if not isinstance(aad, bytes):
        raise TypeError("aad must be bytes")
    if len(aad) > MAX_AAD_SIZE:
        raise ValueError(f"aad exceeds {MAX_AAD_SIZE} bytes")


def _request_info(fleet_id: bytes, aad: bytes) -> bytes:
    # The length prefix keeps (fleet_id, aad-hash) pairs unambiguous; the aad is
    # hashed so that info stays small and fixed in shape.
    return _REQUEST_INFO_LABEL + bytes([len(fleet_id)]) + fleet_id + hashlib.sha256(aad).digest()


def seal_request(
    channel_public_key: bytes,
    fleet_id: bytes,
    plaintext: bytes,
    aad: bytes,
    rng: Rng = default_rng,
) -> tuple[ClientChannelState, bytes]:
    """Seal ``plaintext`` to the fleet; return the state to open the response and the bytes to send.

    ``aad`` travels in the clear next to the sealed bytes (the host routes on
    it) and is bound to them. ``rng`` draws the response secret; the HPKE
    ephemeral key comes from OpenSSL's CSPRNG (cryptography cannot inject it).
    """
    _check_fleet_id(fleet_id)
    _check_aad(aad)
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if not 0 < len(plaintext) <= MAX_REQUEST_PLAINTEXT_SIZE:
        raise ValueError(f"request plaintext must be 1..{MAX_REQUEST_PLAINTEXT_SIZE} bytes")
    public = _public_key(channel_public_key)
    response_secret = draw(rng, RESPONSE_SECRET_SIZE)
    try:
        enc_and_ct = _SUITE.encrypt(
            response_secret + plaintext, public, _request_info(fleet_id, aad)
        )
    except ValueError:
        # OpenSSL refuses a low-order point: the X25519 output would be all zero
        # (RFC 9180 section 7.1.4 requires this check).
        raise InvalidPointError("channel public key is a low-order X25519 point") from None
    sealed = bytes([REQUEST_TAG]) + enc_and_ct
    state = ClientChannelState(
        fleet_id=fleet_id,
        enc=enc_and_ct[:ENC_SIZE],
        request_digest=hashlib.sha256(sealed).digest(),
        response_secret=response_secret,
    )
    return state, sealed


def open_request(
    channel_private_key: bytes | ChannelPrivateKey, fleet_id: bytes, sealed: bytes, aad: bytes
) -> tuple[ServerChannelState, bytes]:
    """Open a sealed request (HSM side); raise a codec error or :class:`DecryptionError`."""
    _check_fleet_id(fleet_id)
    _check_aad(aad)
    private = (
        channel_private_key.key
        if isinstance(channel_private_key, ChannelPrivateKey)
        else _private_key(channel_private_key)
    )
    _check_envelope(sealed, REQUEST_TAG, MIN_SEALED_REQUEST_SIZE, MAX_SEALED_REQUEST_SIZE)
    try:
        inner = _SUITE.decrypt(sealed[1:], private, _request_info(fleet_id, aad))
    except InvalidTag:
        raise DecryptionError("request did not open under this fleet's channel key") from None
    # The sizes checked above make the inner plaintext at least secret + 1 byte long;
    # re-check anyway since the bound is what the rest of this function relies on.
    if len(inner) <= RESPONSE_SECRET_SIZE:
        raise TruncatedError("request plaintext is shorter than its response secret")
    state = ServerChannelState(
        fleet_id=fleet_id,
        enc=sealed[1 : 1 + ENC_SIZE],
        request_digest=hashlib.sha256(sealed).digest(),
        response_secret=inner[:RESPONSE_SECRET_SIZE],
    )
    return state, inner[RESPONSE_SECRET_SIZE:]


def _check_envelope(data: bytes, tag: int, minimum: int, maximum: int) -> None:
    if not isinstance(data, bytes):
        raise TypeError("sealed data must be bytes")
    if len(data) < minimum:
        raise TruncatedError(f"sealed message of {len(data)} bytes is shorter than {minimum}")
    if len(data) > maximum:
        raise SizeLimitError(f"sealed message of {len(data)} bytes exceeds {maximum}")
    if data[0] != tag:
        raise UnknownTagError(f"sealed message tag 0x{data[0]:02x}, expected 0x{tag:02x}")


# --- responses --------------------------------------------------------------


def _response_aead(state: _ChannelState, response_nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    prk = _extract(state.enc + response_nonce, state.response_secret)
    key = _expand(prk, _RESPONSE_KEY_LABEL + state.request_digest, AEAD_KEY_SIZE)
    nonce = _expand(prk, _RESPONSE_NONCE_LABEL + state.request_digest, AEAD_NONCE_SIZE)
    return ChaCha20Poly1305(key), nonce


def seal_response(state: ServerChannelState, plaintext: bytes, rng: Rng = default_rng) -> bytes:
    """Encrypt the HSM's response so only the sender of the state's request can read it."""
    if not isinstance(state, ServerChannelState):
        raise TypeError("seal_response needs the ServerChannelState of the request")
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if not 0 < len(plaintext) <= MAX_RESPONSE_PLAINTEXT_SIZE:
        raise ValueError(f"response plaintext must be 1..{MAX_RESPONSE_PLAINTEXT_SIZE} bytes")
    response_nonce = draw(rng, RESPONSE_NONCE_SIZE)
    header = bytes([RESPONSE_TAG]) + response_nonce
    aead, nonce = _response_aead(state, response_nonce)
    return header + aead.encrypt(nonce, plaintext, header)


def open_response(state: ClientChannelState, sealed: bytes) -> bytes:
    """Open the response to the state's request; raise a codec error or :class:`DecryptionError`."""
    if not isinstance(state, ClientChannelState):
        raise TypeError("open_response needs the ClientChannelState of the request")
    _check_envelope(sealed, RESPONSE_TAG, MIN_SEALED_RESPONSE_SIZE, MAX_SEALED_RESPONSE_SIZE)
    header_size = 1 + RESPONSE_NONCE_SIZE
    aead, nonce = _response_aead(state, sealed[1:header_size])
    try:
        return aead.decrypt(nonce, sealed[header_size:], sealed[:header_size])
    except InvalidTag:
        raise DecryptionError("response is not bound to this request or was altered") from None
