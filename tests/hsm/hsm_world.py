"""Test world for the HSM: an in-process host around HsmApp, driven by the shipped SDK.

- :class:`InProcessHost` relays bytes to an :class:`HsmApp`, persists its blobs
  in memory (acknowledging each persist) and records every byte it relayed.
- :class:`RelayTransport` is an ``httpx`` transport that serves the host's
  ``POST /v1/request`` by calling such a relay, so the real
  :class:`bkv.client.sdk.VaultClient` (request sealing, server-key check,
  backup-key wrapping, Argon2id KSF, error mapping, the register/expose and
  recover/abort flows) is what these tests exercise.
- :class:`VaultClient` here is one account: its ``register``/``recover``/
  ``delete``/``status``/``change_password`` *are* the SDK's. Next to them it has
  the raw tools an adversarial test needs and the SDK does not offer: build a
  request (with the SDK's sans-IO :func:`bkv.client.vault.build_request`) to
  replay or tamper with, read the exact refusal code, and stop a login half-way
  (KE1 sent, KE3 not yet) to finish it later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import httpx

from bkv.client import sdk
from bkv.client import vault as client_vault
from bkv.client.trust import FleetKeys, PinnedFleetKeys
from bkv.client.vault import VaultStatus
from bkv.crypto import channel
from bkv.crypto.ksf import Argon2id
from bkv.crypto.opaque import KE2, ClientLoginState, client_login_finish, client_login_start
from bkv.crypto.rng import Rng, default_rng
from bkv.errors import EnvelopeRecoveryError, RecordDestroyedError, VaultError, WrongPasswordError
from bkv.hsm.app import HsmApp, Persist
from bkv.hsm.public_keys import render_public_keys
from bkv.hsm.runner import BatchRunner
from bkv.hsm.state import AccountSlot, Record
from bkv.keystore import SoftwareSealer
from bkv.protocol import release
from bkv.protocol.artifact import (
    ROLE_CHANNEL,
    ROLE_OPAQUE_AKE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
)
from bkv.protocol.messages import (
    INNER_RESPONSES,
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
    RecoverAbort,
    RecoverFinish,
    RecoverStart,
    RecoverStartOk,
    VaultFailure,
)
from bkv.records.nodes import record_hash
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.tree import build_tree
from bkv.wire import decode, decode_any

TEST_KSF = Argon2id(memory_kib=256, iterations=1, lanes=1)
"""A real but small Argon2id (as tests/host): the production default costs ~0.2 s per login."""

CONFIG = client_vault.opaque_config(TEST_KSF)
"""The OPAQUE configuration the SDK clients of this world use (for half-way logins)."""

FLEET = "test-fleet"
BASE_URL = "http://in-process.test"
TOKEN = "in-process-test-token"

WRONG_PASSWORD_ERRORS = (WrongPasswordError, RecordDestroyedError)
"""What the SDK raises for a password that does not open the record (or no record)."""

__all__ = [
    "CONFIG",
    "FLEET",
    "TEST_KSF",
    "WRONG_PASSWORD_ERRORS",
    "EnvelopeRecoveryError",
    "HalfLogin",
    "InProcessHost",
    "RefusedError",
    "RejectedError",
    "RelayTransport",
    "VaultClient",
    "account_of",
    "channel_key_of",
    "client_for",
    "fleet_keys_of",
    "new_app",
    "rebuilt_root",
    "record_of",
    "slot_of",
    "staged_slot",
    "store_and_release",
    "stored_records",
    "submit",
]


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
    """Relays bytes to an HsmApp through the shipped host half (BatchRunner) and a memory store.

    Each request is a batch of one (``batch()`` runs several together); every
    byte relayed (requests, sealed states, answers) is recorded.
    """

    app: HsmApp
    now_ms: int = 1_700_000_000_000
    transcript: list[bytes] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)
    store: MemoryTreeStore = field(default_factory=MemoryTreeStore)
    runner: BatchRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = BatchRunner(self.app, self.store, self._stored)
        if self.store.head() is None:
            self.runner.store_genesis()

    def _stored(self, persist: Persist) -> None:
        self.stored.append(persist.sealed_state)
        self.transcript.append(persist.sealed_state)
        self.transcript.extend(persist.records.values())

    def __call__(self, request: bytes) -> bytes:
        (response,) = self.batch([request])
        return response

    def batch(self, requests: list[bytes]) -> list[bytes]:
        """Run ``requests`` as one batch (one durable write); their responses, in order."""
        self.transcript.extend(requests)
        outcomes = self.runner.run(requests, self.now_ms)
        responses = []
        for outcome in outcomes:
            assert isinstance(outcome, bytes), outcome
            self.transcript.append(outcome)
            responses.append(outcome)
        return responses

    def tick(self) -> int:
        """Run the HSM's housekeeping until it has nothing to do; return the changes made."""
        return self.runner.housekeeping(self.now_ms)


def slot_of(host: InProcessHost, account: bytes) -> AccountSlot | None:
    """White box: the account's durable slot as the HSM reads it (tests only: it holds secrets)."""
    app = host.app
    read = host.runner.read(account)
    return app._cipher.read(app.head, account, app.record_id(account), read).slot


def record_of(host: InProcessHost, account: bytes) -> Record | None:
    """White box: the account's live record (tests only)."""
    slot = slot_of(host, account)
    return None if slot is None else slot.record


class RelayTransport(httpx.BaseTransport):
    """The host's ``POST /v1/request`` in process: the body goes to ``relay``, its answer back.

    Like :mod:`bkv.host.app`, every HSM answer (``HsmResponse`` or ``HsmRejected``)
    comes back as 200 octet-stream; anything else is 404.
    """

    def __init__(self, relay: Callable[[bytes], bytes]) -> None:
        self._relay = relay

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != sdk.REQUEST_PATH:
            return httpx.Response(404, json={"error": "NotFound", "message": "no such route"})
        answer = self._relay(request.read())
        return httpx.Response(200, content=answer, headers={"content-type": sdk.OCTET_STREAM})


def new_app(rng: Rng = default_rng, max_guess_limit: int = 10) -> tuple[HsmApp, SoftwareSealer]:
    """A new vault's app (its store is made by the first InProcessHost around it)."""
    sealer = SoftwareSealer.generate()
    return HsmApp.initialize(FLEET, sealer, max_guess_limit=max_guess_limit, rng=rng), sealer


def _public_keys(app_or_json: HsmApp | bytes) -> dict[str, object]:
    if isinstance(app_or_json, HsmApp):
        raw = render_public_keys(app_or_json.public_keys())
    else:
        raw = app_or_json
    parsed = json.loads(raw)
    assert isinstance(parsed, dict)
    return parsed


def _key(public_keys: dict[str, object], role: str) -> bytes:
    keys = public_keys["keys"]
    assert isinstance(keys, list)
    return bytes.fromhex(next(k["public_key"] for k in keys if k["role"] == role))


def channel_key_of(app_or_json: HsmApp | bytes) -> bytes:
    """The channel public key of an app, or of its ``public-keys.json`` bytes."""
    return _key(_public_keys(app_or_json), ROLE_CHANNEL)


def fleet_keys_of(app_or_json: HsmApp | bytes) -> FleetKeys:
    """Pinned-mode :class:`FleetKeys` for a one-HSM fleet, from its public keys."""
    public_keys = _public_keys(app_or_json)
    fleet_id = public_keys["fleet_id"]
    assert isinstance(fleet_id, str)
    artifact = FleetKeyArtifact(
        fleet_id=fleet_id,
        keys=(
            PublicKey(ROLE_CHANNEL, "x25519", _key(public_keys, ROLE_CHANNEL)),
            PublicKey(ROLE_OPAQUE_AKE, "ristretto255", _key(public_keys, ROLE_OPAQUE_AKE)),
        ),
        members=("hsm-1",),
        policy=FleetPolicy(guess_limit=10, quorum=1),
        not_before_ms=0,
        not_after_ms=2**53 - 1,
    )
    return PinnedFleetKeys.of(artifact).fleet_keys(now_ms=1)


@dataclass(frozen=True)
class HalfLogin:
    """A login stopped after KE2: the client state and the HSM's answer."""

    login_state: ClientLoginState
    started: RecoverStartOk

    @property
    def session_id(self) -> bytes:
        return self.started.session_id


class VaultClient:
    """One account of the vault: the SDK's flows plus raw requests for adversarial tests."""

    def __init__(
        self, relay: Callable[[bytes], bytes], fleet: FleetKeys | bytes, account_id: bytes
    ) -> None:
        """``fleet``: pinned keys, or the fleet's ``public-keys.json`` bytes."""
        self.relay = relay
        self.fleet = fleet if isinstance(fleet, FleetKeys) else fleet_keys_of(fleet)
        self.account_id = account_id
        self.sdk = sdk.VaultClient(
            BASE_URL,
            TOKEN,
            account_id,
            self.fleet,
            ksf=TEST_KSF,
            transport=RelayTransport(relay),
        )

    # --- the shipped client's flows ------------------------------------------------

    def register(self, password: bytes, backup_key: bytes, guess_limit: int = 10) -> VaultStatus:
        return self.sdk.register(password, backup_key, guess_limit)

    def recover(self, password: bytes) -> bytes:
        return self.sdk.recover(password).backup_key

    def delete(self, password: bytes) -> None:
        self.sdk.delete(password)

    def change_password(self, old_password: bytes, new_password: bytes) -> VaultStatus:
        return self.sdk.change_password(old_password, new_password)

    def status(self) -> VaultStatus:
        return self.sdk.status()

    # --- raw requests ------------------------------------------------------------

    def request_bytes(self, inner: InnerRequest) -> tuple[bytes, channel.ClientChannelState]:
        """The exact request bytes the SDK would send for ``inner``, and the state to open them."""
        pending = client_vault.build_request(self.fleet, self.account_id, inner)
        return pending.request, pending.channel_state

    def open(self, state: channel.ClientChannelState | None, response: bytes) -> InnerResponse:
        """The inner answer; the HSM's refusal as :class:`RejectedError`/:class:`RefusedError`."""
        outer = decode_any(response, OUTER_RESPONSES)
        if isinstance(outer, HsmRejected):
            raise RejectedError(outer.code)
        assert isinstance(outer, HsmResponse) and state is not None
        inner = decode_any(channel.open_response(state, outer.sealed), INNER_RESPONSES)
        if isinstance(inner, VaultFailure):
            raise RefusedError(inner.code)
        return cast(InnerResponse, inner)  # INNER_RESPONSES holds only inner responses

    def call(self, inner: InnerRequest) -> InnerResponse:
        request, state = self.request_bytes(inner)
        return self.open(state, self.relay(request))

    def start_login(self, password: bytes) -> HalfLogin:
        """Send KE1 and stop: the attempt is counted, the session stays open."""
        login_state, ke1 = client_login_start(password)
        started = self.call(RecoverStart(ke1.to_bytes()))
        assert isinstance(started, RecoverStartOk)
        return HalfLogin(login_state, started)

    def finish_login(self, half: HalfLogin) -> bytes:
        """Finish a half-way login (KE3, RELEASE) and return the backup key.

        Raises :class:`EnvelopeRecoveryError` when the password was wrong (the
        session stays open), or the HSM's refusal.
        """
        return self.finish_login_released(half)[0]

    def finish_login_released(self, half: HalfLogin) -> tuple[bytes, KeyReleased]:
        """:meth:`finish_login`, and the HSM's :class:`KeyReleased` answer with it."""
        ke3, session_key, export_key = client_login_finish(
            half.login_state, CONFIG, KE2.from_bytes(half.started.ke2)
        )
        finish = RecoverFinish(half.session_id, ke3.to_bytes(), FinishAction.RELEASE)
        request, state = self.request_bytes(finish)
        released = self.open(state, self.relay(request))
        assert isinstance(released, KeyReleased)
        secret = release.open_release(session_key, request, released.sealed_secret)
        return client_vault.unwrap_backup_key(export_key, self.account_id, secret), released

    def abort(self, session_id: bytes) -> AbortOk:
        done = self.call(RecoverAbort(session_id))
        assert isinstance(done, AbortOk)
        return done


def client_for(app: HsmApp, account: bytes, host: InProcessHost | None = None) -> VaultClient:
    """A client of ``app`` (through ``host``, or a fresh in-process host)."""
    return VaultClient(host or InProcessHost(app), fleet_keys_of(app), account)


# --- driving the app's batches by hand (the runner's steps, one at a time) ------------


def account_of(request: bytes) -> bytes:
    """The account a request names in the clear header."""
    return decode(HsmRequest, request).account_id


def submit(host: InProcessHost, request: bytes) -> int:
    """Take ``request`` into the app's open batch with the host's read of its record; its ticket."""
    return host.app.submit(request, host.runner.read(account_of(request)), host.now_ms)


def store_and_release(host: InProcessHost, persist: Persist) -> Mapping[int, bytes | None]:
    """What the runner does after ``end_batch``: store, record, then ``persisted`` (the answers)."""
    host.store.commit(persist.update, persist.records, persist.sealed_state)
    host._stored(persist)
    return host.app.persisted(persist.version)


def staged_slot(app: HsmApp, account: bytes, persist: Persist) -> AccountSlot:
    """White box: the slot ``persist`` stores for ``account``, opened (tests only: secrets)."""
    record_id = app.record_id(account)
    return app._cipher.open(record_id, persist.records[record_id])


def stored_records(host: InProcessHost) -> dict[bytes, bytes]:
    """White box: every sealed record the host's memory store holds (record id -> blob)."""
    return dict(host.store._records)


def rebuilt_root(host: InProcessHost) -> bytes:
    """The root of the tree built from scratch over the stored records (``build_tree``)."""
    tree_id = host.app.head.tree_id
    values = {rid: record_hash(tree_id, rid, blob) for rid, blob in stored_records(host).items()}
    return build_tree(tree_id, values).new_head.root
