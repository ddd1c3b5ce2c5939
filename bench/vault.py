"""HSM-side cost of a registration and of a recovery, against the pure OPAQUE server crypto.

What is timed (HsmApp, in process, software sealer, no disk): everything the HSM
application does for the request bytes a host relays — decode, HPKE open of the
request, OPAQUE server step, the state command and ``apply``, sealing the new
state (AES-256-GCM over the whole snapshot), sealing the response. Register =
RegisterStart + RegisterFinish + RegisterExpose (two persist acks: the
record is installed pending, then exposed); recover = RecoverStart (+ ack) +
RecoverFinish (+ ack, release of the secret). Client-side work is done between
the timed calls and is not counted.

Baseline, measured in the same run on the same inputs: the RFC 9807 server
functions alone (``server_registration_response``; ``server_login_start`` +
``server_login_finish``). The ratio is what the vault adds on top of OPAQUE.

Two state sizes: an empty vault, and one preloaded with 1000 accounts (the
whole state is re-encoded and re-sealed on every durable change, so that cost
grows with the number of records: see docs/architecture.md, "Scale").
Samples are interleaved; GC paused while timing; medians.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time

from bkv.crypto import channel
from bkv.crypto.ksf import Identity
from bkv.crypto.opaque import (
    KE2,
    Config,
    RegistrationRecord,
    RegistrationRequest,
    RegistrationResponse,
    ServerSecrets,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    server_login_finish,
    server_login_start,
    server_registration_response,
)
from bkv.hsm.app import HsmApp, credential_identifier
from bkv.hsm.sealing import seal_snapshot
from bkv.hsm.state import AccountSlot, Record, Snapshot
from bkv.keystore import SoftwareSealer
from bkv.protocol.messages import (
    INNER_RESPONSES,
    KIND_OF_REQUEST,
    OPAQUE_CONTEXT,
    HsmRequest,
    HsmResponse,
    InnerRequest,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    RegisterExpose,
    RegisterFinish,
    RegisterStart,
    RegisterStartOk,
    request_aad,
)
from bkv.wire import decode, decode_any, encode

SAMPLES = 40
PRELOAD = 1000
# Client-side work is not timed here; Identity keeps the run short.
CONFIG = Config(context=OPAQUE_CONTEXT, ksf=Identity())
FLEET = "bench-fleet"
PASSWORD = b"bench password"
SECRET = b"\x01" * 32


class _Host:
    """Relays to the app and acknowledges persists at once; accumulates time spent in the app."""

    def __init__(self, app: HsmApp) -> None:
        self.app = app
        self.now_ms = 1_700_000_000_000
        self.spent = 0.0

    def __call__(self, request: bytes) -> bytes:
        started = time.perf_counter()
        effects = self.app.handle(request, self.now_ms)
        if effects.persist is not None:
            released = self.app.persisted(effects.persist.version)
            assert released is not None
            response = released
        else:
            assert effects.response is not None
            response = effects.response
        self.spent += time.perf_counter() - started
        return response


def _seal(app: HsmApp, account: bytes, inner: InnerRequest) -> tuple[bytes, object]:
    kind = KIND_OF_REQUEST[type(inner)]
    state, sealed = channel.seal_request(
        app.channel_public_key, FLEET.encode(), encode(inner), request_aad(FLEET, kind, account)
    )
    return encode(HsmRequest(FLEET, kind, account, sealed)), state


def _call(host: _Host, account: bytes, inner: InnerRequest) -> object:
    request, state = _seal(host.app, account, inner)
    outer = decode(HsmResponse, host(request))
    return decode_any(channel.open_response(state, outer.sealed), INNER_RESPONSES)  # type: ignore[arg-type]


def _register(host: _Host, account: bytes) -> float:
    before = host.spent
    reg_state, reg_request = client_registration_start(PASSWORD)
    started = _call(host, account, RegisterStart(reg_request.to_bytes()))
    assert isinstance(started, RegisterStartOk)
    record, _ = client_registration_finish(
        reg_state, CONFIG, RegistrationResponse.from_bytes(started.registration_response)
    )
    _call(host, account, RegisterFinish(started.registration_id, record.to_bytes(), SECRET))
    _call(host, account, RegisterExpose(started.registration_id))
    return host.spent - before


def _recover(host: _Host, account: bytes) -> float:
    before = host.spent
    login_state, ke1 = client_login_start(PASSWORD)
    started = _call(host, account, RecoverStart(ke1.to_bytes()))
    assert isinstance(started, RecoverStartOk)
    ke3, _key, _export = client_login_finish(login_state, CONFIG, KE2.from_bytes(started.ke2))
    _call(host, account, RecoverFinish(started.session_id, ke3.to_bytes()))
    return host.spent - before


def _pure_register(secrets: ServerSecrets, request: RegistrationRequest) -> float:
    started = time.perf_counter()
    server_registration_response(secrets, request, credential_identifier(b"a", bytes(32)))
    return time.perf_counter() - started


def _pure_recover(secrets: ServerSecrets, record: RegistrationRecord) -> float:
    login_state, ke1 = client_login_start(PASSWORD)
    cred = credential_identifier(b"a", bytes(32))
    started = time.perf_counter()
    ke2, server_state = server_login_start(secrets, CONFIG, record, cred, ke1)
    elapsed = time.perf_counter() - started
    ke3, _key, _export = client_login_finish(login_state, CONFIG, ke2)
    started = time.perf_counter()
    server_login_finish(server_state, ke3)
    return elapsed + time.perf_counter() - started


def _preloaded_app(size: int) -> HsmApp:
    sealer = SoftwareSealer.generate()
    app = HsmApp.initialize(FLEET, sealer)
    slots = tuple(
        AccountSlot(
            b"pre-%06d" % i,
            1,
            Record(1, bytes(32), bytes(192), SECRET, 10, 0, 0),
        )
        for i in range(size)
    )
    snapshot = Snapshot(1, app._secrets, dataclasses.replace(app.vault, accounts=slots))
    return HsmApp(snapshot, seal_snapshot(sealer, snapshot), sealer)


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def run() -> list[str]:
    secrets = ServerSecrets.generate()
    reg_state, reg_request = client_registration_start(PASSWORD)
    response = server_registration_response(
        secrets, reg_request, credential_identifier(b"a", bytes(32))
    )
    record, _ = client_registration_finish(reg_state, CONFIG, response)
    hosts = {
        "empty vault": _Host(_preloaded_app(0)),
        f"{PRELOAD} records": _Host(_preloaded_app(PRELOAD)),
    }
    times: dict[str, list[float]] = {"pure register": [], "pure recover": []}
    for name in hosts:
        times[f"register {name}"] = []
        times[f"recover {name}"] = []
    gc.disable()
    try:
        for i in range(SAMPLES):  # interleaved: every kind sees the same machine noise
            times["pure register"].append(_pure_register(secrets, reg_request))
            times["pure recover"].append(_pure_recover(secrets, record))
            for name, host in hosts.items():
                account = b"bench-%04d" % i
                times[f"register {name}"].append(_register(host, account))
                times[f"recover {name}"].append(_recover(host, account))
    finally:
        gc.enable()
    pure_reg, pure_rec = _ms(times["pure register"]), _ms(times["pure recover"])
    lines = [
        f"pure OPAQUE server register (RegistrationResponse): {pure_reg:.3f} ms (median)",
        f"pure OPAQUE server recover (login start + finish):  {pure_rec:.3f} ms (median)",
    ]
    for name in hosts:
        reg, rec = _ms(times[f"register {name}"]), _ms(times[f"recover {name}"])
        lines.append(
            f"HSM register, {name}: {reg:.3f} ms (median, {reg / pure_reg:.1f}x pure crypto)"
        )
        lines.append(
            f"HSM recover,  {name}: {rec:.3f} ms (median, {rec / pure_rec:.1f}x pure crypto)"
        )
    lines.append(f"({SAMPLES} samples each, interleaved; in process, software sealer, no disk)")
    return lines
