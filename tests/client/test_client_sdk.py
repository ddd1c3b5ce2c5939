"""The HTTP SDK against a real HTTP server on 127.0.0.1: an honest host and hostile ones.

The honest host relays to a real in-process HsmApp; the hostile hosts answer with
bytes of their choosing (a forged clear rejection, an error body built to crash a
JSON parser), as a host on the path may.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from vault_world import (
    Answer,
    always,
    fleet_keys_of,
    new_hsm,
    relay_to,
    vault_behind,
)

from bkv.client import sdk
from bkv.client.sdk import VaultClient
from bkv.client.vault import VaultStatus
from bkv.errors import (
    CodecError,
    DecryptionError,
    FleetUnreachableError,
    RateLimitedError,
    UnauthenticatedRejectionError,
    UnauthorizedError,
    VaultError,
    WrongPasswordError,
)
from bkv.protocol.messages import ErrorCode, HsmRejected
from bkv.wire import encode

PASSWORD = b"correct horse battery staple"
BACKUP_KEY = bytes(range(100, 132))
NESTED = b"[" * 4000
"""An error body nested deeper than Python's recursion limit (4,000 bytes, under every cap)."""
FLEET = fleet_keys_of(new_hsm())
"""The keys a hostile host's client trusts (the HSM behind them is never reached)."""


@contextmanager
def hostile(answer: Answer) -> Iterator[VaultClient]:
    """An SDK client whose host answers every request with ``answer``."""
    with vault_behind(always(answer), FLEET) as vault:
        yield vault


def test_register_recover_change_password_delete_over_http() -> None:
    hsm = new_hsm()
    with vault_behind(relay_to(hsm), fleet_keys_of(hsm)) as vault:
        assert vault.status() == VaultStatus(False, 0, 0, 0, 0)
        registered = vault.register(PASSWORD, BACKUP_KEY)
        assert registered.exists and registered.attempts_left == 10
        assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
        vault.change_password(PASSWORD, b"new password")
        with pytest.raises(WrongPasswordError):
            vault.recover(PASSWORD)
        assert vault.recover(b"new password").backup_key == BACKUP_KEY
        vault.delete(b"new password")
        assert not vault.status().exists


def test_change_password_keeps_a_custom_guess_limit() -> None:
    hsm = new_hsm()
    with vault_behind(relay_to(hsm), fleet_keys_of(hsm)) as vault:
        vault.register(PASSWORD, BACKUP_KEY, guess_limit=3)
        changed = vault.change_password(PASSWORD, b"new password")
        assert (changed.guess_limit, changed.attempts_left) == (3, 3)
        assert vault.status().guess_limit == 3


def test_the_owner_learns_how_many_password_checks_failed() -> None:
    hsm = new_hsm()
    with vault_behind(relay_to(hsm), fleet_keys_of(hsm)) as vault:
        vault.register(PASSWORD, BACKUP_KEY)
        for guess in (b"wrong 1", b"wrong 2"):
            with pytest.raises(WrongPasswordError):
                vault.recover(guess)
        assert vault.status().failed_attempts == 2
        recovered = vault.recover(PASSWORD)
        assert recovered.failed_attempts == 2
        assert recovered.backup_key == BACKUP_KEY
        assert vault.status().failed_attempts == 0  # a successful recovery starts afresh
        assert vault.recover(PASSWORD).failed_attempts == 0


# --- hostile hosts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.KIND_MISMATCH,
        ErrorCode.PROTOCOL_STATE,
        ErrorCode.LOGIN_FAILED,
        ErrorCode.RECORD_EXISTS,
        ErrorCode.INVALID_POLICY,
        ErrorCode.VAULT_FULL,
    ],
)
def test_a_clear_rejection_only_the_sealed_channel_carries_is_called_forged(
    code: ErrorCode,
) -> None:
    """A host must not make the SDK tell a person "record exists, recover first"."""
    with hostile(Answer(200, encode(HsmRejected(code)), sdk.OCTET_STREAM)) as vault:
        with pytest.raises(UnauthenticatedRejectionError, match=code.name):
            vault.register(PASSWORD, BACKUP_KEY)
        with pytest.raises(UnauthenticatedRejectionError):
            vault.recover(PASSWORD)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (ErrorCode.MALFORMED, CodecError),
        (ErrorCode.WRONG_FLEET, VaultError),
        (ErrorCode.UNDECRYPTABLE, DecryptionError),
    ],
)
def test_the_clear_rejections_the_hsm_can_send_keep_their_errors(
    code: ErrorCode, error: type[Exception]
) -> None:
    with hostile(Answer(200, encode(HsmRejected(code)), sdk.OCTET_STREAM)) as vault:
        with pytest.raises(error) as raised:
            vault.status()
        assert not isinstance(raised.value, UnauthenticatedRejectionError)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, FleetUnreachableError),
        (502, FleetUnreachableError),
        (401, UnauthorizedError),
        (429, RateLimitedError),
        (400, CodecError),
    ],
)
def test_a_deeply_nested_error_body_is_a_typed_error(status: int, error: type[Exception]) -> None:
    with hostile(Answer(status, NESTED)) as vault, pytest.raises(error):
        vault.status()


@pytest.mark.parametrize(
    "body",
    [
        b'{"message": "m", "message": "n"}',  # duplicate key
        b'{"message": NaN}',
        b'["message"]',
        b"\xff\xfe",
        b"1" * 4000,  # an integer past Python's digit limit
        b"",
    ],
)
def test_other_hostile_error_bodies_keep_the_status_meaning(body: bytes) -> None:
    with hostile(Answer(401, body)) as vault, pytest.raises(UnauthorizedError, match="HTTP 401"):
        vault.status()


def test_a_well_formed_error_message_is_passed_on_truncated() -> None:
    body = b'{"error": "UnauthorizedError", "message": "' + b"x" * 500 + b'"}'
    with hostile(Answer(401, body)) as vault, pytest.raises(UnauthorizedError) as raised:
        vault.status()
    assert str(raised.value) == "x" * sdk.MAX_ERROR_MESSAGE


@pytest.mark.parametrize(
    ("backup_key", "guess_limit", "error"),
    [
        (BACKUP_KEY[:31], 10, ValueError),
        (bytearray(BACKUP_KEY), 10, TypeError),
        (BACKUP_KEY, 0, ValueError),
        (BACKUP_KEY, True, TypeError),
    ],
)
def test_a_callers_bad_arguments_are_refused_before_anything_is_sent(
    backup_key: bytes, guess_limit: int, error: type[Exception]
) -> None:
    seen: list[bytes] = []

    def counting(request: bytes) -> Answer:
        seen.append(request)
        return Answer(500, b"")

    with vault_behind(counting, FLEET) as vault, pytest.raises(error):
        vault.register(PASSWORD, backup_key, guess_limit)
    assert seen == []
