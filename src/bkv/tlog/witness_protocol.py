"""C2SP tlog-witness ``add-checkpoint`` (https://c2sp.org/tlog-witness), sans-IO.

Request body (every line ends in ``\\n``)::

    old <N>                      decimal, no leading zeros
    <base64 hash>                0 to 63 consistency proof lines
                                 an empty line
    <signed checkpoint note>

Success: the body is one or more cosignature/v1 signature lines.

Every refusal is an :class:`bkv.errors.AddCheckpointError` subclass whose
``http_status`` is the status the spec requires:

- 400 :class:`~bkv.errors.MalformedAddCheckpointError`: body or checkpoint
  malformed, or the old size is larger than the checkpoint size;
- 403 :class:`~bkv.errors.CheckpointSignatureRejectedError`: no trusted log
  key signed, or a trusted key's signature does not verify;
- 404 :class:`~bkv.errors.UnknownLogOriginError`: the origin is not configured;
- 409 :class:`~bkv.errors.CheckpointSizeConflictError`: the old size is not the
  latest cosigned size; answer ``f"{exc.current_size}\\n"`` with
  ``Content-Type: text/x.tlog.size`` (:data:`SIZE_CONTENT_TYPE`);
- 422 :class:`~bkv.errors.CheckpointConsistencyError`: the proof does not
  verify, a non-empty proof from size 0, the same size with another root, or
  a size-0 checkpoint without the empty-tree root.

:func:`add_checkpoint` is a pure function of (request, configured logs, latest
state for the origin, cosigners, time) -> (new state, response body). The HTTP
adapter must make "read latest, call, persist new state if latest unchanged"
atomic (spec: the race that would roll back leaves) and persist before
answering. :class:`MemoryWitness` does that for a single-threaded in-memory
witness (tests, and the reference for the adapter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bkv.errors import (
    CheckpointConsistencyError,
    CheckpointError,
    CheckpointSignatureRejectedError,
    CheckpointSizeConflictError,
    ConsistencyProofError,
    MalformedAddCheckpointError,
    NoteError,
    UnknownLogOriginError,
)
from bkv.tlog.checkpoint import Checkpoint, parse_checkpoint, parse_decimal
from bkv.tlog.cosignature import CosignatureSigner
from bkv.tlog.merkle import EMPTY_ROOT, HASH_SIZE, MAX_PROOF_HASHES, verify_consistency
from bkv.tlog.note import (
    MAX_NOTE_SIZE,
    NoteSignature,
    NoteVerifier,
    b64decode_canonical,
    b64encode,
    open_note,
    parse_note,
)

MAX_PROOF_LINES = MAX_PROOF_HASHES
"""tlog-witness: a client MUST NOT send more than 63 consistency proof lines."""

MAX_REQUEST_SIZE = 32 + MAX_PROOF_LINES * 45 + 1 + MAX_NOTE_SIZE
"""Largest add-checkpoint body accepted (old line, 63 proof lines, blank, note)."""

MAX_RESPONSE_SIZE = 64 * 1024
"""Largest add-checkpoint response a log accepts from a witness."""

SIZE_CONTENT_TYPE = "text/x.tlog.size"
"""Content-Type of the 409 response body."""


@dataclass(frozen=True)
class AddCheckpointRequest:
    """A parsed add-checkpoint body."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def to_bytes(self) -> bytes:
        """Serialize (the log side of the protocol)."""
        return format_add_checkpoint(self.old_size, self.proof, self.checkpoint)


@dataclass(frozen=True)
class LogState:
    """What a witness keeps per origin: the latest cosigned size, root and note."""

    size: int
    root_hash: bytes
    checkpoint: bytes

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.root_hash) != HASH_SIZE:
            raise ValueError("bad log state")


@dataclass(frozen=True)
class AddCheckpointResult:
    """A successful add-checkpoint: state to persist, body to send (200)."""

    state: LogState
    cosignatures: tuple[NoteSignature, ...]

    @property
    def body(self) -> bytes:
        return "".join(sig.line() for sig in self.cosignatures).encode()


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], checkpoint: bytes) -> bytes:
    """Build an add-checkpoint body."""
    if old_size < 0 or len(proof) > MAX_PROOF_LINES or any(len(h) != HASH_SIZE for h in proof):
        raise ValueError("bad old size or proof")
    head = f"old {old_size}\n" + "".join(b64encode(h) + "\n" for h in proof) + "\n"
    return head.encode() + checkpoint


def parse_add_checkpoint(body: bytes) -> AddCheckpointRequest:
    """Parse an add-checkpoint body strictly (MalformedAddCheckpointError)."""
    if not isinstance(body, bytes):
        raise TypeError("body is bytes")
    if not body or len(body) > MAX_REQUEST_SIZE:
        raise MalformedAddCheckpointError("request body is empty or too large")
    split = body.find(b"\n\n")
    if split < 0:
        raise MalformedAddCheckpointError("request has no empty line before the checkpoint")
    try:
        head = body[:split].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedAddCheckpointError("request header is not ASCII") from None
    lines = head.split("\n")
    if len(lines) > 1 + MAX_PROOF_LINES:
        raise MalformedAddCheckpointError("more than 63 consistency proof lines")
    if not lines[0].startswith("old "):
        raise MalformedAddCheckpointError("first line is not 'old <size>'")
    old_size = parse_decimal(lines[0][4:], "old size", MalformedAddCheckpointError)
    proof = []
    for line in lines[1:]:
        try:
            h = b64decode_canonical(line, "proof hash")
        except NoteError as exc:
            raise MalformedAddCheckpointError(str(exc)) from None
        if len(h) != HASH_SIZE:
            raise MalformedAddCheckpointError("proof hash is not 32 bytes")
        proof.append(h)
    checkpoint = body[split + 2 :]
    if not checkpoint:
        raise MalformedAddCheckpointError("request has no checkpoint")
    return AddCheckpointRequest(old_size, tuple(proof), checkpoint)


def _parse_checkpoint_note(data: bytes) -> Checkpoint:
    try:
        text, _ = parse_note(data)
        return parse_checkpoint(text)
    except (NoteError, CheckpointError) as exc:
        raise MalformedAddCheckpointError(f"malformed checkpoint: {exc}") from None


def add_checkpoint(
    request: AddCheckpointRequest,
    logs: Mapping[str, Sequence[NoteVerifier]],
    latest: LogState | None,
    cosigners: Sequence[CosignatureSigner],
    now_ms: int,
) -> AddCheckpointResult:
    """Run the add-checkpoint checks of tlog-witness, in the spec's order; cosign on success.

    ``logs`` maps each known origin to its trusted keys; ``latest`` is the state
    stored for the request's origin (``None`` if never cosigned). ``now_ms`` is
    the current time in milliseconds; cosignatures carry it in seconds.
    """
    if not cosigners:
        raise ValueError("a witness needs at least one cosigner key")
    timestamp = now_ms // 1000
    if timestamp <= 0:
        raise ValueError("the cosignature timestamp must not be zero")
    checkpoint = _parse_checkpoint_note(request.checkpoint)
    verifiers = logs.get(checkpoint.origin)
    if verifiers is None:
        raise UnknownLogOriginError("unknown log origin")
    try:
        open_note(request.checkpoint, verifiers)
    except NoteError as exc:
        raise CheckpointSignatureRejectedError(str(exc)) from None
    if request.old_size > checkpoint.size:
        raise MalformedAddCheckpointError("old size is larger than the checkpoint size")
    current = latest.size if latest is not None else 0
    if request.old_size != current:
        raise CheckpointSizeConflictError(current)
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise CheckpointConsistencyError("size-0 checkpoint without the empty-tree root")
    # tlog-witness: "If the old size matches the checkpoint size, the witness
    # MUST check that the root hashes are also identical. If they don't match,
    # the witness MUST respond with a 409 Conflict": a same-size fork.
    if (
        latest is not None
        and checkpoint.size == latest.size
        and (checkpoint.root_hash != latest.root_hash)
    ):
        raise CheckpointSizeConflictError(current)
    _check_consistency(request, checkpoint, latest)
    sigs = tuple(signer.cosign(checkpoint, timestamp) for signer in cosigners)
    stored = request.checkpoint + "".join(sig.line() for sig in sigs).encode()
    return AddCheckpointResult(LogState(checkpoint.size, checkpoint.root_hash, stored), sigs)


def _check_consistency(
    request: AddCheckpointRequest, checkpoint: Checkpoint, latest: LogState | None
) -> None:
    if request.old_size == 0:
        # The empty tree is consistent with every tree: the proof must be empty.
        if request.proof:
            raise CheckpointConsistencyError("old size 0 needs an empty proof")
        return
    if latest is None:
        raise AssertionError("old size > 0 implies a stored state")
    try:
        verify_consistency(
            request.old_size, checkpoint.size, request.proof, latest.root_hash, checkpoint.root_hash
        )
    except ConsistencyProofError as exc:
        raise CheckpointConsistencyError(str(exc)) from None


def parse_add_checkpoint_response(body: bytes) -> list[NoteSignature]:
    """Parse a 200 response (signature lines) strictly (NoteError); the log side."""
    if not body or len(body) > MAX_RESPONSE_SIZE:
        raise NoteError("response is empty or too large")
    # Reuse the note parser: a dummy text plus these lines is a note.
    _, sigs = parse_note(b"x\n\n" + body)
    return sigs


class MemoryWitness:
    """A single-threaded in-memory witness around :func:`add_checkpoint`."""

    def __init__(
        self,
        logs: Mapping[str, Sequence[NoteVerifier]],
        cosigners: Sequence[CosignatureSigner],
    ) -> None:
        self._logs = dict(logs)
        self._cosigners = list(cosigners)
        self._states: dict[str, LogState] = {}

    def latest(self, origin: str) -> LogState | None:
        """The latest cosigned state for ``origin``."""
        return self._states.get(origin)

    def handle(self, body: bytes, now_ms: int) -> AddCheckpointResult:
        """Process one add-checkpoint body; state changes only on success."""
        request = parse_add_checkpoint(body)
        origin = _parse_checkpoint_note(request.checkpoint).origin
        result = add_checkpoint(
            request, self._logs, self._states.get(origin), self._cosigners, now_ms
        )
        self._states[origin] = result.state
        return result
