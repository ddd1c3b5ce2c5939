"""The client SDK (adapter): talk to the vault through the host over HTTP.

::

    fleet = FleetKeys("bkv-dev", channel_public_key=..., opaque_public_key=...)
    with VaultClient("http://127.0.0.1:8080", token, account_id, fleet) as vault:
        vault.register(password, backup_key)          # -> VaultStatus
        backup_key = vault.recover(password)            # WrongPasswordError(attempts_left)
        vault.change_password(old, new)                 # -> VaultStatus
        vault.status()                                  # -> VaultStatus
        vault.delete(password)

Typed errors (all :class:`bkv.errors.BkvError`):

- :class:`WrongPasswordError` — ``attempts_left`` tries remain;
- :class:`RecordDestroyedError` — no record: destroyed at the guess limit,
  deleted, or never registered (the vault cannot tell them apart, on purpose);
- :class:`FleetUnreachableError` — the host or the HSM did not answer;
- :class:`RetryAfterError` (a :class:`RateLimitedError` with ``retry_after_seconds``),
  :class:`UnauthorizedError`;
- :class:`RecordExistsError`, :class:`ProtocolStateError`, :class:`ServerAuthenticationError`
  (KE2 from something that is not the fleet), codec and decryption errors.

The protocol logic is in :mod:`bkv.client.vault` (sans-IO); this module only
moves bytes. Fleet keys come from the caller: a validated bundle or pinned keys.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx

from bkv.client import vault
from bkv.client.vault import FleetKeys, PendingRequest, VaultStatus
from bkv.crypto.opaque import (
    KE2,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import (
    CodecError,
    EnvelopeRecoveryError,
    FleetUnreachableError,
    RecordDestroyedError,
    RetryAfterError,
    UnauthorizedError,
    VaultError,
    WrongPasswordError,
)
from bkv.hsm import release
from bkv.hsm.messages import (
    DEFAULT_GUESS_LIMIT,
    AbortOk,
    FinishAction,
    InnerRequest,
    InnerResponse,
    KeyReleased,
    RecordDeleted,
    RecoverAbort,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterFinish,
    RegisterFinishOk,
    RegisterStart,
    RegisterStartOk,
    StatusOk,
    StatusRequest,
)

REQUEST_PATH = "/v1/request"
OCTET_STREAM = "application/octet-stream"
MAX_ANSWER_SIZE = 4096


class VaultClient:
    """One account's view of the vault, through the host at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        account_id: bytes,
        fleet: FleetKeys,
        *,
        timeout_seconds: float = 30.0,
        rng: Rng = default_rng,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout_seconds,
            headers={"authorization": f"Bearer {token}"},
            transport=transport,
        )
        self.account_id = account_id
        self.fleet = fleet
        self._rng = rng

    def __repr__(self) -> str:
        return f"VaultClient(fleet_id={self.fleet.fleet_id!r}, account_id={self.account_id.hex()})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------

    def _post(self, request: bytes) -> bytes:
        try:
            response = self._http.post(
                REQUEST_PATH, content=request, headers={"content-type": OCTET_STREAM}
            )
        except httpx.TimeoutException:
            raise FleetUnreachableError("the vault did not answer in time") from None
        except httpx.HTTPError as exc:
            raise FleetUnreachableError(f"cannot reach the vault: {type(exc).__name__}") from None
        status = response.status_code
        if status == 200 and response.headers.get("content-type") == OCTET_STREAM:
            if len(response.content) > MAX_ANSWER_SIZE:
                raise CodecError("the vault's answer is too large")
            return response.content
        raise _http_error(response)

    def _exchange(self, inner: InnerRequest) -> tuple[PendingRequest, InnerResponse]:
        pending = vault.build_request(self.fleet, self.account_id, inner, self._rng)
        return pending, vault.read_response(pending, self._post(pending.request))

    def _call(self, inner: InnerRequest) -> InnerResponse:
        return self._exchange(inner)[1]

    # --- operations --------------------------------------------------------------

    def status(self) -> VaultStatus:
        """Whether a record exists and how many attempts it has left."""
        return vault.status_of(vault.expect(self._call(StatusRequest()), StatusOk))

    def register(
        self, password: bytes, backup_key: bytes, guess_limit: int = DEFAULT_GUESS_LIMIT
    ) -> VaultStatus:
        """Store ``backup_key`` under ``password``. A live record's counter carries over."""
        if len(backup_key) != vault.BACKUP_KEY_SIZE:
            raise ValueError(f"a backup key is {vault.BACKUP_KEY_SIZE} bytes")
        registration_state, registration_request = client_registration_start(password, self._rng)
        started = vault.expect(
            self._call(RegisterStart(registration_request.to_bytes())), RegisterStartOk
        )
        response = RegistrationResponse.from_bytes(started.registration_response)
        vault.check_server_key(self.fleet, response.server_public_key)
        record, export_key = client_registration_finish(
            registration_state, vault.OPAQUE_CONFIG, response, rng=self._rng
        )
        secret = vault.wrap_backup_key(export_key, self.account_id, backup_key, self._rng)
        finish = RegisterFinish(started.registration_id, record.to_bytes(), secret, guess_limit)
        done = vault.expect(self._call(finish), RegisterFinishOk)
        return VaultStatus(True, done.generation, done.guess_limit, done.attempts_left)

    def recover(self, password: bytes) -> bytes:
        """The backup key; costs one attempt, refunded by the vault if the password is right."""
        session_id, ke3, session_key, export_key = self._login(password)
        pending, answer = self._exchange(RecoverFinish(session_id, ke3, FinishAction.RELEASE))
        released = vault.expect(answer, KeyReleased)
        secret = release.open_release(session_key, pending.request, released.sealed_secret)
        return vault.unwrap_backup_key(export_key, self.account_id, secret)

    def delete(self, password: bytes) -> None:
        """Delete the record; proving the password is the authorization."""
        session_id, ke3, _session_key, _export_key = self._login(password)
        vault.expect(self._call(RecoverFinish(session_id, ke3, FinishAction.DELETE)), RecordDeleted)

    def change_password(self, old_password: bytes, new_password: bytes) -> VaultStatus:
        """Recover with the old password, then register the same backup key under the new one."""
        backup_key = self.recover(old_password)
        return self.register(new_password, backup_key)

    def _login(self, password: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        """OPAQUE login up to KE3: ``(session_id, ke3, session_key, export_key)``."""
        login_state, ke1 = client_login_start(password, self._rng)
        started = vault.expect(self._call(RecoverStart(ke1.to_bytes())), RecoverStartOk)
        try:
            ke3, session_key, export_key = client_login_finish(
                login_state, vault.OPAQUE_CONFIG, KE2.from_bytes(started.ke2)
            )
        except EnvelopeRecoveryError:
            raise self._wrong_password(started.session_id) from None
        return started.session_id, ke3.to_bytes(), session_key, export_key

    def _wrong_password(self, session_id: bytes) -> VaultError:
        """Close the session (so a last attempt destroys now) and say how many tries remain."""
        vault.expect(self._call(RecoverAbort(session_id)), AbortOk)
        status = self.status()
        if not status.exists or status.attempts_left == 0:
            # Also the answer for an account that never registered: its KE2 came
            # from the RFC 9807 fake record and cannot open under any password.
            return RecordDestroyedError("no record for this account (destroyed, deleted or none)")
        return WrongPasswordError(status.attempts_left)


def _http_error(response: httpx.Response) -> VaultError | CodecError:
    status = response.status_code
    try:
        message = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    if status in (401, 403):
        return UnauthorizedError(message or f"HTTP {status}")
    if status == 429:
        retry = response.headers.get("retry-after", "")
        return RetryAfterError(message or "rate limited", int(retry) if retry.isdigit() else None)
    if status in (400, 413):
        return CodecError(message or f"the host refused the request: HTTP {status}")
    return FleetUnreachableError(message or f"the vault answered HTTP {status}")
