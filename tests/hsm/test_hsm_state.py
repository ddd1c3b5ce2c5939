"""apply(policy, slot, command): deterministic, refusals change nothing, the counter rules hold."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import ProtocolStateError, RecordExistsError, VaultError
from bkv.hsm.state import (
    _RULES,
    MAX_GENERATION,
    PENDING_RECORD_TTL_MS,
    AccountSlot,
    Applied,
    Command,
    CountAttempt,
    Counted,
    DeleteRecord,
    DestroyRecord,
    ExpirePending,
    ExposeRecord,
    ForgiveAttempts,
    Forgiven,
    InstallRecord,
    NoRecord,
    Outcome,
    Record,
    Slot,
    VaultPolicy,
    apply,
)
from bkv.wire import encode

POLICY = VaultPolicy("fleet", 10)
NOW = 5


def registration_id(n: int) -> bytes:
    return n.to_bytes(32, "big")


def run(slot: Slot, command: Command) -> tuple[Slot, Outcome]:
    return apply(POLICY, slot, command)


def install_pending(
    slot: Slot, account: bytes = b"a", limit: int = 3, expected: int | None = None, rid: int = 1
) -> AccountSlot:
    generation = expected if expected is not None else (0 if slot is None else slot.generation)
    command = InstallRecord(
        account, generation, registration_id(rid), bytes(192), b"secret", limit, NOW
    )
    new, _ = run(slot, command)
    assert new is not None
    return new


def install(
    slot: Slot, account: bytes = b"a", limit: int = 3, expected: int | None = None
) -> AccountSlot:
    """Install and expose (the two phases of a registration the client saw through)."""
    pending = install_pending(slot, account, limit, expected)
    new, _ = run(pending, ExposeRecord(account, registration_id(1), NOW))
    assert new is not None
    return new


def live(slot: Slot) -> Record | None:
    return None if slot is None else slot.record


def test_count_until_limit_then_destroy_and_tombstone() -> None:
    slot: Slot = install(None, limit=2)
    slot, outcome = run(slot, CountAttempt(b"a"))
    assert isinstance(outcome, Counted) and outcome.record.attempts_left == 1
    slot, outcome = run(slot, CountAttempt(b"a"))
    assert isinstance(outcome, Counted) and outcome.record.attempts_left == 0
    slot, outcome = run(slot, CountAttempt(b"a"))
    assert outcome == NoRecord(destroyed_now=True)
    # The tombstone moved on a generation: nothing started against record 1 installs.
    assert slot is not None and slot.record is None and slot.generation == 2
    after, outcome = run(slot, CountAttempt(b"a"))
    assert after is slot and outcome == NoRecord(destroyed_now=False)


def test_unknown_account_is_not_created_by_an_attempt() -> None:
    slot, outcome = run(None, CountAttempt(b"nobody"))
    assert slot is None and outcome == NoRecord(destroyed_now=False)


def test_apply_refuses_the_slot_of_another_account() -> None:
    slot = install(None, b"a")
    for command in (
        CountAttempt(b"b"),
        ForgiveAttempts(b"b", 1, 1),
        DestroyRecord(b"b", 1),
        DeleteRecord(b"b", 1),
        InstallRecord(b"b", 1, registration_id(2), bytes(192), b"s", 3, NOW),
        ExposeRecord(b"b", registration_id(1), NOW),
        ExpirePending(b"b", NOW + PENDING_RECORD_TTL_MS),
    ):
        with pytest.raises(ValueError, match="account"):
            run(slot, command)


def test_a_command_that_changes_nothing_returns_the_same_slot() -> None:
    """``new is slot`` is how the caller knows there is nothing to seal or store."""
    slot = install(None, b"a")
    for unchanged in (install_pending(None, b"a"), AccountSlot(b"a", 3)):
        after, outcome = run(unchanged, CountAttempt(b"a"))  # no live record
        assert after is unchanged and outcome == NoRecord(destroyed_now=False)
    again, outcome = run(slot, ExposeRecord(b"a", registration_id(1), NOW))  # idempotent
    assert again is slot and outcome == Applied(slot)
    changed, _ = run(slot, CountAttempt(b"a"))
    assert changed is not slot and changed != slot


def test_forgive_destroy_delete_check_the_generation() -> None:
    slot: Slot = install(install(None))  # generation 2
    slot, _ = run(slot, CountAttempt(b"a"))
    for command in (ForgiveAttempts(b"a", 1, 1), DestroyRecord(b"a", 1), DeleteRecord(b"a", 1)):
        with pytest.raises(ProtocolStateError):
            run(slot, command)
    assert live(run(slot, DeleteRecord(b"a", 2))[0]) is None


def test_a_forgiven_attempt_spares_the_attempts_started_after_it() -> None:
    slot: Slot = install(None, limit=3)
    slot, owner = run(slot, CountAttempt(b"a"))  # the owner's KE1: attempt 1
    assert isinstance(owner, Counted) and owner.record.attempts_started == 1
    slot, _ = run(slot, CountAttempt(b"a"))  # the host's, after it: 2 and 3
    slot, _ = run(slot, CountAttempt(b"a"))
    slot, outcome = run(slot, ForgiveAttempts(b"a", 1, 1))  # the owner's KE3
    assert isinstance(outcome, Forgiven) and outcome.failed_attempts == 2
    assert (outcome.record.attempts_used, outcome.record.attempts_left) == (2, 1)
    assert live(slot) == outcome.record
    # The same or an older attempt succeeding later forgives nothing more.
    again, outcome = run(slot, ForgiveAttempts(b"a", 1, 1))
    assert live(again) == live(slot)
    assert isinstance(outcome, Forgiven) and outcome.failed_attempts == 2
    # The latest one forgives every attempt up to its own.
    slot, outcome = run(slot, ForgiveAttempts(b"a", 1, 3))
    assert isinstance(outcome, Forgiven) and outcome.failed_attempts == 1
    assert outcome.record.attempts_used == 0 and outcome.record.forgiven_through == 3


def test_forgive_names_an_attempt_that_was_counted_on_the_record() -> None:
    slot: Slot = install(None, limit=3)
    slot, _ = run(slot, CountAttempt(b"a"))
    for attempt in (0, 2, 2**64 - 1):
        with pytest.raises(ProtocolStateError, match="no such attempt"):
            run(slot, ForgiveAttempts(b"a", 1, attempt))
    record = live(run(slot, ForgiveAttempts(b"a", 1, 1))[0])
    assert record is not None and record.attempts_used == 0


def test_carried_attempts_are_the_new_records_first_and_forgiven_by_its_sessions() -> None:
    slot: Slot = install(None, limit=5)
    slot, _ = run(slot, CountAttempt(b"a"))
    slot, _ = run(slot, CountAttempt(b"a"))
    slot = install(slot, limit=5)  # generation 2 carries the 2 attempts
    record = live(slot)
    assert record is not None and (record.attempts_started, record.forgiven_through) == (2, 0)
    with pytest.raises(ProtocolStateError):  # a session of generation 1 forgives nothing here
        run(slot, ForgiveAttempts(b"a", 1, 2))
    slot, counted = run(slot, CountAttempt(b"a"))
    assert isinstance(counted, Counted) and counted.record.attempts_started == 3
    slot, outcome = run(slot, ForgiveAttempts(b"a", 2, 3))
    assert isinstance(outcome, Forgiven) and outcome.failed_attempts == 2
    assert outcome.record.attempts_used == 0


def test_destroy_only_at_the_limit() -> None:
    slot: Slot = install(None, limit=1)
    with pytest.raises(ProtocolStateError):
        run(slot, DestroyRecord(b"a", 1))
    slot, _ = run(slot, CountAttempt(b"a"))
    assert live(run(slot, DestroyRecord(b"a", 1))[0]) is None


def test_expose_carries_the_counter_and_install_checks_the_generation() -> None:
    slot: Slot = install(None, limit=5)
    slot, _ = run(slot, CountAttempt(b"a"))
    slot, _ = run(slot, CountAttempt(b"a"))
    with pytest.raises(ProtocolStateError):
        install(slot, expected=0)  # started before the first install finished
    with pytest.raises(RecordExistsError):
        install(slot, limit=2)  # 2 spent >= new limit 2
    record = live(install(slot, limit=5))
    assert record is not None and record.attempts_used == 2 and record.generation == 2


def test_a_pending_record_is_not_counted_and_the_live_one_stays_live() -> None:
    slot: Slot = install_pending(install(None, limit=3), limit=3, rid=2)
    slot, outcome = run(slot, CountAttempt(b"a"))
    assert isinstance(outcome, Counted) and outcome.record.generation == 1  # the live one
    assert slot is not None and slot.pending is not None and slot.pending.attempts_used == 0
    only_pending = install_pending(None, b"b")
    assert run(only_pending, CountAttempt(b"b")) == (only_pending, NoRecord(False))
    slot, _ = run(slot, ExposeRecord(b"a", registration_id(2), NOW))
    record = live(slot)
    assert record is not None and record.generation == 2 and record.attempts_used == 1


def test_expose_over_a_locked_record_is_refused_and_destruction_drops_the_pending() -> None:
    slot: Slot = install(None, limit=2)
    slot, _ = run(slot, CountAttempt(b"a"))
    slot, _ = run(slot, CountAttempt(b"a"))  # locked: 0 attempts left, not yet destroyed
    with pytest.raises(RecordExistsError):  # refused already at install
        install_pending(slot, limit=2, rid=2)
    # A pending record installed before the lock cannot go live over the locked record.
    earlier: Slot = install_pending(install(None, limit=2), limit=2, rid=2)
    earlier, _ = run(earlier, CountAttempt(b"a"))
    earlier, _ = run(earlier, CountAttempt(b"a"))
    with pytest.raises(RecordExistsError):
        run(earlier, ExposeRecord(b"a", registration_id(2), NOW))
    for end in (DestroyRecord(b"a", 1), CountAttempt(b"a")):
        after, _ = run(earlier, end)
        assert after is not None and after.record is None and after.pending is None
        with pytest.raises(ProtocolStateError):
            run(after, ExposeRecord(b"a", registration_id(2), NOW))


def test_expose_is_single_use_needs_the_id_and_expires() -> None:
    slot: Slot = install_pending(None, rid=7)
    for wrong in (
        ExposeRecord(b"a", registration_id(8), NOW),
        ExposeRecord(b"a", registration_id(7), NOW + PENDING_RECORD_TTL_MS),
    ):
        with pytest.raises(ProtocolStateError):
            run(slot, wrong)
    # Another account's id exposes nothing: its slot does not hold this pending record.
    with pytest.raises(ProtocolStateError):
        run(None, ExposeRecord(b"b", registration_id(7), NOW))
    slot, _ = run(slot, ExposeRecord(b"a", registration_id(7), NOW + PENDING_RECORD_TTL_MS - 1))
    # Asked again (the first RegisterExposeOk was lost): the same answer, nothing changes.
    again, outcome = run(slot, ExposeRecord(b"a", registration_id(7), NOW + 1))
    assert again is slot and slot is not None and outcome == Applied(slot)
    # Once that record is replaced, the id exposes nothing any more.
    slot = install_pending(slot, rid=9)
    slot, _ = run(slot, ExposeRecord(b"a", registration_id(9), NOW))
    with pytest.raises(ProtocolStateError):
        run(slot, ExposeRecord(b"a", registration_id(7), NOW))


def test_a_registration_started_before_a_destroy_or_delete_never_installs() -> None:
    """InstallRecord names the generation its registration started at (threat-model §5 rule 3)."""
    for end in ("destroy", "delete"):
        slot: Slot = install(None, limit=1)
        assert slot is not None
        started_at = slot.generation
        if end == "destroy":
            slot, _ = run(slot, CountAttempt(b"a"))
            slot, outcome = run(slot, CountAttempt(b"a"))
            assert outcome == NoRecord(destroyed_now=True)
        else:
            slot, _ = run(slot, DeleteRecord(b"a", 1))
        with pytest.raises(ProtocolStateError):
            install_pending(slot, limit=1, expected=started_at, rid=2)
        # One started after the end (told: no record) installs, at a new generation.
        pending = install_pending(slot, limit=1, rid=2).pending
        assert pending is not None and pending.generation == started_at + 2


def test_generations_saturate_and_then_refuse_every_registration() -> None:
    record = Record(MAX_GENERATION, registration_id(1), bytes(192), b"s", 1, 1, 0)
    slot = AccountSlot(b"a", MAX_GENERATION, record)
    for end in (DestroyRecord(b"a", MAX_GENERATION), DeleteRecord(b"a", MAX_GENERATION)):
        after, _ = run(slot, end)
        assert after is not None and after.record is None and after.generation == MAX_GENERATION
        with pytest.raises(RecordExistsError, match="generations"):
            install_pending(after, limit=1, rid=2)


def test_an_expired_pending_record_is_zeroized_by_housekeeping() -> None:
    before = install_pending(install(None, limit=3), limit=3, rid=2)
    with pytest.raises(ProtocolStateError):  # not yet expired
        run(before, ExpirePending(b"a", NOW + PENDING_RECORD_TTL_MS - 1))
    with pytest.raises(ProtocolStateError):  # no such account
        run(None, ExpirePending(b"b", NOW + PENDING_RECORD_TTL_MS))
    with pytest.raises(ProtocolStateError):  # an account without a pending record
        run(install(None, b"b"), ExpirePending(b"b", NOW + PENDING_RECORD_TTL_MS))
    after, _ = run(before, ExpirePending(b"a", NOW + PENDING_RECORD_TTL_MS))
    assert after is not None
    assert after.pending is None and after.record == before.record
    assert after.generation == before.generation
    with pytest.raises(ProtocolStateError):
        run(after, ExpirePending(b"a", NOW + PENDING_RECORD_TTL_MS))  # nothing left


def test_install_after_destruction_starts_fresh_with_a_new_generation() -> None:
    slot: Slot = install(None, limit=1)
    slot, _ = run(slot, CountAttempt(b"a"))
    slot, _ = run(slot, CountAttempt(b"a"))  # destroys
    record = live(install(slot, limit=1))
    # Generation 1 was destroyed (the tombstone is 2), the new record is 3.
    assert record is not None and record.attempts_used == 0 and record.generation == 3


def test_refused_install_outside_the_policy_is_caller_misuse() -> None:
    with pytest.raises(ValueError, match="policy"):
        install(None, limit=11)
    # The policy decides, not the protocol's maximum: a stricter fleet refuses 4.
    with pytest.raises(ValueError, match="policy"):
        apply(
            VaultPolicy("fleet", 3),
            None,
            InstallRecord(b"a", 0, registration_id(1), bytes(192), b"s", 4, NOW),
        )


def test_refusals_leave_the_slot_unchanged() -> None:
    slot = install(None, limit=2)
    encoded = encode(slot)
    for refused in (
        DestroyRecord(b"a", 1),  # not at its limit
        ForgiveAttempts(b"a", 1, 1),  # no such attempt
        DeleteRecord(b"a", 9),  # another generation
        ExposeRecord(b"a", registration_id(5), NOW),  # no such pending record
    ):
        with pytest.raises(VaultError):
            run(slot, refused)
        assert encode(slot) == encoded  # frozen: apply never mutates


# --- property: random command sequences against a reference counter ------------------

ACCOUNTS = (b"a", b"b")

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["count", "forgive", "destroy", "delete", "install", "expose"]),
        st.sampled_from(ACCOUNTS),
        st.booleans(),  # name the current generation / registration id (else a stale one)
        st.integers(1, 4),  # a guess limit; for "forgive", how many attempts back
    ),
    max_size=40,
)


def _command(slot: Slot, step: tuple[str, bytes, bool, int]) -> Command:
    """Commands that *can* succeed (current generation, pending id) or are stale on purpose."""
    kind, account, current, limit = step
    live_generation = 0 if slot is None or slot.record is None else slot.record.generation
    generation = live_generation if current else live_generation + 7
    if kind == "count":
        return CountAttempt(account)
    if kind == "forgive":
        started = 0 if slot is None or slot.record is None else slot.record.attempts_started
        return ForgiveAttempts(account, generation, max(0, started + 1 - limit))
    if kind == "destroy":
        return DestroyRecord(account, generation)
    if kind == "delete":
        return DeleteRecord(account, generation)
    slot_generation = 0 if slot is None else slot.generation
    if kind == "install":
        expected = slot_generation if current else slot_generation + 1
        return InstallRecord(
            account, expected, registration_id(slot_generation + 1), bytes(192), b"s", limit, NOW
        )
    pending = None if slot is None else slot.pending
    rid = pending.registration_id if pending is not None and current else registration_id(0)
    return ExposeRecord(account, rid, NOW)


def _encoded(slots: dict[bytes, Slot]) -> bytes:
    """Every account's slot, encoded (an empty part for an account without one)."""
    parts = [b"" if slot is None else encode(slot) for _account, slot in sorted(slots.items())]
    return b"|".join(len(p).to_bytes(4, "big") + p for p in parts)


def _run(steps: list[tuple[str, bytes, bool, int]]) -> tuple[list[bytes], int]:
    """Apply ``steps``; check the counting rules after each; return the slots and successes."""
    slots: dict[bytes, Slot] = dict.fromkeys(ACCOUNTS)
    trail: list[bytes] = []
    succeeded = 0
    # Reference: the checks of each account's secret that count against its limit,
    # by attempt number: every one since the last forgiven attempt, summed over
    # every record that replaced another (carry-over), per live generation.
    unforgiven: dict[bytes, list[int]] = {account: [] for account in ACCOUNTS}
    # Slot generations at which the account's record was destroyed or deleted.
    ended_at: dict[bytes, set[int]] = {account: set() for account in ACCOUNTS}
    for step in steps:
        account = step[1]
        before = slots[account]
        command = _command(before, step)
        try:
            after, outcome = run(before, command)
        except VaultError:  # refused: ``before`` (frozen) is still the slot
            trail.append(_encoded(slots))
            continue
        slots[account] = after
        succeeded += 1
        if after is None:  # a check on an account that never registered creates nothing
            assert before is None and outcome == NoRecord(destroyed_now=False)
            trail.append(_encoded(slots))
            continue
        assert after.account_id == account
        assert before is None or after.generation >= before.generation
        if isinstance(outcome, Counted):
            unforgiven[account].append(outcome.record.attempts_started)
            assert outcome.record.generation == after.generation or after.pending is not None
            # Never more checks than the limit of the record that answered them.
            assert len(unforgiven[account]) <= outcome.record.guess_limit
        if isinstance(command, ForgiveAttempts):
            # Forgiven: the attempts up to the KE3's own, never one started after it;
            # the owner is told of all the others.
            assert isinstance(outcome, Forgiven)
            others = [a for a in unforgiven[account] if a != command.attempt]
            assert outcome.failed_attempts == len(others)
            unforgiven[account] = [a for a in unforgiven[account] if a > command.attempt]
        if isinstance(outcome, Applied) and isinstance(command, ExposeRecord):
            # The new record numbers the carried attempts 1..n.
            unforgiven[account] = list(range(1, len(unforgiven[account]) + 1))
            assert after.record is not None
            assert after.record.attempts_used == len(unforgiven[account])
        if isinstance(command, InstallRecord):
            # Never a registration started before its account's record ended.
            assert command.expected_generation not in ended_at[account]
        if after.record is None:
            unforgiven[account] = []  # destroyed or deleted: the secret is gone
            if before is not None and before.record is not None:
                assert after.pending is None  # ... and any pending record with it
                assert after.generation > before.generation
                ended_at[account].add(before.generation)
        if after.record is not None:
            assert after.record.attempts_used == len(unforgiven[account])
            assert unforgiven[account] == sorted(unforgiven[account])
        if after.pending is not None:
            assert after.pending.attempts_started == 0
        trail.append(_encoded(slots))
    return trail, succeeded


@given(STEPS)
def test_apply_is_deterministic_and_counts_every_check_across_records(
    steps: list[tuple[str, bytes, bool, int]],
) -> None:
    first, _ = _run(steps)
    assert first == _run(steps)[0]  # replicas applying the same commands agree byte for byte


def test_the_property_steps_mostly_succeed() -> None:
    """The generator names real generations and ids, so most commands do something."""
    steps = [
        ("install", b"a", True, 3),
        ("expose", b"a", True, 3),
        ("count", b"a", True, 3),
        ("count", b"a", True, 3),
        ("install", b"a", True, 4),
        ("count", b"a", True, 3),
        ("expose", b"a", True, 4),
        ("forgive", b"a", True, 1),
        ("count", b"a", True, 3),
        ("count", b"a", True, 3),
        ("forgive", b"a", True, 2),  # the older of the two: the later one stays counted
        ("delete", b"a", True, 3),
    ]
    _trail, succeeded = _run(steps)
    assert succeeded == len(steps)


def test_every_command_has_one_rule() -> None:
    assert set(_RULES) == set(get_args(Command))
    with pytest.raises(TypeError, match="not a command"):
        apply(POLICY, None, "CountAttempt")  # type: ignore[arg-type]


def test_the_policy_checks_its_guess_limit_cap() -> None:
    for cap in (0, 101):
        with pytest.raises(ValueError, match="max guess limit"):
            VaultPolicy("fleet", cap)
