"""The read proof of the record tree and its canonical encoding.

A proof for a key is what the host read on that key's path at one version of
the tree: the interior nodes from the root down, whole, and the leaf's value
when the path ends at the key's own leaf. The HSM checks it with
:func:`bkv.records.tree.verify_read` (membership or non-membership).

Encoding (all integers big-endian)::

    FORMAT_VERSION (u8) || Kind.PROOF (u8) || tree version (u64) || key (32)
    || node count (u16, 1..MAX_PROOF_NODES) || root body || inner bodies
    || has value (u8, 0 or 1) || value (32, only if has value)

where the bodies are those of :mod:`bkv.records.nodes` (the kinds follow from
the position: the first node is the root, the others are inner nodes).
Decoding is strict: ``encode_proof(decode_proof(b)) == b`` whenever ``b``
decodes, and bad bytes raise only :class:`bkv.errors.CodecError` subclasses.

Size: a node on the path costs 2 x (2 + path bytes + 32); with random keys the
paths are 1 bit long except the last, so a proof in a tree of n records is
about 70 x (log2(n) + 1) + 120 bytes (~1.5 KiB at 1M records, ~2.3 KiB at 1G).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bkv.errors import InvalidValueError, NonCanonicalError, UnknownTagError
from bkv.records.nodes import (
    FORMAT_VERSION,
    HASH_SIZE,
    KEY_BITS,
    KEY_SIZE,
    MAX_INTERIOR_BODY_SIZE,
    Interior,
    Kind,
    Reader,
    check_hash,
    check_input,
    check_key,
    encode_interior_body,
    read_header,
    read_interior_body,
)

MAX_TREE_VERSION = (1 << 63) - 1
"""Largest tree version (an SQLite INTEGER holds it)."""

MAX_PROOF_NODES = KEY_BITS
"""Interior nodes on one path: the root at depth 0 and inner nodes at depths 1..255."""

_PROOF_HEADER_SIZE = 2 + 8 + KEY_SIZE + 2
MAX_PROOF_SIZE = _PROOF_HEADER_SIZE + MAX_PROOF_NODES * MAX_INTERIOR_BODY_SIZE + 1 + HASH_SIZE
"""Largest encoded proof (a degenerate 256-deep path); longer input is refused unread."""


@dataclass(frozen=True, slots=True)
class Proof:
    """The path of ``key`` in the tree at ``version``: interior nodes, root first."""

    version: int
    key: bytes
    nodes: tuple[Interior, ...]
    value: bytes | None
    """The value of the key's leaf, when the path ends there (membership)."""
    bodies: tuple[bytes, ...] | None = field(default=None, compare=False, repr=False)
    """The nodes' exact body encodings as :func:`decode_proof` read them (None when the
    proof was built in memory): hashing them spares re-encoding every node, and strict
    decoding guarantees ``bodies[i] == encode_interior_body(nodes[i])``."""

    def __post_init__(self) -> None:
        if self.bodies is not None and len(self.bodies) != len(self.nodes):
            raise ValueError("a proof has one body per node")
        if not 0 <= self.version <= MAX_TREE_VERSION:
            raise ValueError(f"tree version is 0..{MAX_TREE_VERSION}")
        check_key(self.key)
        if not 1 <= len(self.nodes) <= MAX_PROOF_NODES:
            raise ValueError(f"a proof has 1..{MAX_PROOF_NODES} nodes")
        if not self.nodes[0].is_root or any(n.is_root for n in self.nodes[1:]):
            raise ValueError("a proof starts at the root and holds no other root")
        if self.value is not None:
            check_hash(self.value, "leaf value")


def encode_proof(proof: Proof) -> bytes:
    """The canonical encoding of a proof."""
    parts = [
        bytes((FORMAT_VERSION, Kind.PROOF)),
        proof.version.to_bytes(8, "big"),
        proof.key,
        len(proof.nodes).to_bytes(2, "big"),
        *(encode_interior_body(node) for node in proof.nodes),
    ]
    parts.append(b"\x00" if proof.value is None else b"\x01" + proof.value)
    return b"".join(parts)


def _read_version(reader: Reader) -> int:
    version = reader.uint(8)
    if version > MAX_TREE_VERSION:
        raise InvalidValueError(f"tree version {version} is more than {MAX_TREE_VERSION}")
    return version


def _read_node_count(reader: Reader) -> int:
    count = reader.uint(2)
    if not 1 <= count <= MAX_PROOF_NODES:
        raise InvalidValueError(f"a proof has 1..{MAX_PROOF_NODES} nodes, not {count}")
    return count


def _read_value(reader: Reader) -> bytes | None:
    flag = reader.uint(1)
    if flag > 1:
        raise NonCanonicalError(f"presence byte {flag} is not 0 or 1")
    return reader.take(HASH_SIZE) if flag else None


def decode_proof(data: bytes) -> Proof:
    """Strictly decode a proof (the bytes come from the untrusted host)."""
    check_input(data, MAX_PROOF_SIZE, "a record tree proof")
    reader = Reader(data)
    kind = read_header(reader)
    if kind != Kind.PROOF:
        raise UnknownTagError(f"kind {kind} is not a record tree proof")
    version = _read_version(reader)
    key = reader.take(KEY_SIZE)
    count = _read_node_count(reader)
    nodes, bodies = [], []
    for index in range(count):
        start = reader.position
        nodes.append(read_interior_body(reader, is_root=index == 0))
        bodies.append(data[start : reader.position])
    value = _read_value(reader)
    reader.finish()
    return Proof(version, key, tuple(nodes), value, tuple(bodies))
