"""C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): the signed tree head.

A checkpoint is the text of a signed note (:mod:`bkv.tlog.note`)::

    <origin>\\n
    <tree size, ASCII decimal, no leading zeros>\\n
    <root hash, standard base64 of 32 bytes>\\n
    [<extension line>\\n ...]

Parsing is strict (:class:`bkv.errors.CheckpointError`): the origin is
non-empty and at most :data:`MAX_ORIGIN_SIZE` bytes, the size is canonical
decimal below 2**63, the hash is canonical base64 of exactly 32 bytes,
extension lines are non-empty and at most :data:`MAX_EXTENSION_LINES`.
:func:`open_checkpoint` opens the note with the log's verifiers (so
signatures from unknown keys, e.g. cosignatures, are ignored but kept) and
checks the origin (and that a size-0 checkpoint has the empty-tree root).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bkv.errors import CheckpointError, NoteError
from bkv.tlog.merkle import EMPTY_ROOT, HASH_SIZE, MAX_TREE_SIZE
from bkv.tlog.note import (
    Note,
    NoteSigner,
    NoteVerifier,
    b64decode_canonical,
    b64encode,
    open_note,
    sign_note,
)

MAX_ORIGIN_SIZE = 256
"""Longest origin line accepted, in UTF-8 bytes."""

MAX_EXTENSION_LINES = 16
"""Most extension lines accepted after the root hash."""

MAX_SIZE_DIGITS = 19
"""2**63 - 1 has 19 decimal digits."""

_CONTROL = re.compile(r"[\x00-\x1f]")  # one search, not a Python loop per character


def parse_decimal(value: str, what: str, error: type[Exception] = CheckpointError) -> int:
    """Parse a canonical ASCII decimal (no sign, no leading zeros, < 2**63); raise ``error``."""
    if not value or len(value) > MAX_SIZE_DIGITS or not all("0" <= c <= "9" for c in value):
        raise error(f"{what} is not an ASCII decimal")
    if value != "0" and value.startswith("0"):
        raise error(f"{what} has leading zeros")
    number = int(value)
    if number > MAX_TREE_SIZE:
        raise error(f"{what} is too large")
    return number


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint body; ``note`` is the verified note it came in (set by open_checkpoint).

    Equality compares the body only (origin, size, root hash, extensions).
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()
    note: Note | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise ValueError("tree size out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise ValueError("root hash is 32 bytes")
        if len(self.extensions) > MAX_EXTENSION_LINES:
            raise ValueError("too many extension lines")
        for line in self.extensions:
            if not line or "\n" in line or any(ord(c) < 0x20 for c in line):
                raise ValueError("extension lines are non-empty single lines")

    def text(self) -> str:
        """The note text of this checkpoint (ends with a newline)."""
        lines = [self.origin, str(self.size), b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    def sign(self, signers: Sequence[NoteSigner]) -> bytes:
        """Return the signed note bytes."""
        return sign_note(self.text(), signers)


def _check_origin(origin: str) -> None:
    if not origin or len(origin.encode()) > MAX_ORIGIN_SIZE:
        raise CheckpointError("origin is empty or too long")
    if _CONTROL.search(origin) is not None:
        raise CheckpointError("origin contains a control character")


def parse_checkpoint(text: str, note: Note | None = None) -> Checkpoint:
    """Parse checkpoint note text (not the signed note) strictly; CheckpointError.

    ``note`` is the verified note the text came in, kept in the result.
    """
    if not isinstance(text, str):
        raise TypeError("checkpoint text is str")
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint has fewer than three lines")
    if len(lines) > 3 + MAX_EXTENSION_LINES:
        raise CheckpointError("checkpoint has too many extension lines")
    origin, size_line, hash_line, *extensions = lines
    _check_origin(origin)
    size = parse_decimal(size_line, "tree size")
    try:
        root = b64decode_canonical(hash_line, "root hash")
    except NoteError as exc:
        raise CheckpointError(str(exc)) from None
    if len(root) != HASH_SIZE:
        raise CheckpointError("root hash is not 32 bytes")
    for line in extensions:
        if not line:
            raise CheckpointError("empty extension line")
        if any(ord(c) < 0x20 for c in line):
            raise CheckpointError("extension line contains a control character")
    return Checkpoint(origin, size, root, tuple(extensions), note)


def open_checkpoint(data: bytes, origin: str, verifiers: Sequence[NoteVerifier]) -> Checkpoint:
    """Verify a signed checkpoint from the log ``origin`` (NoteError / CheckpointError).

    ``verifiers`` are the log's keys; at least one must have signed. Signatures
    by other keys (cosigners) are ignored here and kept in ``note.unverified``
    of the returned checkpoint; check them with
    :class:`bkv.tlog.cosignature.CosignerPolicy`.
    """
    note = open_note(data, verifiers)
    checkpoint = parse_checkpoint(note.text, note)
    if checkpoint.origin != origin:
        raise CheckpointError("checkpoint is for another origin")
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise CheckpointError("an empty tree must have the empty root hash")
    return checkpoint
