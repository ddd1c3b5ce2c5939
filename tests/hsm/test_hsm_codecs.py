"""Hypothesis: the HSM's message and state codecs round-trip and fail only with CodecError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import CodecError
from bkv.hsm import state as s
from bkv.hsm.sealing import SealedState
from bkv.protocol import messages as m
from bkv.protocol.vault_records import MAX_RECORD_READ_SIZE, RecordRead
from bkv.records.nodes import MAX_RECORD_SIZE
from bkv.records.proof import MAX_PROOF_SIZE
from bkv.wire import Registry, decode, decode_any, encode


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def var(lo: int, hi: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=lo, max_size=hi)


account = var(1, m.MAX_ACCOUNT_ID)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
limit = st.integers(1, m.MAX_GUESS_LIMIT)
fleet = st.text(min_size=1, max_size=16)

records = st.builds(
    lambda g, rid, rec, sec, lim, forgiven, used, ms: s.Record(
        g, rid, rec, sec, lim, forgiven + min(used, lim), forgiven, ms
    ),
    u32,
    fixed(32),
    fixed(192),
    var(1, m.MAX_SECRET),
    limit,
    st.integers(0, 2**63),
    st.integers(0, m.MAX_GUESS_LIMIT),
    u64,
)
commands = st.one_of(
    st.builds(s.CountAttempt, account),
    st.builds(s.ForgiveAttempts, account, u32, u64),
    st.builds(s.DestroyRecord, account, u32),
    st.builds(s.DeleteRecord, account, u32),
    st.builds(
        s.InstallRecord, account, u32, fixed(32), fixed(192), var(1, m.MAX_SECRET), limit, u64
    ),
    st.builds(s.ExposeRecord, account, fixed(32), u64),
    st.builds(s.ExpirePending, account, u64),
)
pending_records = st.builds(
    lambda g, rid, rec, sec, lim, ms: s.Record(g, rid, rec, sec, lim, 0, 0, ms),
    u32,
    fixed(32),
    fixed(192),
    var(1, m.MAX_SECRET),
    limit,
    u64,
)

secrets = st.builds(s.HsmSecrets, fixed(128), fixed(32), fixed(32), fixed(32), fixed(32))
snapshots = st.builds(
    lambda version, sec, f, lim, tree_id, root: s.Snapshot(
        version, sec, f, lim, tree_id, version - 1, root
    ),
    st.integers(1, 2**64 - 1),
    secrets,
    fleet,
    limit,
    fixed(32),
    fixed(32),
)
slots = st.builds(s.AccountSlot, account, u32, st.none() | records, st.none() | pending_records)
batches = st.builds(s.CommandBatch, u64, st.lists(commands, min_size=1, max_size=4).map(tuple))
record_reads = st.builds(RecordRead, var(1, 300), var(0, 300))

MESSAGES = st.one_of(
    st.builds(
        m.HsmRequest, fleet, st.sampled_from(m.RequestKind), account, var(1, m.MAX_SEALED_REQUEST)
    ),
    st.builds(m.HsmResponse, var(1, m.MAX_SEALED_RESPONSE)),
    st.builds(m.HsmRejected, st.sampled_from(m.ErrorCode)),
    st.builds(m.RegisterStart, fixed(32), u32),
    st.builds(m.RegisterFinish, fixed(32), fixed(192), var(1, m.MAX_SECRET), st.integers(0, 255)),
    st.builds(m.RegisterExpose, fixed(32)),
    st.builds(m.RegisterExposeOk, u32, st.integers(0, 255), st.integers(0, 255)),
    st.builds(m.RecoverStart, fixed(96)),
    st.builds(m.RecoverFinish, fixed(16), fixed(64), st.sampled_from(m.FinishAction)),
    st.builds(m.RecoverAbort, fixed(16)),
    st.just(m.StatusRequest()),
    st.builds(m.RegisterStartOk, fixed(64), fixed(32)),
    st.builds(m.RegisterFinishOk, u32, st.integers(0, 255), st.integers(0, 255)),
    st.builds(m.RecoverStartOk, fixed(16), fixed(320)),
    st.builds(m.KeyReleased, u32, st.integers(0, 255), var(1, m.MAX_SEALED_SECRET)),
    st.builds(m.RecordDeleted, u32),
    st.just(m.AbortOk()),
    st.builds(
        m.StatusOk,
        st.booleans(),
        u32,
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 255),
    ),
    st.builds(m.VaultFailure, st.sampled_from(m.ErrorCode)),
    records,
    slots,
    secrets,
    snapshots,
    commands,
    batches,
    record_reads,
    st.builds(SealedState, fleet, u64, var(1, 200)),
)

ALL = Registry(
    [
        m.HsmRequest,
        m.HsmResponse,
        m.HsmRejected,
        *m.INNER_REQUESTS,
        *m.INNER_RESPONSES,
        s.Record,
        s.AccountSlot,
        s.HsmSecrets,
        s.Snapshot,
        s.CountAttempt,
        s.ForgiveAttempts,
        s.DestroyRecord,
        s.DeleteRecord,
        s.InstallRecord,
        s.ExposeRecord,
        s.ExpirePending,
        s.CommandBatch,
        SealedState,
        RecordRead,
    ]
)


@given(MESSAGES)
def test_round_trip(msg: object) -> None:
    data = encode(msg)
    assert decode(type(msg), data) == msg
    assert decode_any(data, ALL) == msg


@given(MESSAGES, st.data())
def test_mutations_fail_typed_or_stay_canonical(msg: object, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    choice = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if choice == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] ^= data.draw(st.integers(1, 255))
    elif choice == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=8))
    try:
        decoded = decode_any(bytes(raw), ALL)
    except CodecError:
        return
    assert encode(decoded) == bytes(raw)  # whatever decodes is canonical


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_codec_errors(raw: bytes) -> None:
    try:
        decoded = decode_any(raw, ALL)
    except CodecError:
        return
    assert encode(decoded) == raw


def test_a_snapshot_commits_to_the_tree_version_before_its_own() -> None:
    keys = s.HsmSecrets(bytes(128), bytes(32), bytes(32), bytes(32), bytes(32))
    snapshot = s.Snapshot(7, keys, "f", 10, b"\x01" * 32, 6, b"\x02" * 32)
    assert snapshot.policy == s.VaultPolicy("f", 10)
    assert (snapshot.head.tree_id, snapshot.head.version) == (b"\x01" * 32, 6)
    assert snapshot.head.root == b"\x02" * 32
    for tree_version in (5, 7):
        with pytest.raises(ValueError, match="tree version"):
            s.Snapshot(7, keys, "f", 10, b"\x01" * 32, tree_version, b"\x02" * 32)
    with pytest.raises(ValueError, match="guess limit"):
        s.Snapshot(7, keys, "f", 0, b"\x01" * 32, 6, b"\x02" * 32)
    # Sealed bytes that disagree do not decode either: tree_version precedes the root.
    raw = bytearray(encode(snapshot))
    raw[-40:-32] = (7).to_bytes(8, "big")
    with pytest.raises(CodecError, match="tree version"):
        decode(s.Snapshot, bytes(raw))


def test_a_command_batch_holds_one_to_max_batch_commands() -> None:
    one = s.CountAttempt(b"a")
    full = s.CommandBatch(2, (one,) * s.MAX_BATCH_COMMANDS)
    assert decode(s.CommandBatch, encode(full)) == full
    for commands in ((), (one,) * (s.MAX_BATCH_COMMANDS + 1)):
        with pytest.raises(ValueError, match="items outside"):
            encode(s.CommandBatch(2, commands))
    raw = encode(s.CommandBatch(2, (one,)))
    at = 3 + 8  # tag, version, then the batch's version; the u16 count follows
    emptied = raw[:at] + bytes(2) + raw[at + 2 :]  # count 0, the command left as trailing bytes
    with pytest.raises(CodecError, match="under the minimum"):
        decode(s.CommandBatch, emptied)


def test_the_largest_slot_snapshot_and_record_read_fit_their_ceilings() -> None:
    secret = b"\x01" * m.MAX_SECRET
    record = s.Record(
        2**32 - 1, bytes(32), bytes(192), secret, 100, 2**64 - 1, 2**64 - 1, 2**64 - 1
    )
    pending = s.Record(2**32 - 1, bytes(32), bytes(192), secret, 100, 0, 0, 2**64 - 1)
    slot = s.AccountSlot(b"\x02" * m.MAX_ACCOUNT_ID, 2**32 - 1, record, pending)
    assert len(encode(slot)) <= s.MAX_SLOT_SIZE
    keys = s.HsmSecrets(bytes(128), bytes(32), bytes(32), bytes(32), bytes(32))
    fleet_id = "f" * m.MAX_FLEET_ID
    snapshot = s.Snapshot(2**64 - 1, keys, fleet_id, 100, bytes(32), 2**64 - 2, bytes(32))
    assert len(encode(snapshot)) <= s.MAX_STATE_SIZE
    largest = RecordRead(b"\x03" * MAX_PROOF_SIZE, b"\x04" * MAX_RECORD_SIZE)
    data = encode(largest)
    assert len(data) <= MAX_RECORD_READ_SIZE
    assert decode(RecordRead, data) == largest
    with pytest.raises(ValueError, match="length"):
        encode(RecordRead(b"\x03" * (MAX_PROOF_SIZE + 1)))
    with pytest.raises(ValueError, match="length"):
        encode(RecordRead(b"\x03", b"\x04" * (MAX_RECORD_SIZE + 1)))
    with pytest.raises(ValueError, match="length"):
        encode(RecordRead(b""))  # a read always carries a proof (absence is proven too)


def test_secrets_are_not_in_reprs() -> None:
    secrets = s.HsmSecrets(b"\x11" * 128, b"\x22" * 32, b"\x33" * 32, b"\x44" * 32, b"\x55" * 32)
    for text in (repr(secrets), repr(s.Snapshot(1, secrets, "f", 10, bytes(32), 0, bytes(32)))):
        for private in ("\\x11", "\\x22", "\\x44", "\\x55", "11" * 8, "44" * 8, "55" * 8):
            assert private not in text
    install = s.InstallRecord(b"a", 0, bytes(32), bytes(192), b"TOPSECRET", 10, 0)
    assert "TOPSECRET" not in repr(install)
    assert "TOPSECRET" not in repr(m.RegisterFinish(bytes(32), bytes(192), b"TOPSECRET"))


# Distinct byte patterns, so a leak of any one of them is visible in a repr.
RECORD_BYTES = bytes(range(32)) + b"\x5a" * 32 + bytes(range(100, 228))  # 192: pk, masking key, ..
MASKING_KEY = RECORD_BYTES[32:64]
REGISTRATION_ID = b"\x6b" * 32
SESSION_ID = b"\x7c" * 16
SEALED = b"\x8d" * 40


def _leaks(text: str) -> list[bytes]:
    patterns = (RECORD_BYTES, MASKING_KEY, REGISTRATION_ID, SESSION_ID, SEALED, b"TOPSECRET")
    return [p for p in patterns if repr(p)[2:-1][:24] in text or p.hex()[:24] in text]


def test_records_ids_and_sealed_bytes_are_not_in_reprs() -> None:
    record = s.Record(3, REGISTRATION_ID, RECORD_BYTES, b"TOPSECRET", 10, 7, 6, 5)
    pending = s.Record(4, REGISTRATION_ID, RECORD_BYTES, b"TOPSECRET", 10, 0, 0, 6)
    values: list[object] = [
        record,
        s.AccountSlot(b"a", 4, record, pending),
        s.InstallRecord(b"a", 0, REGISTRATION_ID, RECORD_BYTES, b"TOPSECRET", 10, 0),
        s.ExposeRecord(b"a", REGISTRATION_ID, 0),
        s.CommandBatch(
            1,
            (
                s.ExposeRecord(b"a", REGISTRATION_ID, 0),
                s.InstallRecord(b"a", 0, REGISTRATION_ID, RECORD_BYTES, b"TOPSECRET", 10, 0),
            ),
        ),
        m.RegisterFinish(REGISTRATION_ID, RECORD_BYTES, b"TOPSECRET"),
        m.RegisterExpose(REGISTRATION_ID),
        m.RegisterStartOk(bytes(64), REGISTRATION_ID),
        m.RecoverStartOk(SESSION_ID, SEALED * 8),
        m.RecoverFinish(SESSION_ID, SEALED + bytes(24)),
        m.RecoverAbort(SESSION_ID),
        m.KeyReleased(1, 0, SEALED),
        m.HsmRequest("f", m.RequestKind.STATUS, b"a", SEALED),
        m.HsmResponse(SEALED),
    ]
    for value in values:
        assert _leaks(repr(value)) == [], type(value).__name__
    # The check itself can fail: a plain bytes repr shows each (the masking key is in the record).
    assert len(_leaks(repr((RECORD_BYTES, REGISTRATION_ID, SESSION_ID, SEALED)))) == 5


def test_a_record_forgives_only_started_attempts_and_counts_at_most_its_limit() -> None:
    record = s.Record(1, REGISTRATION_ID, RECORD_BYTES, b"s", 10, 14, 4, 0)
    assert (record.attempts_used, record.attempts_left) == (10, 0)
    with pytest.raises(ValueError, match="never started"):
        s.Record(1, REGISTRATION_ID, RECORD_BYTES, b"s", 10, 3, 4, 0)
    with pytest.raises(ValueError, match="over the guess limit"):
        s.Record(1, REGISTRATION_ID, RECORD_BYTES, b"s", 10, 14, 3, 0)
    # Sealed bytes that say so do not decode either: forgiven_through is the
    # second-to-last u64 of a record.
    raw = bytearray(encode(s.Record(1, REGISTRATION_ID, RECORD_BYTES, b"s", 10, 3, 3, 0)))
    raw[-16:-8] = (4).to_bytes(8, "big")
    with pytest.raises(CodecError, match="never started"):
        decode(s.Record, bytes(raw))
    with pytest.raises(ValueError, match="answered no check"):  # a pending record counts nothing
        s.AccountSlot(b"a", 2, None, s.Record(2, REGISTRATION_ID, RECORD_BYTES, b"s", 10, 1, 1))
