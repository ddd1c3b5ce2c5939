"""3DH authenticated key exchange of OPAQUE (RFC 9807 section 6.4).

The transcript ("preamble", section 6.4.3), the key schedule (section 6.4.2)
and the two MACs. The Diffie-Hellman computations themselves live with the
parties (client.py, server.py) because each uses different key material.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bkv.crypto import hkdf
from bkv.crypto.opaque.config import NX
from bkv.crypto.opaque.messages import KE1, CredentialResponse

_PREAMBLE_TAG = b"OPAQUEv1-"  # section 6.4.3: version tag of the transcript
_LABEL_PREFIX = b"OPAQUE-"  # section 6.4.2: Expand-Label's label prefix
_MAX_LABEL_CONTEXT = 255  # Expand-Label's context<0..255>


def _prefixed2(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


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
    return b"".join(
        (
            _PREAMBLE_TAG,
            _prefixed2(context),
            _prefixed2(client_identity),
            ke1.to_bytes(),
            _prefixed2(server_identity),
            credential_response.to_bytes(),
            server_nonce,
            server_public_keyshare,
        )
    )


def expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """Expand-Label (RFC 9807 section 6.4.2), TLS 1.3-style CustomLabel."""
    full_label = _LABEL_PREFIX + label
    if len(context) > _MAX_LABEL_CONTEXT or len(full_label) > _MAX_LABEL_CONTEXT:
        raise ValueError("Expand-Label label or context too long")
    custom_label = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return hkdf.expand(secret, custom_label, length)


def derive_secret(secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """Derive-Secret(Secret, Label, Transcript-Hash) = Expand-Label(..., Nx)."""
    return expand_label(secret, label, transcript_hash, NX)


@dataclass(frozen=True)
class AkeKeys:
    """Output of DeriveKeys (RFC 9807 section 6.4.2), plus the handshake secret for vectors."""

    handshake_secret: bytes = field(repr=False)
    server_mac_key: bytes = field(repr=False)
    client_mac_key: bytes = field(repr=False)
    session_key: bytes = field(repr=False)


def derive_keys(ikm: bytes, preamble_bytes: bytes) -> AkeKeys:
    """DeriveKeys(ikm, preamble) (RFC 9807 section 6.4.2)."""
    prk = hkdf.extract(b"", ikm)
    preamble_hash = hkdf.sha512(preamble_bytes)
    handshake_secret = derive_secret(prk, b"HandshakeSecret", preamble_hash)
    session_key = derive_secret(prk, b"SessionKey", preamble_hash)
    server_mac_key = derive_secret(handshake_secret, b"ServerMAC", b"")
    client_mac_key = derive_secret(handshake_secret, b"ClientMAC", b"")
    return AkeKeys(handshake_secret, server_mac_key, client_mac_key, session_key)


def server_mac(keys: AkeKeys, preamble_bytes: bytes) -> bytes:
    """server_mac = MAC(Km2, Hash(preamble)) (section 6.4.4)."""
    return hkdf.hmac_sha512(keys.server_mac_key, hkdf.sha512(preamble_bytes))


def client_mac(keys: AkeKeys, preamble_bytes: bytes, server_mac_bytes: bytes) -> bytes:
    """client_mac = MAC(Km3, Hash(preamble || server_mac)) (sections 6.4.4, 6.4.5)."""
    return hkdf.hmac_sha512(keys.client_mac_key, hkdf.sha512(preamble_bytes + server_mac_bytes))
