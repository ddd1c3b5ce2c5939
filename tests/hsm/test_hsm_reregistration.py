"""Re-registration under a malicious host, end to end through the SDK (docs/threat-model.md §5).

F1: a host that holds back one step of a re-registration (RegisterStart or
RegisterFinish) while it spends the live record to destruction must not get a
record with a fresh counter for the same password: over the whole schedule the
password answers at most ``limit`` real-record checks.

F3: a lost RegisterExposeOk is retried by the SDK and answered again by the
HSM (idempotent), so ``register`` / ``change_password`` complete and no retry
burns an attempt.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from hsm_world import InProcessHost, VaultClient, fleet_keys_of, new_app

from bkv.client.sdk import EXPOSE_TRIES
from bkv.errors import FleetUnreachableError, ProtocolStateError
from bkv.protocol.messages import HsmRequest
from bkv.wire import decode

ACCOUNT = b"alice"
PASSWORD = b"correct horse battery staple"
LIMIT = 10


class Attack:
    """An in-process host that can act when it sees a request kind, and counts real checks."""

    def __init__(self) -> None:
        self.app, _sealer = new_app()
        self.host = InProcessHost(self.app)
        self.real_checks = 0
        self.on_kind: dict[str, Callable[[bytes], bytes]] = {}

    def relay(self, request: bytes) -> bytes:
        kind = decode(HsmRequest, request).kind.name
        action = self.on_kind.pop(kind, None)
        return self.host(request) if action is None else action(request)

    def client(self) -> VaultClient:
        return VaultClient(self.relay, fleet_keys_of(self.app), ACCOUNT)

    def guess(self, n: int) -> None:
        """The host's own KE1 (a wrong password); a real check if it was counted on a record."""
        attacker = VaultClient(self.host, fleet_keys_of(self.app), ACCOUNT)
        before = attacker.status()
        attacker.start_login(b"host guess %d" % n)
        after = attacker.status()
        # Counted on a live record: its KE2 is that record's (a locked record's next
        # KE1 destroys it and gets the fake-record KE2: not a check).
        if before.exists and after.exists and after.attempts_left == before.attempts_left - 1:
            self.real_checks += 1

    def spend_then(self, request: bytes) -> bytes:
        """Hold ``request``, spend the live record to destruction, then deliver it."""
        for n in range(LIMIT + 1):
            self.guess(n)
        return self.host(request)


@pytest.mark.parametrize("held", ["REGISTER_START", "REGISTER_FINISH"])
def test_a_held_rotation_step_cannot_outlive_a_destroy(held: str) -> None:
    """repro_rotation.py: the user rotates the backup key under the same password."""
    attack = Attack()
    client = attack.client()
    client.register(PASSWORD, bytes(32))
    attack.on_kind[held] = attack.spend_then
    with pytest.raises(ProtocolStateError):
        client.register(PASSWORD, bytes([1]) * 32)
    assert not attack.on_kind  # the held step was delivered (after the destroy)
    for n in range(LIMIT + 1):
        attack.guess(100 + n)
    assert attack.real_checks == LIMIT  # the destroyed record's; no second record
    assert not client.status().exists  # what the SDK's doc tells the caller to look at


def test_the_register_again_retry_after_a_lost_expose_answer_cannot_outlive_a_destroy() -> None:
    """repro_finish_after_destroy.py: ExposeOk lost, then "call register again", held finish."""
    attack = Attack()

    def drop_answer(request: bytes) -> bytes:
        attack.host(request)  # the HSM exposes the record ...
        raise httpx.ReadTimeout("the host dropped RegisterExposeOk")  # ... the client never hears

    attack.on_kind["REGISTER_EXPOSE"] = drop_answer
    client = attack.client()
    first = client.register(PASSWORD, bytes(range(32)))  # the SDK retried the expose
    assert first.exists and first.attempts_left == LIMIT
    attack.on_kind["REGISTER_FINISH"] = attack.spend_then
    with pytest.raises(ProtocolStateError):
        client.register(PASSWORD, bytes(range(32)))
    for n in range(LIMIT + 1):
        attack.guess(100 + n)
    assert attack.real_checks == LIMIT


def test_change_password_completes_when_the_expose_answer_is_lost_once() -> None:
    """repro_change_password_retry.py: no WrongPasswordError, no attempt burned."""
    attack = Attack()
    client = attack.client()
    client.register(b"old password", bytes(32))

    def drop_answer(request: bytes) -> bytes:
        attack.host(request)
        raise httpx.ReadTimeout("the host dropped RegisterExposeOk")

    attack.on_kind["REGISTER_EXPOSE"] = drop_answer
    status = client.change_password(b"old password", b"new password")
    assert status.exists and status.attempts_left == LIMIT
    assert client.recover(b"new password") == bytes(32)
    assert client.status().attempts_left == LIMIT


def test_the_sdk_gives_up_after_bounded_expose_tries_and_the_caller_can_check() -> None:
    attack = Attack()
    client = attack.client()
    sent: list[int] = []

    def drop(request: bytes) -> bytes:
        sent.append(1)
        attack.host(request)
        if len(sent) < EXPOSE_TRIES:
            attack.on_kind["REGISTER_EXPOSE"] = drop
        raise httpx.ReadTimeout("the host dropped RegisterExposeOk")

    attack.on_kind["REGISTER_EXPOSE"] = drop
    with pytest.raises(FleetUnreachableError):
        client.register(PASSWORD, bytes(32))
    assert len(sent) == EXPOSE_TRIES
    # The first expose went through: the record is live, with its whole limit.
    status = client.status()
    assert status.exists and status.attempts_left == LIMIT
    assert client.recover(PASSWORD) == bytes(32)
