"""apply(state, command): deterministic, refusals change nothing, the counter rules hold."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import ProtocolStateError, RecordExistsError
from bkv.hsm.state import (
    CountAttempt,
    Counted,
    DeleteRecord,
    DestroyRecord,
    InstallRecord,
    NoRecord,
    ResetAttempts,
    VaultState,
    apply,
)
from bkv.wire import decode, encode

EMPTY = VaultState("fleet", 10)


def install(
    state: VaultState, account: bytes, limit: int = 3, expected: int | None = None
) -> VaultState:
    slot = state.slot(account)
    generation = expected if expected is not None else (0 if slot is None else slot.generation)
    command = InstallRecord(account, generation, bytes(32), bytes(192), b"secret", limit, 5)
    return apply(state, command)[0]


def test_count_until_limit_then_destroy_and_tombstone() -> None:
    state = install(EMPTY, b"a", limit=2)
    state, outcome = apply(state, CountAttempt(b"a"))
    assert isinstance(outcome, Counted) and outcome.record.attempts_left == 1
    state, outcome = apply(state, CountAttempt(b"a"))
    assert isinstance(outcome, Counted) and outcome.record.attempts_left == 0
    state, outcome = apply(state, CountAttempt(b"a"))
    assert outcome == NoRecord(destroyed_now=True)
    slot = state.slot(b"a")
    assert slot is not None and slot.record is None and slot.generation == 1
    assert apply(state, CountAttempt(b"a")) == (state, NoRecord(destroyed_now=False))


def test_unknown_account_is_not_created_by_an_attempt() -> None:
    state, outcome = apply(EMPTY, CountAttempt(b"nobody"))
    assert state is EMPTY and outcome == NoRecord(destroyed_now=False)


def test_reset_destroy_delete_check_the_generation() -> None:
    state = install(EMPTY, b"a")
    state = install(state, b"a")  # generation 2
    for command in (ResetAttempts(b"a", 1), DestroyRecord(b"a", 1), DeleteRecord(b"a", 1)):
        with pytest.raises(ProtocolStateError):
            apply(state, command)
    assert apply(state, DeleteRecord(b"a", 2))[0].record(b"a") is None


def test_destroy_only_at_the_limit() -> None:
    state = install(EMPTY, b"a", limit=1)
    with pytest.raises(ProtocolStateError):
        apply(state, DestroyRecord(b"a", 1))
    state, _ = apply(state, CountAttempt(b"a"))
    assert apply(state, DestroyRecord(b"a", 1))[0].record(b"a") is None


def test_install_carries_the_counter_and_checks_the_generation() -> None:
    state = install(EMPTY, b"a", limit=5)
    state, _ = apply(state, CountAttempt(b"a"))
    state, _ = apply(state, CountAttempt(b"a"))
    with pytest.raises(ProtocolStateError):
        install(state, b"a", expected=0)  # started before the first install finished
    with pytest.raises(RecordExistsError):
        install(state, b"a", limit=2)  # 2 spent >= new limit 2
    state = install(state, b"a", limit=5)
    record = state.record(b"a")
    assert record is not None and record.attempts_used == 2 and record.generation == 2


def test_install_after_destruction_starts_fresh_with_a_new_generation() -> None:
    state = install(EMPTY, b"a", limit=1)
    state, _ = apply(state, CountAttempt(b"a"))
    state, _ = apply(state, CountAttempt(b"a"))  # destroys
    state = install(state, b"a", limit=1)
    record = state.record(b"a")
    assert record is not None and record.attempts_used == 0 and record.generation == 2


def test_refused_install_outside_the_policy_is_caller_misuse() -> None:
    with pytest.raises(ValueError, match="policy"):
        install(EMPTY, b"a", limit=11)


COMMANDS = st.lists(
    st.tuples(
        st.sampled_from(["count", "reset", "destroy", "delete", "install"]),
        st.sampled_from([b"a", b"b", b"c"]),
        st.integers(0, 3),
    ),
    max_size=40,
)


def _run(steps: list[tuple[str, bytes, int]]) -> list[bytes]:
    state = EMPTY
    trail = []
    for kind, account, number in steps:
        command = {
            "count": CountAttempt(account),
            "reset": ResetAttempts(account, number),
            "destroy": DestroyRecord(account, number),
            "delete": DeleteRecord(account, number),
            "install": InstallRecord(
                account, number, bytes(32), bytes(192), b"s", number + 1, number
            ),
        }[kind]
        with contextlib.suppress(ProtocolStateError, RecordExistsError):
            state, _ = apply(state, command)
        trail.append(encode(state))
    return trail


@given(COMMANDS)
def test_apply_is_deterministic_and_never_exceeds_the_limit(
    steps: list[tuple[str, bytes, int]],
) -> None:
    first = _run(steps)
    assert first == _run(steps)  # replicas applying the same commands agree byte for byte
    for raw in first:
        for slot in decode(VaultState, raw).accounts:
            if slot.record is not None:
                assert 0 <= slot.record.attempts_used <= slot.record.guess_limit


def test_install_over_a_locked_record_starts_fresh() -> None:
    state = install(EMPTY, b"a", limit=2)
    state, _ = apply(state, CountAttempt(b"a"))
    state, _ = apply(state, CountAttempt(b"a"))  # locked: 0 attempts left, not yet destroyed
    state = install(state, b"a", limit=2)
    record = state.record(b"a")
    assert record is not None and record.attempts_used == 0 and record.generation == 2
    with pytest.raises(ProtocolStateError):
        apply(state, ResetAttempts(b"a", 1))  # the locked record's sessions are dead


def test_lookups_on_a_large_state() -> None:
    state = EMPTY
    for i in range(0, 200, 7):
        state = install(state, b"acct-%03d" % i)
    for i in range(200):
        slot = state.slot(b"acct-%03d" % i)
        assert (slot is not None) == (i % 7 == 0)
