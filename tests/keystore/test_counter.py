"""The HSM's monotonic NV counter: file backend and PKCS#11 token data objects (SoftHSM2)."""

from __future__ import annotations

import stat
from pathlib import Path

import pkcs11 as p11
import pytest
from hypothesis import given
from hypothesis import strategies as st
from second_process import worker

from bkv.errors import DirectoryLockedError, NvCounterConflictError, NvCounterError
from bkv.keystore.counter import (
    COUNTER_ID_SIZE,
    COUNTER_SIZE,
    EMPTY_DIGEST,
    CounterValue,
    FileCounter,
    MonotonicCounter,
    initial_value,
)
from bkv.keystore.pkcs11 import (
    COUNTER_APPLICATION,
    Pkcs11Config,
    create_counter,
    init_token,
    load_counter,
    token_has_counter,
)

DIGEST_A, DIGEST_B = b"\xaa" * 32, b"\xbb" * 32
ID_A, ID_B = b"\x0a" * COUNTER_ID_SIZE, b"\x0b" * COUNTER_ID_SIZE


def test_counter_value_round_trip_and_strict_decoding() -> None:
    value = CounterValue(2**64 - 1, DIGEST_A, counter_id=ID_A)
    assert CounterValue.from_bytes(value.to_bytes()) == value
    assert len(value.to_bytes()) == COUNTER_SIZE
    encoded = value.to_bytes()
    for bad in (b"", encoded[:-1], encoded + b"\x00", b"X" + encoded[1:]):
        with pytest.raises(NvCounterError):
            CounterValue.from_bytes(bad)
    for version, digest, counter_id in (
        (-1, DIGEST_A, ID_A),
        (2**64, DIGEST_A, ID_A),
        (1, b"short", ID_A),
        (1, DIGEST_A, b"short id"),
    ):
        with pytest.raises(ValueError):
            CounterValue(version, digest, counter_id=counter_id)
    assert CounterValue.from_bytes(value.to_bytes()).counter_id == ID_A


def test_new_counters_draw_distinct_ids_and_refuse_another_counters_value(
    tmp_path: Path,
) -> None:
    first = initial_value()
    assert first.version == 0 and first.digest == EMPTY_DIGEST
    assert initial_value().counter_id != first.counter_id
    counter = FileCounter.create(tmp_path / "nv-counter")
    own = counter.read()
    foreign = CounterValue(1, DIGEST_A, counter_id=ID_B)
    assert own.counter_id != ID_B
    with pytest.raises(ValueError, match="another counter"):
        counter.advance(own, foreign)  # a value of another counter never lands here
    assert counter.read() == own


@given(st.binary(max_size=2 * COUNTER_SIZE))
def test_random_bytes_never_raise_anything_but_the_typed_error(data: bytes) -> None:
    try:
        value = CounterValue.from_bytes(data)
    except NvCounterError:
        return
    assert value.to_bytes() == data


def test_file_counter_moves_only_forward_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nv-counter"
    counter = FileCounter.create(path)
    assert isinstance(counter, MonotonicCounter)
    start = counter.read()
    assert (start.version, start.digest) == (0, EMPTY_DIGEST)
    counter.advance(start, start.next(1, DIGEST_A))
    counter.advance(start.next(1, DIGEST_A), start.next(5, DIGEST_B))
    for stale in (start.next(5, DIGEST_A), start.next(4, DIGEST_B)):
        with pytest.raises(ValueError, match="higher"):
            counter.advance(start.next(5, DIGEST_B), stale)
    assert FileCounter(path).read() == start.next(5, DIGEST_B)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(NvCounterError, match="exists"):
        FileCounter.create(path)  # never reset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nv-counter"]


def test_file_counter_refuses_missing_malformed_linked_and_oversized_files(tmp_path: Path) -> None:
    path = tmp_path / "nv-counter"
    with pytest.raises(NvCounterError, match="does not exist"):
        FileCounter(path).read()
    path.write_bytes(b"\x00" * COUNTER_SIZE)
    with pytest.raises(NvCounterError, match="malformed"):
        FileCounter(path).read()
    path.write_bytes(b"\x00" * (COUNTER_SIZE + 1))
    with pytest.raises(NvCounterError, match="larger"):
        FileCounter(path).read()
    path.unlink()
    target = tmp_path / "target"
    target.write_bytes(initial_value().to_bytes())
    path.symlink_to(target)
    with pytest.raises(NvCounterError, match="symbolic link"):
        FileCounter(path).read()


def _stale_expectations(start: CounterValue, current: CounterValue) -> list[CounterValue]:
    """Values a writer could wrongly believe the counter holds when it holds ``current``."""
    return [
        start,  # an older value
        start.next(current.version - 1, current.digest),  # right digest, older version
        start.next(current.version, DIGEST_B),  # a sibling at the same version
        CounterValue(current.version, current.digest, counter_id=ID_B),  # another counter's
    ]


def test_file_counter_advance_refuses_a_stale_expected_value(tmp_path: Path) -> None:
    counter = FileCounter.create(tmp_path / "nv-counter")
    start = counter.read()
    current = start.next(3, DIGEST_A)
    counter.advance(start, current)
    for stale in _stale_expectations(start, current):
        with pytest.raises(NvCounterConflictError, match="another writer"):
            counter.advance(stale, stale.next(4, DIGEST_B))
        assert counter.read() == current
    counter.advance(current, current.next(4, DIGEST_B))  # the exact value is accepted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nv-counter"]


# --- two real processes ---------------------------------------------------------------

RACE_TRIALS = 20


def test_two_processes_cannot_both_advance_from_the_same_value(tmp_path: Path) -> None:
    # Each trial: both processes read the same value, then both advance from it at
    # once. Whatever the interleaving, exactly one may move on from that value; were
    # both to succeed, both would release a response for one state version.
    path = tmp_path / "nv-counter"
    FileCounter.create(path)
    with worker("race", str(path), "aa") as first, worker("race", str(path), "bb") as second:
        for trial in range(RACE_TRIALS):
            first.send("read")
            second.send("read")
            assert (first.answer(), second.answer()) == (f"ready {trial}", f"ready {trial}")
            first.send("go")
            second.send("go")
            outcomes = sorted((first.answer(), second.answer()))
            assert outcomes == ["lost", "won"], f"trial {trial}: {outcomes}"
    final = FileCounter(path).read()
    assert final.version == RACE_TRIALS
    assert final.digest in (DIGEST_A, DIGEST_B)


# --- PKCS#11 ----------------------------------------------------------------------

SO_PIN = "so-pin-5678"
USER_PIN = "user-pin-1234"


@pytest.fixture
def token(tmp_path: Path) -> Pkcs11Config:
    return init_token(tmp_path / "token", "bkv-counter", SO_PIN, USER_PIN)


def _raw_objects(config: Pkcs11Config, label: str) -> list[dict[str, object]]:
    library = p11.lib(config.module_path)
    session = library.get_token(token_label=config.token_label).open(
        user_pin=config.user_pin, rw=True
    )
    try:
        return [
            {
                "value": bytes(obj[p11.Attribute.VALUE]),
                "private": obj[p11.Attribute.PRIVATE],
                "token": obj[p11.Attribute.TOKEN],
                "application": obj[p11.Attribute.APPLICATION],
            }
            for obj in session.get_objects(
                {p11.Attribute.CLASS: p11.ObjectClass.DATA, p11.Attribute.LABEL: label}
            )
        ]
    finally:
        session.close()


@pytest.mark.softhsm
def test_token_counter_is_one_private_token_object_that_moves_forward(
    token: Pkcs11Config,
) -> None:
    assert not token_has_counter(token)
    with create_counter(token, "nv") as counter:
        assert isinstance(counter, MonotonicCounter)
        start = counter.read()
        assert (start.version, start.digest) == (0, EMPTY_DIGEST)
        counter.advance(start, start.next(1, DIGEST_A))
        counter.advance(start.next(1, DIGEST_A), start.next(2, DIGEST_B))
        with pytest.raises(ValueError, match="higher"):
            counter.advance(start.next(2, DIGEST_B), start.next(2, DIGEST_A))
    assert token_has_counter(token)
    [stored] = _raw_objects(token, "nv")
    assert stored["value"] == start.next(2, DIGEST_B).to_bytes()
    assert stored["private"] is True and stored["token"] is True
    assert stored["application"] in (COUNTER_APPLICATION, COUNTER_APPLICATION.encode())
    with load_counter(token, "nv") as again:
        assert again.read() == start.next(2, DIGEST_B)
    with pytest.raises(NvCounterError, match="exists"):
        create_counter(token, "nv")  # never reset


@pytest.mark.softhsm
def test_token_counter_after_a_crash_between_create_and_destroy_reads_the_newest(
    token: Pkcs11Config,
) -> None:
    with create_counter(token, "nv") as counter:
        start = counter.read()
        counter.advance(start, start.next(3, DIGEST_A))
        # What a crash inside advance() leaves: the new object made, the old not yet gone.
        counter._session.create_object(  # the backend's own session, as advance() uses
            {
                p11.Attribute.CLASS: p11.ObjectClass.DATA,
                p11.Attribute.TOKEN: True,
                p11.Attribute.PRIVATE: True,
                p11.Attribute.LABEL: "nv",
                p11.Attribute.VALUE: start.next(4, DIGEST_B).to_bytes(),
            }
        )
    with load_counter(token, "nv") as counter:
        assert counter.read() == start.next(4, DIGEST_B)
        counter.advance(start.next(4, DIGEST_B), start.next(5, DIGEST_A))  # cleans both up
    assert [o["value"] for o in _raw_objects(token, "nv")] == [start.next(5, DIGEST_A).to_bytes()]


@pytest.mark.softhsm
def test_token_counter_missing_or_ambiguous_is_refused(token: Pkcs11Config) -> None:
    with pytest.raises(NvCounterError, match="no NV counter"):
        load_counter(token, "absent")
    with create_counter(token, "nv") as counter:
        start = counter.read()
        forged = {
            p11.Attribute.CLASS: p11.ObjectClass.DATA,
            p11.Attribute.TOKEN: True,
            p11.Attribute.PRIVATE: True,
            p11.Attribute.LABEL: "nv",
            p11.Attribute.VALUE: start.next(0, DIGEST_A).to_bytes(),
        }
        obj = counter._session.create_object(forged)
        with pytest.raises(NvCounterError, match="same version"):
            counter.read()
        obj.destroy()
        # Another counter's value under this label (a higher version, a foreign id).
        forged[p11.Attribute.VALUE] = CounterValue(7, DIGEST_A, counter_id=ID_B).to_bytes()
        counter._session.create_object(forged)
        with pytest.raises(NvCounterError, match="different ids"):
            counter.read()


@pytest.mark.softhsm
def test_token_counter_advance_refuses_a_stale_expected_value(token: Pkcs11Config) -> None:
    with create_counter(token, "nv") as counter:
        start = counter.read()
        current = start.next(3, DIGEST_A)
        counter.advance(start, current)
        for stale in _stale_expectations(start, current):
            with pytest.raises(NvCounterConflictError, match="another writer"):
                counter.advance(stale, stale.next(4, DIGEST_B))
            assert counter.read() == current
        # Another writer's object (what a second process would leave) moves the counter.
        counter._session.create_object(
            {
                p11.Attribute.CLASS: p11.ObjectClass.DATA,
                p11.Attribute.TOKEN: True,
                p11.Attribute.PRIVATE: True,
                p11.Attribute.LABEL: "nv",
                p11.Attribute.VALUE: start.next(4, DIGEST_B).to_bytes(),
            }
        )
        with pytest.raises(NvCounterConflictError):
            counter.advance(current, current.next(4, DIGEST_A))
        assert counter.read() == start.next(4, DIGEST_B)
        assert len(counter._objects()) == 2  # nothing created, nothing destroyed


@pytest.mark.softhsm
def test_token_counter_is_open_in_one_process_at_a_time(
    token: Pkcs11Config, tmp_path: Path
) -> None:
    config_path = tmp_path / "pkcs11.json"
    token.save(config_path)
    env = {"BKV_TEST_PIN": USER_PIN}
    args = ("token-counter", str(config_path), "nv")
    with create_counter(token, "nv"), worker(*args, env=env) as other:
        assert other.answer() == "refused DirectoryLockedError"
    with worker(*args, env=env) as other:
        assert other.answer() == "opened"
        with pytest.raises(DirectoryLockedError, match="another process"):
            load_counter(token, "nv")
        with pytest.raises(DirectoryLockedError):
            create_counter(token, "nv")
    with load_counter(token, "nv") as counter:  # released when the other process ended
        assert counter.read().version == 0
