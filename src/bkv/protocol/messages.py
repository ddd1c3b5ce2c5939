"""The message API of the HSM application: every byte that crosses the host.

The HSM application (:mod:`bkv.hsm.app`) has exactly one interface: request
bytes in, response bytes out. This module declares all of those messages with
:mod:`bkv.wire` (tag, version, strict canonical decoding, a named limit on
every variable field). Nothing else reaches the HSM.

Layers
------
The host (operator's front end, :mod:`bkv.host`) relays an **outer** message,
whose fields are readable by the host, around an **inner** message sealed
end-to-end between the client and the fleet::

    client                      host                          HSM
      | HsmRequest(fleet_id, kind, account_id, sealed) ------> |
      |                         (reads kind, account_id)       | opens `sealed`
      | <------------- HsmResponse(sealed) | HsmRejected(code) |

- ``HsmRequest.sealed`` is ``bkv.crypto.channel`` HPKE (RFC 9180, base mode)
  of ``encode(inner request)`` to the fleet's **channel public key**, with
  associated data :func:`request_aad` (fleet id, kind and account id). The host
  can read ``kind`` and ``account_id`` (it authenticates the account and
  rate-limits by them) but cannot change them: the HSM opens the seal with the
  AAD it recomputes from the clear fields, and checks that the inner message's
  type matches ``kind``.
- ``HsmResponse.sealed`` is the inner response sealed under a key derived
  from that very request (``bkv.crypto.channel`` response binding: HKDF over a
  32-byte ``response_secret`` the client draws fresh and sends *inside* the
  HPKE-sealed request, salted with the request's encapsulated key and a fresh
  response nonce, bound to the SHA-256 of the sealed request), so only the
  client that made the request can open it, and a response cannot be replayed
  to another request.
- ``HsmRejected(code)`` is sent in the clear when the HSM could not open the
  request at all (malformed outer bytes, wrong fleet, seal does not open,
  oversized). It carries no secret and no per-account information.

Inner requests (client -> HSM, sealed) and their responses (HSM -> client, sealed)
------------------------------------------------------------------------------------
``RequestKind`` / inner request        -> inner response on success
- ``REGISTER_START``  :class:`RegisterStart` (RFC 9807 RegistrationRequest)
  -> :class:`RegisterStartOk` (RegistrationResponse, ``registration_id``).
  The HSM draws a fresh random ``registration_id``; the OPRF key of the new
  record is derived from (account id, registration_id), so no registration
  ever evaluates the OPRF key of an existing record (that would be an
  unmetered OPRF oracle, i.e. an offline guessing aid). Volatile, single-use;
  the latest RegisterStart of an account replaces an older pending one.
  ``replaces_generation`` must name the account's live record (0: none), else
  ``PROTOCOL_STATE``; RegisterFinish is refused in turn if the slot's
  generation moved since (another install, a destroy or a delete).
- ``REGISTER_FINISH`` :class:`RegisterFinish` (registration_id,
  RegistrationRecord, the client's secret = backup key data, guess_limit)
  -> :class:`RegisterFinishOk` (generation of the new record, guess limit, the
  attempts it would have left if exposed now). Durable before the response
  leaves, as the account's *pending* record: it answers no password check (a
  KE1 gets the fake-record KE2 and counts nothing) and a live record it will
  replace stays live under its own counter. A retried registration replaces
  the pending record (no attempt was possible on it).
- ``REGISTER_EXPOSE`` :class:`RegisterExpose` (registration_id), sent by the
  client only after it saw RegisterFinishOk -> :class:`RegisterExposeOk`
  (generation, guess limit, attempts left). The pending record becomes the
  live record, replacing the old one and carrying over *all* of its spent
  attempts (refused with ``RECORD_EXISTS`` when they reach the new limit).
  Idempotent: when the live record already is the one of ``registration_id``
  (the client lost the first RegisterExposeOk) it answers RegisterExposeOk
  again and changes nothing. Refused with ``PROTOCOL_STATE`` for an unknown,
  replaced, destroyed or expired (:data:`bkv.hsm.state.PENDING_RECORD_TTL_MS`)
  registration id. See docs: "Re-registration rule".
- ``RECOVER_START``   :class:`RecoverStart` (KE1)
  -> :class:`RecoverStartOk` (session_id, KE2). The attempt is counted and
  made durable **before** KE2 leaves the HSM. For an account without a live
  record (never registered, destroyed, deleted) the KE2 is computed over the
  RFC 9807 fake record: same sizes, same format.
- ``RECOVER_FINISH``  :class:`RecoverFinish` (session_id, KE3, action)
  -> :class:`KeyReleased` (action RELEASE: the secret sealed under a key
  derived from the OPAQUE session key and the request, :mod:`bkv.protocol.release`)
  or :class:`RecordDeleted` (action DELETE: the account owner deletes the
  record; proving the password in the same session is the authorization).
  A valid KE3 forgives the attempts started before its own KE1 (its own
  included), never one started after it; ``KeyReleased.failed_attempts``
  tells the owner how many others counted. Sessions are single-use.
- ``RECOVER_ABORT``   :class:`RecoverAbort` (session_id) -> :class:`AbortOk`.
  The client found the password wrong (KE2 did not open); if the record has
  used all its attempts and no other session for it is open, it is destroyed
  now rather than at the next KE1 or housekeeping tick.
- ``STATUS``          :class:`StatusRequest` -> :class:`StatusOk` (exists,
  generation, guess limit, attempts left and failed attempts of the *live*
  record; never the secret). STATUS does reveal whether the account has a live record, to
  whoever can build a request for the account — and the host can (sealing
  needs only the public channel key). That is no loss: the host relays every
  registration and recovery of the account anyway. Enumeration protection
  (RFC 9807 section 10.9) is against parties *without* the account's bearer
  token, which the host checks before relaying; for them a destroyed,
  deleted and never-registered account answer KE1 alike (fake-record KE2).

Any inner failure -> :class:`VaultFailure` (an :class:`ErrorCode`), sealed like
any response, so the host learns nothing from it but its size.

OPAQUE parameters the client must use: suite ristretto255-SHA512, context
:data:`OPAQUE_CONTEXT`, default identities (none). The KSF is the client's own
choice (the server never runs it).
"""

from __future__ import annotations

import enum
from dataclasses import field
from typing import Annotated

from bkv.crypto.opaque import (
    KE1_SIZE,
    KE2_SIZE,
    KE3_SIZE,
    REGISTRATION_RECORD_SIZE,
    REGISTRATION_REQUEST_SIZE,
    REGISTRATION_RESPONSE_SIZE,
)
from bkv.wire import U8, U32, Bytes, EnumOf, Fixed, Registry, Text, message

OPAQUE_CONTEXT = b"bkv-vault-v1"
"""RFC 9807 ``context`` (section 6.1) shared by client and HSM: binds transcripts to bkv."""

MAX_FLEET_ID = 64
"""Fleet ids are short ASCII-ish labels (UTF-8 bytes)."""

MAX_ACCOUNT_ID = 64
"""Account ids are opaque bytes chosen by the host (e.g. a hash of the user id)."""

MAX_SECRET = 128
"""The client's secret stored in a record: a 32-byte backup key, possibly wrapped."""

MAX_GUESS_LIMIT = 100
"""Largest guess limit any policy may set (the fleet default is 10)."""

DEFAULT_GUESS_LIMIT = 10

REGISTRATION_ID_SIZE = 32
SESSION_ID_SIZE = 16

MAX_SEALED_REQUEST = 1024
"""HPKE encapsulated key + ciphertext of the largest inner request (~470 bytes) with room."""

MAX_SEALED_RESPONSE = 1024
"""Sealed largest inner response (KE2 response, ~350 bytes) with room."""

MAX_SEALED_SECRET = MAX_SECRET + 64
"""A released secret: nonce + AEAD ciphertext + tag (see :mod:`bkv.protocol.release`)."""

MAX_REQUEST_SIZE = 2048
"""Ceiling on an outer request; adapters refuse bigger bodies before decoding."""


class RequestKind(enum.IntEnum):
    """Which inner request an ``HsmRequest`` carries (clear, bound into the seal's AAD)."""

    REGISTER_START = 1
    REGISTER_FINISH = 2
    RECOVER_START = 3
    RECOVER_FINISH = 4
    RECOVER_ABORT = 5
    STATUS = 6
    REGISTER_EXPOSE = 7


class FinishAction(enum.IntEnum):
    """What a valid KE3 authorizes."""

    RELEASE = 1  # release the secret to the client, forgive the attempts before its KE1
    DELETE = 2  # delete the record (the account owner proved the password)


class ErrorCode(enum.IntEnum):
    """Why the HSM refused a request. Mirrors :mod:`bkv.errors` classes (client maps back)."""

    MALFORMED = 1  # CodecError: bytes are not a canonical message (or too big)
    WRONG_FLEET = 2  # the request names another fleet
    UNDECRYPTABLE = 3  # DecryptionError: the seal did not open
    KIND_MISMATCH = 4  # the clear kind does not match the sealed message
    PROTOCOL_STATE = 5  # ProtocolStateError: no such session / registration / pending record
    LOGIN_FAILED = 6  # ClientAuthenticationError: KE3 did not verify
    RECORD_EXISTS = 7  # RecordExistsError: registration would reset a spent counter
    INVALID_POLICY = 8  # guess limit outside 1..the fleet's maximum
    VAULT_FULL = 9  # VaultFullError: no room for another account on this HSM


# --- outer messages (the host reads these) ------------------------------------


@message(tag=0x0101, version=1, max_size=MAX_REQUEST_SIZE)
class HsmRequest:
    """Client -> host -> HSM. ``sealed`` is HPKE to the channel key, AAD = request_aad()."""

    fleet_id: Annotated[str, Text(max_len=MAX_FLEET_ID, min_len=1)]
    kind: RequestKind
    account_id: Annotated[bytes, Bytes(max_len=MAX_ACCOUNT_ID, min_len=1)]
    sealed: Annotated[bytes, Bytes(max_len=MAX_SEALED_REQUEST, min_len=1)] = field(repr=False)


@message(tag=0x0102, version=1)
class HsmResponse:
    """HSM -> host -> client: the inner response sealed to the requesting client."""

    sealed: Annotated[bytes, Bytes(max_len=MAX_SEALED_RESPONSE, min_len=1)] = field(repr=False)


@message(tag=0x0103, version=1)
class HsmRejected:
    """HSM -> host -> client, clear: the request could not be opened at all."""

    code: ErrorCode


REQUEST_AAD_LABEL = b"bkv.hsm.request.v1"


def request_aad(fleet_id: str, kind: RequestKind, account_id: bytes) -> bytes:
    """HPKE associated data of a request: binds the clear routing fields to the seal."""
    fleet = fleet_id.encode("utf-8")
    return (
        REQUEST_AAD_LABEL
        + len(fleet).to_bytes(1, "big")
        + fleet
        + int(kind).to_bytes(1, "big")
        + len(account_id).to_bytes(1, "big")
        + account_id
    )


# --- inner requests (sealed client -> HSM) ----------------------------------------


@message(tag=0x0201, version=2)
class RegisterStart:
    """RFC 9807 RegistrationRequest, and the generation of the live record it replaces.

    ``replaces_generation`` is the generation of the account's live record as
    the client last saw it (``StatusOk``), 0 when it saw none. The HSM refuses
    (``PROTOCOL_STATE``) when the live record is not that one: a host that
    holds a RegisterStart back while it spends the live record to destruction
    cannot then deliver it to start a record with a fresh counter.
    """

    registration_request: Annotated[bytes, Fixed(REGISTRATION_REQUEST_SIZE)]
    replaces_generation: U32 = 0


@message(tag=0x0202, version=1)
class RegisterFinish:
    """RegistrationRecord + the secret to keep, under the registration_id from RegisterStartOk.

    The record (with its masking key), the secret and the id stay out of reprs.
    """

    registration_id: Annotated[bytes, Fixed(REGISTRATION_ID_SIZE)] = field(repr=False)
    registration_record: Annotated[bytes, Fixed(REGISTRATION_RECORD_SIZE)] = field(repr=False)
    secret: Annotated[bytes, Bytes(max_len=MAX_SECRET, min_len=1)] = field(repr=False)
    guess_limit: U8 = DEFAULT_GUESS_LIMIT


@message(tag=0x0203, version=1)
class RecoverStart:
    """RFC 9807 KE1. Costs one attempt on a live record."""

    ke1: Annotated[bytes, Fixed(KE1_SIZE)]


@message(tag=0x0204, version=1)
class RecoverFinish:
    """RFC 9807 KE3 for an open session, and what it authorizes."""

    session_id: Annotated[bytes, Fixed(SESSION_ID_SIZE)] = field(repr=False)
    ke3: Annotated[bytes, Fixed(KE3_SIZE)] = field(repr=False)
    action: FinishAction = FinishAction.RELEASE


@message(tag=0x0205, version=1)
class RecoverAbort:
    """The client could not open KE2 (wrong password): close the session."""

    session_id: Annotated[bytes, Fixed(SESSION_ID_SIZE)] = field(repr=False)


@message(tag=0x0206, version=1)
class StatusRequest:
    """Attempts left on the account's live record."""


@message(tag=0x0207, version=1)
class RegisterExpose:
    """Make the pending record of ``registration_id`` live (after RegisterFinishOk). Single-use."""

    registration_id: Annotated[bytes, Fixed(REGISTRATION_ID_SIZE)] = field(repr=False)


# --- inner responses (sealed HSM -> client) ---------------------------------------


@message(tag=0x0281, version=1)
class RegisterStartOk:
    """RFC 9807 RegistrationResponse and the id to quote in RegisterFinish."""

    registration_response: Annotated[bytes, Fixed(REGISTRATION_RESPONSE_SIZE)]
    registration_id: Annotated[bytes, Fixed(REGISTRATION_ID_SIZE)] = field(repr=False)


@message(tag=0x0282, version=1)
class RegisterFinishOk:
    """The record is durable but *pending*: send RegisterExpose to make it live.

    ``attempts_left`` is what the record would have if exposed now (carry-over).
    """

    generation: U32
    guess_limit: U8
    attempts_left: U8


@message(tag=0x0283, version=1)
class RecoverStartOk:
    """KE2 (real or fake record: indistinguishable) and the single-use session id."""

    session_id: Annotated[bytes, Fixed(SESSION_ID_SIZE)] = field(repr=False)
    ke2: Annotated[bytes, Fixed(KE2_SIZE)] = field(repr=False)


@message(tag=0x0284, version=2)
class KeyReleased:
    """The secret, sealed under the OPAQUE session key (see :mod:`bkv.protocol.release`).

    ``failed_attempts`` is how many attempts counted against the record's limit
    when this KE3 arrived, other than its own: every attempt since the KE1 of
    the previous successful recovery (carried-over ones included), none of which
    had succeeded. The owner learns that someone was guessing (or that another
    of its own logins is still open).
    """

    generation: U32
    failed_attempts: U8
    sealed_secret: Annotated[bytes, Bytes(max_len=MAX_SEALED_SECRET, min_len=1)] = field(repr=False)


@message(tag=0x0285, version=1)
class RecordDeleted:
    """The record is gone (durably)."""

    generation: U32


@message(tag=0x0286, version=1)
class AbortOk:
    """The session is closed."""


@message(tag=0x0287, version=2)
class StatusOk:
    """Whether a live record exists, its counter, and its failed attempts. Never the secret.

    ``failed_attempts`` counts the attempts that count against the limit: every
    one since the KE1 of the last successful recovery (none has succeeded; some
    may be logins still open), so ``attempts_left + failed_attempts == guess_limit``.
    """

    exists: bool
    generation: U32
    guess_limit: U8
    attempts_left: U8
    failed_attempts: U8


@message(tag=0x0289, version=1)
class RegisterExposeOk:
    """The record is live (durably); ``attempts_left`` includes the carried-over counter."""

    generation: U32
    guess_limit: U8
    attempts_left: U8


@message(tag=0x0288, version=1)
class VaultFailure:
    """The HSM refused the request (after opening it)."""

    code: Annotated[ErrorCode, EnumOf(ErrorCode, width=1)]


InnerRequest = (
    RegisterStart
    | RegisterFinish
    | RegisterExpose
    | RecoverStart
    | RecoverFinish
    | RecoverAbort
    | StatusRequest
)
InnerResponse = (
    RegisterStartOk
    | RegisterFinishOk
    | RegisterExposeOk
    | RecoverStartOk
    | KeyReleased
    | RecordDeleted
    | AbortOk
    | StatusOk
    | VaultFailure
)

INNER_REQUESTS = Registry(
    [
        RegisterStart,
        RegisterFinish,
        RegisterExpose,
        RecoverStart,
        RecoverFinish,
        RecoverAbort,
        StatusRequest,
    ]
)
INNER_RESPONSES = Registry(
    [
        RegisterStartOk,
        RegisterFinishOk,
        RegisterExposeOk,
        RecoverStartOk,
        KeyReleased,
        RecordDeleted,
        AbortOk,
        StatusOk,
        VaultFailure,
    ]
)
OUTER_RESPONSES = Registry([HsmResponse, HsmRejected])

KIND_OF_REQUEST: dict[type, RequestKind] = {
    RegisterStart: RequestKind.REGISTER_START,
    RegisterFinish: RequestKind.REGISTER_FINISH,
    RegisterExpose: RequestKind.REGISTER_EXPOSE,
    RecoverStart: RequestKind.RECOVER_START,
    RecoverFinish: RequestKind.RECOVER_FINISH,
    RecoverAbort: RequestKind.RECOVER_ABORT,
    StatusRequest: RequestKind.STATUS,
}
"""The ``kind`` a client must put in the clear for each inner request."""
