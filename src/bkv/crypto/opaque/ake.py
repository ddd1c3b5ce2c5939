"""3DH authenticated key exchange of OPAQUE (RFC 9807 section 6.4).

The transcript ("preamble", section 6.4.3), the key schedule (section 6.4.2)
and the two MACs. The Diffie-Hellman computations themselves live with the
parties (client.py, server.py) because each uses different key material.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from bkv.crypto import hkdf
from bkv.crypto.opaque.config import NX
from bkv.crypto.opaque.messages import KE1, CredentialResponse

_PREAMBLE_TAG = b"OPAQUEv1-"  # section 6.4.3: version tag of the transcript
_LABEL_PREFIX = b"OPAQUE-"  # section 6.4.2: Expand-Label's label prefix
_MAX_LABEL_CONTEXT = 255  # Expand-Label's context<0..255>


def preamble(
    context: bytes,
    client_identity: bytes,
    ke1: KE1,
    server_identity: bytes,
    credential_response: CredentialResponse,
    *,
    server_nonce: bytes,
    server_public_keyshare: bytes,
) -> bytes:
    """Preamble (RFC 9807 section 6.4.3): the exact transcript both MACs cover."""
    return preamble_of_encodings(
        context,
        client_identity,
        ke1.to_bytes(),
        server_identity,
        credential_response.to_bytes(),
        server_nonce=server_nonce,
        server_public_keyshare=server_public_keyshare,
    )


def preamble_of_encodings(
    context: bytes,
    client_identity: bytes,
    ke1: bytes,
    server_identity: bytes,
    credential_response: bytes,
    *,
    server_nonce: bytes,
    server_public_keyshare: bytes,
) -> bytes:
    """:func:`preamble` over the serialized KE1 and CredentialResponse (RFC 9807 section 6.4.3)."""
    return b"".join(
        (
            _PREAMBLE_TAG,
            len(context).to_bytes(2, "big"),
            context,
            len(client_identity).to_bytes(2, "big"),
            client_identity,
            ke1,
            len(server_identity).to_bytes(2, "big"),
            server_identity,
            credential_response,
            server_nonce,
            server_public_keyshare,
        )
    )


def _label_header(label: bytes, length: int) -> bytes:
    """CustomLabel's fixed part: uint16 length || opaque label<8..255> ("OPAQUE-" || Label)."""
    full_label = _LABEL_PREFIX + label
    if len(full_label) > _MAX_LABEL_CONTEXT:
        raise ValueError("Expand-Label label too long")
    return length.to_bytes(2, "big") + bytes((len(full_label),)) + full_label


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """Expand-Label (RFC 9807 section 6.4.2), TLS 1.3-style CustomLabel."""
    if len(context) > _MAX_LABEL_CONTEXT:
        raise ValueError("Expand-Label context too long")
    info = _label_header(label, length) + bytes((len(context),)) + context
    return hkdf.expand(secret, info, length)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """Derive-Secret(Secret, Label, Transcript-Hash) = Expand-Label(..., Nx)."""
    return expand_label(secret, label, transcript_hash, NX)


# The four Derive-Secret calls of DeriveKeys have constant labels; their CustomLabel bytes up
# to the context are computed once. The context is the 64-byte preamble hash or empty.
_HANDSHAKE_SECRET_HEADER = _label_header(b"HandshakeSecret", NX)
_SESSION_KEY_HEADER = _label_header(b"SessionKey", NX)
# Km2 and Km3 have an empty context; their HKDF-Expand input (info || 0x01) is all constant.
_SERVER_MAC_INFO = _label_header(b"ServerMAC", NX) + b"\x00\x01"
_CLIENT_MAC_INFO = _label_header(b"ClientMAC", NX) + b"\x00\x01"
_HASH_CONTEXT_LENGTH = bytes((hkdf.HASH_SIZE,))


@dataclass(frozen=True)
class AkeKeys:
    """Output of DeriveKeys (RFC 9807 section 6.4.2), plus the handshake secret for vectors."""

    handshake_secret: bytes = field(repr=False)
    server_mac_key: bytes = field(repr=False)
    client_mac_key: bytes = field(repr=False)
    session_key: bytes = field(repr=False)


def _derive_keys_from_hash(ikm: bytes, preamble_hash: bytes) -> AkeKeys:
    """DeriveKeys with Hash(preamble) already computed (RFC 9807 section 6.4.2)."""
    # PRK and handshake secret key two Expands each (RFC 5869 T(1) = HMAC(PRK, info || 0x01)).
    prk = hkdf.HmacKey(hkdf.extract(b"", ikm))
    context = _HASH_CONTEXT_LENGTH + preamble_hash
    handshake_secret = prk.mac(_HANDSHAKE_SECRET_HEADER + context + b"\x01")
    session_key = prk.mac(_SESSION_KEY_HEADER + context + b"\x01")
    handshake_key = hkdf.HmacKey(handshake_secret)
    server_mac_key = handshake_key.mac(_SERVER_MAC_INFO)
    client_mac_key = handshake_key.mac(_CLIENT_MAC_INFO)
    return AkeKeys(handshake_secret, server_mac_key, client_mac_key, session_key)


def derive_keys(ikm: bytes, preamble_bytes: bytes) -> AkeKeys:
    """DeriveKeys(ikm, preamble) (RFC 9807 section 6.4.2)."""
    return _derive_keys_from_hash(ikm, hkdf.sha512(preamble_bytes))


def server_mac(keys: AkeKeys, preamble_bytes: bytes) -> bytes:
    """server_mac = MAC(Km2, Hash(preamble)) (section 6.4.4)."""
    return hkdf.hmac_sha512(keys.server_mac_key, hkdf.sha512(preamble_bytes))


def client_mac(keys: AkeKeys, preamble_bytes: bytes, server_mac_bytes: bytes) -> bytes:
    """client_mac = MAC(Km3, Hash(preamble || server_mac)) (sections 6.4.4, 6.4.5)."""
    return hkdf.hmac_sha512(keys.client_mac_key, hkdf.sha512(preamble_bytes + server_mac_bytes))


def derive_keys_and_macs(ikm: bytes, preamble_bytes: bytes) -> tuple[AkeKeys, bytes, bytes]:
    """DeriveKeys, server_mac and the expected client_mac in one pass (section 6.4.4).

    Equal to ``derive_keys``, ``server_mac`` and ``client_mac``, but the preamble is hashed
    once: Hash(preamble) serves the key schedule and server_mac, and a copy of the same hash
    state continues over server_mac for client_mac.
    """
    transcript = hashlib.sha512(preamble_bytes)
    preamble_hash = transcript.digest()
    keys = _derive_keys_from_hash(ikm, preamble_hash)
    server_mac_bytes = hkdf.hmac_sha512(keys.server_mac_key, preamble_hash)
    transcript.update(server_mac_bytes)
    client_mac_bytes = hkdf.hmac_sha512(keys.client_mac_key, transcript.digest())
    return keys, server_mac_bytes, client_mac_bytes
