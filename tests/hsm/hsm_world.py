"""Test world for the HSM: an in-process host around HsmApp, and a minimal vault client.

The client here is a test double of the SDK built from the published message
API (bkv.hsm.messages) and the real crypto (OPAQUE client, channel): it speaks
the same bytes the real SDK must. The "host" records every byte it relays.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from bkv.crypto import channel
from bkv.crypto.opaque import (
    KE2,
    Config,
    RegistrationResponse,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
)
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import EnvelopeRecoveryError, VaultError
from bkv.hsm import release
from bkv.hsm.app import HsmApp
from bkv.hsm.messages import (
    INNER_RESPONSES,
    KIND_OF_REQUEST,
    OPAQUE_CONTEXT,
    OUTER_RESPONSES,
    AbortOk,
    ErrorCode,
    FinishAction,
    HsmRejected,
    HsmRequest,
    HsmResponse,
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
    VaultFailure,
    request_aad,
)
from bkv.keystore import SoftwareSealer
from bkv.wire import decode_any, encode

CONFIG = Config(context=OPAQUE_CONTEXT)
FLEET = "test-fleet"


class RejectedError(VaultError):
    """The HSM answered with a clear HsmRejected."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


class RefusedError(VaultError):
    """The HSM answered with a sealed VaultFailure."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name)
        self.code = code


@dataclass
class InProcessHost:
    """Relays bytes to an HsmApp, persists its blobs in memory, and records everything."""

    app: HsmApp
    now_ms: int = 1_700_000_000_000
    transcript: list[bytes] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)

    def __call__(self, request: bytes) -> bytes:
        self.transcript.append(request)
        effects = self.app.handle(request, self.now_ms)
        if effects.persist is not None:
            self.stored.append(effects.persist.blob)
            self.transcript.append(effects.persist.blob)
            released = self.app.persisted(effects.persist.version)
            assert released is not None
            response = released
        else:
            assert effects.response is not None
            response = effects.response
        self.transcript.append(response)
        return response

    def tick(self) -> int:
        """Run the HSM's housekeeping until it has nothing to do; return the changes made."""
        for made in range(100):
            effects = self.app.tick(self.now_ms)
            if effects.persist is None:
                assert effects.response is None
                return made
            self.stored.append(effects.persist.blob)
            self.transcript.append(effects.persist.blob)
            assert self.app.persisted(effects.persist.version) is None
        raise AssertionError("housekeeping did not settle")


def new_app(rng: Rng = default_rng, max_guess_limit: int = 10) -> tuple[HsmApp, SoftwareSealer]:
    sealer = SoftwareSealer.generate()
    return HsmApp.initialize(FLEET, sealer, max_guess_limit=max_guess_limit, rng=rng), sealer


def channel_key_of(app_or_json: HsmApp | bytes) -> bytes:
    raw = app_or_json.public_keys_json() if isinstance(app_or_json, HsmApp) else app_or_json
    keys = json.loads(raw)["keys"]
    return bytes.fromhex(next(k["public_key"] for k in keys if k["role"] == "channel"))


@dataclass
class Sent:
    """One exchange as the client saw it."""

    request: bytes
    response: InnerResponse


@dataclass
class VaultClient:
    """Speaks the HSM message API for one account."""

    transport: Callable[[bytes], bytes]
    channel_public_key: bytes
    account_id: bytes
    fleet_id: str = FLEET

    def request_bytes(self, inner: InnerRequest) -> tuple[bytes, channel.ClientChannelState]:
        kind = KIND_OF_REQUEST[type(inner)]
        aad = request_aad(self.fleet_id, kind, self.account_id)
        state, sealed = channel.seal_request(
            self.channel_public_key, self.fleet_id.encode(), encode(inner), aad
        )
        return encode(HsmRequest(self.fleet_id, kind, self.account_id, sealed)), state

    def open(self, state: channel.ClientChannelState, response: bytes) -> InnerResponse:
        outer = decode_any(response, OUTER_RESPONSES)
        if isinstance(outer, HsmRejected):
            raise RejectedError(outer.code)
        assert isinstance(outer, HsmResponse)
        inner = decode_any(channel.open_response(state, outer.sealed), INNER_RESPONSES)
        if isinstance(inner, VaultFailure):
            raise RefusedError(inner.code)
        return inner  # type: ignore[no-any-return]

    def call(self, inner: InnerRequest) -> Sent:
        request, state = self.request_bytes(inner)
        return Sent(request, self.open(state, self.transport(request)))

    # --- flows -----------------------------------------------------------------

    def register(self, password: bytes, secret: bytes, guess_limit: int = 10) -> RegisterFinishOk:
        reg_state, reg_request = client_registration_start(password)
        started = self.call(RegisterStart(reg_request.to_bytes())).response
        assert isinstance(started, RegisterStartOk)
        record, _export_key = client_registration_finish(
            reg_state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
        )
        finish = RegisterFinish(started.registration_id, record.to_bytes(), secret, guess_limit)
        done = self.call(finish)
        assert isinstance(done.response, RegisterFinishOk)
        return done.response

    def start_login(self, password: bytes) -> tuple[object, RecoverStartOk]:
        login_state, ke1 = client_login_start(password)
        started = self.call(RecoverStart(ke1.to_bytes())).response
        assert isinstance(started, RecoverStartOk)
        return login_state, started

    def recover(self, password: bytes) -> bytes:
        """The secret; raises EnvelopeRecoveryError (after aborting) on a wrong password."""
        login_state, started = self.start_login(password)
        try:
            ke3, session_key, _export = client_login_finish(
                login_state,  # type: ignore[arg-type]
                CONFIG,
                KE2.from_bytes(started.ke2),
            )
        except EnvelopeRecoveryError:
            self.call(RecoverAbort(started.session_id))
            raise
        request, state = self.request_bytes(
            RecoverFinish(started.session_id, ke3.to_bytes(), FinishAction.RELEASE)
        )
        released = self.open(state, self.transport(request))
        assert isinstance(released, KeyReleased)
        return release.open_release(session_key, request, released.sealed_secret)

    def delete(self, password: bytes) -> RecordDeleted:
        login_state, started = self.start_login(password)
        ke3, _session_key, _export = client_login_finish(
            login_state,  # type: ignore[arg-type]
            CONFIG,
            KE2.from_bytes(started.ke2),
        )
        done = self.call(RecoverFinish(started.session_id, ke3.to_bytes(), FinishAction.DELETE))
        assert isinstance(done.response, RecordDeleted)
        return done.response

    def status(self) -> StatusOk:
        done = self.call(StatusRequest())
        assert isinstance(done.response, StatusOk)
        return done.response

    def abort(self, session_id: bytes) -> AbortOk:
        done = self.call(RecoverAbort(session_id))
        assert isinstance(done.response, AbortOk)
        return done.response


def client_for(app: HsmApp, account: bytes, host: InProcessHost | None = None) -> VaultClient:
    """A client of ``app`` (through ``host``, or a fresh in-process host)."""
    return VaultClient(host or InProcessHost(app), channel_key_of(app), account, app.fleet_id)
