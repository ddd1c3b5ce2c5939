"""Client side of the vault protocol (sans-IO): build requests, read answers, wrap the key.

The operations' steps are in :mod:`bkv.client.flows` and :mod:`bkv.client.sdk`
moves the bytes; the pieces every step uses are here, with no I/O: sealing
inner requests to the fleet's channel key (:mod:`bkv.crypto.channel`), opening
and checking the answers, mapping HSM error codes to :mod:`bkv.errors` classes
(refusing the clear ones only the sealed channel may carry), and protecting the
backup key.

Backup-key wrapping. The secret the vault stores is not the backup key itself
but the key encrypted under the OPAQUE ``export_key`` (RFC 9807 section 6:
"application-specific" secrets are the export key's purpose)::

    k      = HKDF-Expand(HKDF-Extract(WRAP_LABEL, export_key), "key" || account_id, 32)
    secret = 0x01 || nonce (12)
             || ChaCha20-Poly1305(k, nonce, backup_key, ad = WRAP_LABEL || account_id)

(HKDF-SHA512, the OPAQUE suite's KDF.) The HSM never sees the backup key:
what it releases after a valid KE3 is this wrapped blob (itself sealed under
the session key by :mod:`bkv.protocol.release`, inside the channel's response
seal). A stolen HSM state alone therefore does not reveal backup keys, and the
export key exists only on a client that knows the password.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TypeVar, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bkv.client.trust import FleetKeys
from bkv.crypto import channel, hkdf
from bkv.crypto.ksf import Argon2id, Ksf
from bkv.crypto.opaque import Config
from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import (
    BkvError,
    ClientAuthenticationError,
    CodecError,
    DecryptionError,
    ProtocolStateError,
    RecordExistsError,
    ServerAuthenticationError,
    UnauthenticatedRejectionError,
    VaultError,
    VaultFullError,
)
from bkv.protocol.messages import (
    INNER_RESPONSES,
    KIND_OF_REQUEST,
    MAX_ACCOUNT_ID,
    OPAQUE_CONTEXT,
    OUTER_RESPONSES,
    ErrorCode,
    HsmRejected,
    HsmRequest,
    HsmResponse,
    InnerRequest,
    InnerResponse,
    StatusOk,
    VaultFailure,
    request_aad,
)
from bkv.wire import decode_any, encode

_T = TypeVar("_T")

DEFAULT_KSF: Ksf = Argon2id()
"""The client's password stretching: Argon2id, RFC 9106 section 4's second
recommended option (64 MiB, 3 passes, 4 lanes; ~0.2 s on a laptop core).

The KSF runs only on the client (RFC 9807 section 6: the server never sees the
password or its stretch), so it is the client's choice, but it must be the
same at registration and at every recovery: a record made under one KSF does
not open under another. It is what makes a stolen HSM state expensive to
attack offline, so production clients must not weaken it; tests pass a small
Argon2id to stay fast.
"""


def opaque_config(ksf: Ksf = DEFAULT_KSF) -> Config:
    """The fleet's OPAQUE parameters (context: :mod:`bkv.protocol.messages`) with ``ksf``."""
    return Config(context=OPAQUE_CONTEXT, ksf=ksf)


BACKUP_KEY_SIZE = 32
"""The product's backup key: 256 random bits."""

WRAP_LABEL = b"bkv.client.backup-key.v1"
WRAP_VERSION = 0x01
_WRAP_NONCE_SIZE = 12
_WRAP_TAG_SIZE = 16
WRAPPED_KEY_SIZE = 1 + _WRAP_NONCE_SIZE + BACKUP_KEY_SIZE + _WRAP_TAG_SIZE


@dataclass(frozen=True)
class VaultStatus:
    """A record's public state (never the secret).

    ``failed_attempts``: password checks of the record that failed since its last
    successful recovery, for the owner to learn that someone was guessing. After a
    registration it is the attempts the replaced record had spent and the new one
    carried over (``guess_limit - attempts_left``).
    """

    exists: bool
    generation: int
    guess_limit: int
    attempts_left: int
    failed_attempts: int


@dataclass(frozen=True)
class RecoveredKey:
    """A recovery's result: the backup key and what the owner should hear about guessing.

    ``failed_attempts``: password checks of the record that failed before this
    recovery (since the previous successful one); a number the owner did not make
    means someone else was guessing their password. ``generation``: the record
    recovered (as :attr:`VaultStatus.generation`).
    """

    backup_key: bytes = field(repr=False)
    failed_attempts: int
    generation: int

    def __post_init__(self) -> None:
        if len(self.backup_key) != BACKUP_KEY_SIZE:
            raise ValueError(f"a backup key is {BACKUP_KEY_SIZE} bytes")


@dataclass(frozen=True)
class PendingRequest:
    """A request in flight: its exact bytes and what is needed to open the answer."""

    request: bytes
    channel_state: channel.ClientChannelState = field(repr=False)


def build_request(
    fleet: FleetKeys, account_id: bytes, inner: InnerRequest, rng: Rng = default_rng
) -> PendingRequest:
    """Seal ``inner`` to the fleet and wrap it in the outer :class:`HsmRequest`."""
    if not 0 < len(account_id) <= MAX_ACCOUNT_ID:
        raise ValueError(f"account_id must be 1..{MAX_ACCOUNT_ID} bytes")
    kind = KIND_OF_REQUEST[type(inner)]
    aad = request_aad(fleet.fleet_id, kind, account_id)
    state, sealed = channel.seal_request(
        fleet.channel_public_key, fleet.fleet_id.encode("utf-8"), encode(inner), aad, rng
    )
    outer = HsmRequest(fleet.fleet_id, kind, account_id, sealed)
    return PendingRequest(encode(outer), state)


_REFUSAL_ERRORS: dict[ErrorCode, type[BkvError]] = {
    ErrorCode.MALFORMED: CodecError,
    ErrorCode.WRONG_FLEET: VaultError,
    ErrorCode.UNDECRYPTABLE: DecryptionError,
    ErrorCode.KIND_MISMATCH: CodecError,
    ErrorCode.PROTOCOL_STATE: ProtocolStateError,
    ErrorCode.LOGIN_FAILED: ClientAuthenticationError,
    ErrorCode.RECORD_EXISTS: RecordExistsError,
    ErrorCode.INVALID_POLICY: VaultError,
    ErrorCode.VAULT_FULL: VaultFullError,
}


CLEAR_REJECTIONS = frozenset({ErrorCode.MALFORMED, ErrorCode.WRONG_FLEET, ErrorCode.UNDECRYPTABLE})
"""The codes the HSM sends in the clear (``HsmRejected``): it could not open the
request, so it has no channel to the client to answer on (docs/protocol.md,
"Outer messages"). Anyone on the path can forge these; they say only that the
request did not arrive intact. Every other code comes sealed to the request
(``VaultFailure``), so a clear one is the host's invention."""


def error_for(code: ErrorCode) -> BkvError:
    """The :mod:`bkv.errors` exception a *sealed* HSM error code stands for."""
    return _REFUSAL_ERRORS.get(code, VaultError)(f"the vault refused: {code.name}")


def clear_rejection_error(code: ErrorCode) -> BkvError:
    """The exception for a clear ``HsmRejected``: its typed error only if the HSM can send it.

    Otherwise :class:`UnauthenticatedRejectionError`: a host that could make the
    SDK say ``RECORD_EXISTS`` or ``LOGIN_FAILED`` would steer what a person is
    told to do ("recover first", "wrong password") without the HSM's word.
    """
    if code not in CLEAR_REJECTIONS:
        return UnauthenticatedRejectionError(
            f"the host sent {code.name} in the clear; the vault only sends it sealed"
        )
    return error_for(code)


def read_response(pending: PendingRequest, answer: bytes) -> InnerResponse:
    """Open the HSM's answer to ``pending``; HSM refusals are raised as typed errors."""
    outer = decode_any(answer, OUTER_RESPONSES)
    if isinstance(outer, HsmRejected):
        raise clear_rejection_error(outer.code)
    if not isinstance(outer, HsmResponse):
        raise ProtocolStateError("the vault's answer is not an HsmResponse")
    inner = decode_any(channel.open_response(pending.channel_state, outer.sealed), INNER_RESPONSES)
    if isinstance(inner, VaultFailure):
        raise error_for(inner.code)
    # decode_any returns only classes of INNER_RESPONSES, the one registry of inner answers.
    return cast(InnerResponse, inner)


def expect(response: InnerResponse, kind: type[_T]) -> _T:
    """``response`` if it is a ``kind``; otherwise the HSM broke the protocol."""
    if not isinstance(response, kind):
        raise ProtocolStateError(
            f"expected {kind.__name__}, the vault answered {type(response).__name__}"
        )
    return response


def status_of(response: StatusOk) -> VaultStatus:
    """The public view of a :class:`StatusOk`."""
    return VaultStatus(
        response.exists,
        response.generation,
        response.guess_limit,
        response.attempts_left,
        response.failed_attempts,
    )


def check_server_key(fleet: FleetKeys, server_public_key: bytes) -> None:
    """Refuse to register against an OPAQUE key other than the fleet's (role ``opaque_ake``)."""
    if not hmac.compare_digest(fleet.opaque_public_key, server_public_key):
        raise ServerAuthenticationError("the vault's OPAQUE key is not the fleet's")


# --- backup-key wrapping ----------------------------------------------------


def _wrap_aead(export_key: bytes, account_id: bytes) -> ChaCha20Poly1305:
    if not export_key:
        raise ValueError("export_key must be non-empty")
    prk = hkdf.extract(WRAP_LABEL, export_key)
    return ChaCha20Poly1305(hkdf.expand(prk, b"key" + account_id, 32))


def wrap_backup_key(
    export_key: bytes, account_id: bytes, backup_key: bytes, rng: Rng = default_rng
) -> bytes:
    """The secret to store in the vault: ``backup_key`` encrypted under the export key."""
    if len(backup_key) != BACKUP_KEY_SIZE:
        raise ValueError(f"a backup key is {BACKUP_KEY_SIZE} bytes")
    nonce = draw(rng, _WRAP_NONCE_SIZE)
    body = _wrap_aead(export_key, account_id).encrypt(nonce, backup_key, WRAP_LABEL + account_id)
    return bytes([WRAP_VERSION]) + nonce + body


def unwrap_backup_key(export_key: bytes, account_id: bytes, secret: bytes) -> bytes:
    """The backup key inside a secret made by :func:`wrap_backup_key`."""
    if len(secret) != WRAPPED_KEY_SIZE or secret[0] != WRAP_VERSION:
        raise DecryptionError("the stored secret is not a wrapped backup key")
    nonce, body = secret[1 : 1 + _WRAP_NONCE_SIZE], secret[1 + _WRAP_NONCE_SIZE :]
    try:
        return _wrap_aead(export_key, account_id).decrypt(nonce, body, WRAP_LABEL + account_id)
    except InvalidTag:
        raise DecryptionError("the stored secret does not open under this password") from None
