"""The HSM application's volatile tables: open login sessions and started registrations.

Neither is durable state: both are local to one HSM, never replicated, lost on
restart, and always safe to lose (docs/threat-model.md, "The guess-limit
argument"): a lost session is a counted attempt that released nothing; a lost
started registration makes the client start again. Both tables are bounded
and expire entries by time; when a table is full its oldest entry is dropped
(a dropped session's attempt stays counted).

Ids are random capabilities (128-bit session ids, 256-bit registration ids)
drawn by the HSM and carried only inside sealed messages; they are
single-use: taken out of the table on first use, whatever happens next.
Sans-IO: ``now_ms`` is passed in.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from bkv.crypto.opaque import ServerLoginState
from bkv.errors import ProtocolStateError

SESSION_TTL_MS = 5 * 60 * 1000
"""An open login session (KE2 sent, KE3 awaited) lives at most this long."""

REGISTRATION_TTL_MS = 10 * 60 * 1000
"""A started registration (RegisterStart answered) lives at most this long."""

MAX_SESSIONS = 4096
"""Open sessions one HSM keeps; the oldest is dropped first (its attempt stays counted)."""

MAX_PENDING_REGISTRATIONS = 4096
"""Started registrations one HSM keeps (one per account); the oldest is dropped first."""


@dataclass(frozen=True)
class LoginSession:
    """A KE2 that went out; the KE3 that answers it is awaited.

    ``live`` sessions answer a real record: ``generation`` is that record's and
    ``attempt`` the sequence number of the attempt counted for this KE1
    (:class:`bkv.hsm.state.ForgiveAttempts` names it). A fake-record session
    (no live record) has neither (0) and no KE3 can complete it.
    """

    account_id: bytes
    generation: int
    attempt: int
    login_state: ServerLoginState = field(repr=False)
    expires_ms: int

    @property
    def live(self) -> bool:
        """Whether a real record answered this session's KE1."""
        return self.generation != 0


@dataclass(frozen=True)
class StartedRegistration:
    """A RegisterStart answered; RegisterFinish under ``registration_id`` is awaited."""

    registration_id: bytes = field(repr=False)
    generation: int  # the slot's generation when started (InstallRecord checks it)
    expires_ms: int


class VolatileTables:
    """Open sessions by session id and started registrations by account, both bounded."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, LoginSession] = {}
        self._registrations: dict[bytes, StartedRegistration] = {}

    def __repr__(self) -> str:
        return (
            f"VolatileTables(sessions={len(self._sessions)},"
            f" registrations={len(self._registrations)})"
        )

    def expire(self, now_ms: int) -> None:
        """Drop every session and started registration past its expiry at ``now_ms``."""
        for session_id in [k for k, s in self._sessions.items() if s.expires_ms <= now_ms]:
            del self._sessions[session_id]
        for account in [k for k, r in self._registrations.items() if r.expires_ms <= now_ms]:
            del self._registrations[account]

    # --- login sessions -----------------------------------------------------------

    def open_session(self, session_id: bytes, session: LoginSession) -> None:
        """Keep ``session`` under ``session_id``; drops the oldest session when full."""
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        self._sessions[session_id] = session

    def has_session(self, session_id: bytes) -> bool:
        """Whether ``session_id`` names an open session (expired ones are gone once expired)."""
        return session_id in self._sessions

    def take_session(self, account_id: bytes, session_id: bytes, now_ms: int) -> LoginSession:
        """Remove and return the open session ``session_id`` of ``account_id``.

        :class:`ProtocolStateError` if there is none, it expired, or it belongs to
        another account. Looked up and checked *before* it is removed: a request
        naming another account's session id must not close that session.
        """
        session = self._sessions.get(session_id)
        if session is None or session.account_id != account_id or session.expires_ms <= now_ms:
            raise ProtocolStateError("no open session with this id for this account")
        del self._sessions[session_id]  # single-use: gone from here on, whatever the outcome
        return session

    def has_live_session(self, account_id: bytes, generation: int) -> bool:
        """Whether a session on the record of ``generation`` could still prove the password."""
        return any(
            s.live and s.account_id == account_id and s.generation == generation
            for s in self._sessions.values()
        )

    # --- started registrations ------------------------------------------------------

    def start_registration(self, account_id: bytes, started: StartedRegistration) -> None:
        """Keep ``started`` as the account's one started registration (a newer one wins)."""
        self._registrations.pop(account_id, None)
        if len(self._registrations) >= MAX_PENDING_REGISTRATIONS:
            self._registrations.pop(next(iter(self._registrations)))
        self._registrations[account_id] = started

    def registration(self, account_id: bytes, registration_id: bytes) -> StartedRegistration:
        """The account's started registration, if it is ``registration_id`` (it stays).

        :class:`ProtocolStateError` otherwise (none, expired, replaced, or used).
        """
        started = self._registrations.get(account_id)
        if started is None or not hmac.compare_digest(started.registration_id, registration_id):
            raise ProtocolStateError("no pending registration with this id")
        return started

    def end_registration(self, account_id: bytes) -> None:
        """Forget the account's started registration (it was used, whatever the outcome)."""
        self._registrations.pop(account_id, None)


__all__ = [
    "MAX_PENDING_REGISTRATIONS",
    "MAX_SESSIONS",
    "REGISTRATION_TTL_MS",
    "SESSION_TTL_MS",
    "LoginSession",
    "StartedRegistration",
    "VolatileTables",
]
