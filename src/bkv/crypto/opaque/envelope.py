"""The OPAQUE envelope (RFC 9807 section 4.1): Store at registration, Recover at login.

The envelope holds no ciphertext: the client's key pair is re-derived from the
randomized password and the envelope nonce, and the auth tag binds it to the
server's public key and both identities (the cleartext credentials).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from bkv.crypto import hkdf
from bkv.crypto.opaque.config import MAX_IDENTITY_SIZE, NH, NN, NSEED
from bkv.crypto.opaque.keys import derive_diffie_hellman_key_pair
from bkv.crypto.opaque.messages import Envelope
from bkv.crypto.ristretto import Element, Scalar
from bkv.errors import EnvelopeRecoveryError

_MASKING_KEY_LABEL = b"MaskingKey"
_AUTH_KEY_LABEL = b"AuthKey"
_EXPORT_KEY_LABEL = b"ExportKey"
_PRIVATE_KEY_LABEL = b"PrivateKey"
_CREDENTIAL_RESPONSE_PAD_LABEL = b"CredentialResponsePad"


@dataclass(frozen=True)
class CleartextCredentials:
    """RFC 9807 section 4.1.1: what the envelope's auth tag authenticates.

    A missing identity defaults to the party's public key (section 4.1.2,
    CreateCleartextCredentials).
    """

    server_public_key: bytes
    server_identity: bytes
    client_identity: bytes

    def to_bytes(self) -> bytes:
        """server_public_key || <server_identity> || <client_identity>, 2-byte length prefixes."""
        return (
            self.server_public_key
            + len(self.server_identity).to_bytes(2, "big")
            + self.server_identity
            + len(self.client_identity).to_bytes(2, "big")
            + self.client_identity
        )


def _check_identity(name: str, identity: bytes | None) -> None:
    if identity is not None and not 1 <= len(identity) <= MAX_IDENTITY_SIZE:
        raise ValueError(f"{name} must be 1..{MAX_IDENTITY_SIZE} bytes when given")


def create_cleartext_credentials(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> CleartextCredentials:
    """CreateCleartextCredentials (RFC 9807 section 4.1.2)."""
    server_identity, client_identity = cleartext_identities(
        server_public_key, client_public_key, server_identity, client_identity
    )
    return CleartextCredentials(server_public_key, server_identity, client_identity)


def cleartext_identities(
    server_public_key: bytes,
    client_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> tuple[bytes, bytes]:
    """(server_identity, client_identity) as CreateCleartextCredentials sets them (4.1.2)."""
    if server_identity is None:
        server_identity = server_public_key
    else:
        _check_identity("server_identity", server_identity)
    if client_identity is None:
        client_identity = client_public_key
    else:
        _check_identity("client_identity", client_identity)
    return server_identity, client_identity


def derive_masking_key(randomized_password: bytes) -> bytes:
    """masking_key = Expand(randomized_password, "MaskingKey", Nh) (section 5.2.3)."""
    return hkdf.expand(randomized_password, _MASKING_KEY_LABEL, NH)


def derive_auth_key(randomized_password: bytes, envelope_nonce: bytes) -> bytes:
    """auth_key = Expand(randomized_password, envelope_nonce || "AuthKey", Nh)."""
    return hkdf.expand(randomized_password, envelope_nonce + _AUTH_KEY_LABEL, NH)


def derive_export_key(randomized_password: bytes, envelope_nonce: bytes) -> bytes:
    """export_key = Expand(randomized_password, envelope_nonce || "ExportKey", Nh)."""
    return hkdf.expand(randomized_password, envelope_nonce + _EXPORT_KEY_LABEL, NH)


def derive_client_key_pair(
    randomized_password: bytes, envelope_nonce: bytes
) -> tuple[Scalar, Element]:
    """The client's AKE key pair from Expand(..., envelope_nonce || "PrivateKey", Nseed)."""
    seed = hkdf.expand(randomized_password, envelope_nonce + _PRIVATE_KEY_LABEL, NSEED)
    return derive_diffie_hellman_key_pair(seed)


def _auth_tag(auth_key: bytes, envelope_nonce: bytes, credentials: CleartextCredentials) -> bytes:
    return hkdf.hmac_sha512(auth_key, envelope_nonce + credentials.to_bytes())


@dataclass(frozen=True)
class StoredEnvelope:
    """Result of Store (RFC 9807 section 4.1.2)."""

    envelope: Envelope
    client_public_key: Element
    masking_key: bytes = field(repr=False)
    export_key: bytes = field(repr=False)


def store(
    randomized_password: bytes,
    server_public_key: bytes,
    server_identity: bytes | None,
    client_identity: bytes | None,
    envelope_nonce: bytes,
) -> StoredEnvelope:
    """Store (RFC 9807 section 4.1.2) with an explicit envelope nonce (random(Nn) in use)."""
    if len(envelope_nonce) != NN:
        raise ValueError(f"envelope nonce must be {NN} bytes")
    masking_key = derive_masking_key(randomized_password)
    auth_key = derive_auth_key(randomized_password, envelope_nonce)
    export_key = derive_export_key(randomized_password, envelope_nonce)
    _, client_public_key = derive_client_key_pair(randomized_password, envelope_nonce)
    credentials = create_cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    envelope = Envelope(envelope_nonce, _auth_tag(auth_key, envelope_nonce, credentials))
    return StoredEnvelope(envelope, client_public_key, masking_key, export_key)


@dataclass(frozen=True)
class RecoveredEnvelope:
    """Result of Recover (RFC 9807 section 4.1.3)."""

    client_private_key: Scalar = field(repr=False)
    cleartext_credentials: CleartextCredentials
    export_key: bytes = field(repr=False)


def recover(
    randomized_password: bytes,
    server_public_key: bytes,
    envelope: Envelope,
    server_identity: bytes | None,
    client_identity: bytes | None,
) -> RecoveredEnvelope:
    """Recover (RFC 9807 section 4.1.3); raises EnvelopeRecoveryError on a tag mismatch."""
    auth_key = derive_auth_key(randomized_password, envelope.nonce)
    export_key = derive_export_key(randomized_password, envelope.nonce)
    client_private_key, client_public_key = derive_client_key_pair(
        randomized_password, envelope.nonce
    )
    credentials = create_cleartext_credentials(
        server_public_key, client_public_key, server_identity, client_identity
    )
    expected_tag = _auth_tag(auth_key, envelope.nonce, credentials)
    if not hmac.compare_digest(envelope.auth_tag, expected_tag):
        raise EnvelopeRecoveryError("envelope auth tag did not verify")
    return RecoveredEnvelope(client_private_key, credentials, export_key)


def mask_response(masking_key: bytes, masking_nonce: bytes, data: bytes) -> bytes:
    """XOR with Expand(masking_key, masking_nonce || "CredentialResponsePad", len).

    RFC 9807 section 6.3.2.2 (server, masking server_public_key || envelope) and
    section 6.3.2.1 (client, unmasking): the same involution both ways.
    """
    pad = hkdf.expand(masking_key, masking_nonce + _CREDENTIAL_RESPONSE_PAD_LABEL, len(data))
    # Integer XOR: one C-level operation instead of a per-byte Python loop.
    mixed = int.from_bytes(pad, "big") ^ int.from_bytes(data, "big")
    return mixed.to_bytes(len(data), "big")
