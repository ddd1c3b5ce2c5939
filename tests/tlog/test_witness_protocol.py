"""bkv.tlog.witness_protocol: add-checkpoint, every HTTP status, no state change on error."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import (
    AddCheckpointError,
    CheckpointConsistencyError,
    CheckpointSignatureRejectedError,
    CheckpointSizeConflictError,
    MalformedAddCheckpointError,
    NoteError,
    UnknownLogOriginError,
)
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint
from bkv.tlog.cosignature import CosignatureSigner, CosignerPolicy
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.merkle import EMPTY_ROOT
from bkv.tlog.note import Ed25519Signer, NoteSignature, SoftwareEd25519Key, open_note
from bkv.tlog.witness_protocol import (
    AddCheckpointRequest,
    LogState,
    MemoryWitness,
    add_checkpoint,
    format_add_checkpoint,
    parse_add_checkpoint,
    parse_add_checkpoint_response,
)

ORIGIN = "bkv.example/log"
NOW_MS = 1_700_000_000_123
LOG_KEY = Ed25519Signer(ORIGIN, SoftwareEd25519Key(b"\x01" * 32))
WITNESS_KEY = CosignatureSigner("witness.example/w1", SoftwareEd25519Key(b"\x02" * 32))


class Fixture:
    def __init__(self) -> None:
        self.log = MerkleLog(MemoryHashStore())
        self.witness = MemoryWitness({ORIGIN: [LOG_KEY.verifier()]}, [WITNESS_KEY])

    def grow(self, n: int) -> None:
        self.log.append_many([b"entry %d" % (self.log.size + i) for i in range(n)])

    def checkpoint(self, size: int | None = None, signer: Ed25519Signer = LOG_KEY) -> bytes:
        size = self.log.size if size is None else size
        return Checkpoint(ORIGIN, size, self.log.root(size)).sign([signer])

    def body(self, old: int, new: int | None = None) -> bytes:
        new = self.log.size if new is None else new
        proof = self.log.consistency_proof(old, new) if old else []
        return format_add_checkpoint(old, proof, self.checkpoint(new))


def test_first_checkpoint_then_consistent_growth() -> None:
    f = Fixture()
    f.grow(5)
    result = f.witness.handle(f.body(0), NOW_MS)
    assert result.state.size == 5
    assert result.body.startswith("— witness.example/w1 ".encode())
    # The response lines, appended to the checkpoint, satisfy a client policy.
    cosigned = f.checkpoint() + result.body
    cp = open_checkpoint(cosigned, ORIGIN, [LOG_KEY.verifier()])
    verified = CosignerPolicy(1, [WITNESS_KEY.verifier()]).verify_checkpoint(cp)
    assert verified[0].timestamp == NOW_MS // 1000
    assert parse_add_checkpoint_response(result.body) == list(result.cosignatures)
    f.grow(300)
    result = f.witness.handle(f.body(5), NOW_MS + 1000)
    assert result.state.size == 305
    latest = f.witness.latest(ORIGIN)
    assert latest is not None and latest.root_hash == f.log.root()
    # Monitor retrieval: the stored note carries the log's and the witness's signatures.
    note = open_note(latest.checkpoint, [LOG_KEY.verifier(), WITNESS_KEY.verifier()])
    assert len(note.signatures) == 2


def test_same_size_same_root_is_accepted_again() -> None:
    f = Fixture()
    f.grow(3)
    f.witness.handle(f.body(0), NOW_MS)
    assert f.witness.handle(f.body(3), NOW_MS).state.size == 3


def _refused(
    f: Fixture, body: bytes, error: type[AddCheckpointError], status: int
) -> AddCheckpointError:
    before = {ORIGIN: f.witness.latest(ORIGIN)}
    with pytest.raises(error) as info:
        f.witness.handle(body, NOW_MS)
    assert info.value.http_status == status
    assert {ORIGIN: f.witness.latest(ORIGIN)} == before
    return info.value


def test_409_conflict_reports_current_size() -> None:
    f = Fixture()
    f.grow(4)
    f.witness.handle(f.body(0), NOW_MS)
    f.grow(4)
    err = _refused(f, f.body(0), CheckpointSizeConflictError, 409)
    assert isinstance(err, CheckpointSizeConflictError) and err.current_size == 4
    err = _refused(f, f.body(2), CheckpointSizeConflictError, 409)
    assert isinstance(err, CheckpointSizeConflictError) and err.current_size == 4
    fresh = Fixture()
    fresh.grow(4)
    err = _refused(fresh, fresh.body(2), CheckpointSizeConflictError, 409)
    assert isinstance(err, CheckpointSizeConflictError) and err.current_size == 0


def test_403_unknown_key_or_bad_signature() -> None:
    f = Fixture()
    f.grow(2)
    other = Ed25519Signer(ORIGIN, SoftwareEd25519Key(b"\x09" * 32))
    _refused(
        f,
        format_add_checkpoint(0, [], f.checkpoint(signer=other)),
        CheckpointSignatureRejectedError,
        403,
    )
    good = f.checkpoint()
    sig_line = good.split(b"\n\n", 1)[1]
    forged = f.checkpoint(1).split(b"\n\n", 1)[0] + b"\n\n" + sig_line
    _refused(f, format_add_checkpoint(0, [], forged), CheckpointSignatureRejectedError, 403)


def test_404_unknown_origin() -> None:
    f = Fixture()
    f.grow(2)
    data = Checkpoint("other.example/log", 2, f.log.root()).sign([LOG_KEY])
    _refused(f, format_add_checkpoint(0, [], data), UnknownLogOriginError, 404)


def test_422_bad_proofs_and_roots() -> None:
    f = Fixture()
    f.grow(6)
    f.witness.handle(f.body(0), NOW_MS)
    f.grow(6)
    proof = f.log.consistency_proof(6, 12)
    bad = [bytes(32), *proof[1:]]
    _refused(f, format_add_checkpoint(6, bad, f.checkpoint()), CheckpointConsistencyError, 422)
    _refused(
        f, format_add_checkpoint(6, proof[:-1], f.checkpoint()), CheckpointConsistencyError, 422
    )
    _refused(f, format_add_checkpoint(6, [], f.checkpoint()), CheckpointConsistencyError, 422)
    _refused(
        f, format_add_checkpoint(6, proof[:1], f.checkpoint(6)), CheckpointConsistencyError, 422
    )


def test_409_same_size_different_root_is_a_fork() -> None:
    # tlog-witness: same size as the latest cosigned checkpoint but another root
    # is a 409 Conflict (not a 422), with the current size in the body.
    f = Fixture()
    f.grow(6)
    f.witness.handle(f.body(0), NOW_MS)
    fork = Checkpoint(ORIGIN, 6, f.log.root(5)).sign([LOG_KEY])
    err = _refused(f, format_add_checkpoint(6, [], fork), CheckpointSizeConflictError, 409)
    assert isinstance(err, CheckpointSizeConflictError) and err.current_size == 6
    # The same checkpoint again is fine (idempotent re-cosigning).
    assert f.witness.handle(f.body(6), NOW_MS).state.size == 6


def test_422_proof_from_zero_and_empty_root() -> None:
    f = Fixture()
    f.grow(3)
    _refused(
        f, format_add_checkpoint(0, [bytes(32)], f.checkpoint()), CheckpointConsistencyError, 422
    )
    bad_empty = Checkpoint(ORIGIN, 0, f.log.root()).sign([LOG_KEY])
    _refused(f, format_add_checkpoint(0, [], bad_empty), CheckpointConsistencyError, 422)
    good_empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT).sign([LOG_KEY])
    assert f.witness.handle(format_add_checkpoint(0, [], good_empty), NOW_MS).state.size == 0


def test_400_old_size_larger_than_checkpoint() -> None:
    f = Fixture()
    f.grow(3)
    f.witness.handle(f.body(0), NOW_MS)
    _refused(f, format_add_checkpoint(4, [], f.checkpoint()), MalformedAddCheckpointError, 400)


HASH_LINE = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "head",
    [
        "",
        "old\n",
        "old 01\n",
        "old -1\n",
        "old  1\n",
        "Old 1\n",
        "old 1 \n",
        "old 99999999999999999999\n",
        f"old 1\n{HASH_LINE[:-1]}\n",
        f"old 1\n{base64.b64encode(bytes(31)).decode()}\n",
        f"old 1\n{HASH_LINE}x\n",
        f"old 1\n{HASH_LINE}\r\n",
        "old 1\n" + f"{HASH_LINE}\n" * 64,
        "old 1\u00e9\n",
    ],
)
def test_400_malformed_heads(head: str) -> None:
    f = Fixture()
    f.grow(1)
    _refused(f, head.encode() + b"\n" + f.checkpoint(), MalformedAddCheckpointError, 400)


def test_400_malformed_bodies() -> None:
    f = Fixture()
    f.grow(1)
    for body in [
        b"",
        b"old 0\n",
        b"old 0\n\n",
        b"old 0\n\nnot a note\n",
        b"old 0\n\n" + f.checkpoint().replace(b"\n1\n", b"\n01\n"),
        b"old 0\n\n" + b"x" * 70000,
    ]:
        _refused(f, body, MalformedAddCheckpointError, 400)


def test_request_round_trip() -> None:
    f = Fixture()
    f.grow(9)
    f.witness.handle(f.body(0, 4), NOW_MS)
    body = f.body(4)
    request = parse_add_checkpoint(body)
    assert request.old_size == 4 and len(request.proof) == len(f.log.consistency_proof(4))
    assert request.to_bytes() == body


def test_pure_function_needs_cosigner_and_time() -> None:
    f = Fixture()
    f.grow(1)
    request = parse_add_checkpoint(f.body(0))
    logs = {ORIGIN: [LOG_KEY.verifier()]}
    with pytest.raises(ValueError):
        add_checkpoint(request, logs, None, [], NOW_MS)
    with pytest.raises(ValueError):
        add_checkpoint(request, logs, None, [WITNESS_KEY], 999)
    with pytest.raises(ValueError):
        format_add_checkpoint(-1, [], b"")
    with pytest.raises(ValueError):
        LogState(1, b"short", b"")
    with pytest.raises(TypeError):
        parse_add_checkpoint("str")  # type: ignore[arg-type]
    state = LogState(1, f.log.root(1), b"")
    assert add_checkpoint(
        AddCheckpointRequest(1, (), request.checkpoint), logs, state, [WITNESS_KEY], NOW_MS
    )


def test_response_parsing_rejects_junk() -> None:
    for body in [b"", b"not a line\n", "— w.example AAAA\n".encode(), b"x" * 70000]:
        with pytest.raises(NoteError):
            parse_add_checkpoint_response(body)
    line = NoteSignature("w.example", 1, b"sig").line().encode()
    assert parse_add_checkpoint_response(line)[0].name == "w.example"


@given(st.binary(max_size=300))
def test_random_bodies_raise_only_typed_errors(body: bytes) -> None:
    f = Fixture()
    with pytest.raises(AddCheckpointError):
        f.witness.handle(body, NOW_MS)
    assert f.witness.latest(ORIGIN) is None
