"""Nodes of the record tree: the data model, the hashes and the canonical node encoding.

The tree
--------
A binary Merkle radix (Patricia) tree over 256-bit keys (the 32-byte record
ids; bit 0 is the most significant bit of byte 0), after the Juicebox
Merkle-radix tree (docs/architecture.md, "Record storage (next)"):

- the *root* is always an interior node at depth 0; its left branch (keys
  whose first bit is 0) and its right branch (first bit 1) may be empty;
- every other interior node, an *inner* node, has both branches;
- a *branch* holds the key bits from its node down to its child (1 to 256 bits;
  a left branch starts with bit 0, a right branch with bit 1) and the child's hash;
- a *leaf* sits at depth 256 and holds the record id and its *value*, the
  hash of the record's sealed blob (:func:`record_hash`).

The shape depends only on the set of keys (so any order of changes, and a full
rebuild, give the same root), a path has about log2(n) interior nodes rather
than 256, and a position ``(depth, key prefix)`` holds at most one node.

Hashes
------
``SHA-256(HASH_LABEL || FORMAT_VERSION || kind || tree_id || body)``, with one
``kind`` byte each for records, leaves, inner nodes and roots: a hash of one
kind is never a hash of another kind, of another tree (``tree_id``), or of
another bkv structure (the label starts with ASCII, unlike the 0x00/0x01
prefixes of the audit log's RFC 9162 hashes).

- record: ``body = key || sealed blob``;
- leaf: ``body = key || value``;
- inner, root: ``body = branch(left) || branch(right)``, where a branch is
  ``u16 bit length || the path bits, first bit as the MSB, zero-padded to whole
  bytes || child hash`` and an empty branch (root only) is ``u16 0``.

Node encoding
-------------
``FORMAT_VERSION (u8) || kind (u8) || body``: the hash input without the label
and the tree id. Decoding is strict: every node has exactly one encoding,
``encode_node(decode_node(b)) == b`` whenever ``b`` decodes, and bad bytes
raise only :class:`bkv.errors.CodecError` subclasses.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from bkv.errors import (
    InvalidValueError,
    NonCanonicalError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)

KEY_SIZE = 32
"""Bytes in a key (a record id)."""

KEY_BITS = 8 * KEY_SIZE
"""Depth of every leaf."""

HASH_SIZE = 32
"""SHA-256."""

TREE_ID_SIZE = 32
"""Bytes of the tree identity mixed into every hash (e.g. a hash of the fleet and realm id)."""

FORMAT_VERSION = 1
"""First byte of every encoding and hash input; bump it when any layout changes."""

HASH_LABEL = b"bkv/records/tree"
"""Domain label that starts every hash input of the record tree."""

MAX_RECORD_SIZE = 1 << 16
"""Largest sealed record blob (a sealed OPAQUE record is well under 2 KiB)."""

MAX_BRANCH_SIZE = 2 + KEY_SIZE + HASH_SIZE
"""u16 length, up to 256 path bits, child hash."""

MAX_INTERIOR_BODY_SIZE = 2 * MAX_BRANCH_SIZE
LEAF_BODY_SIZE = KEY_SIZE + HASH_SIZE
MAX_NODE_SIZE = 2 + MAX_INTERIOR_BODY_SIZE
"""Largest encoded node; longer input is refused before parsing."""


class Kind(enum.IntEnum):
    """The kind byte after the version byte (hash inputs and encodings)."""

    RECORD = 1
    LEAF = 2
    INNER = 3
    ROOT = 4
    PROOF = 5
    """Encodings only: a proof is never hashed."""


_HASH_PREFIX = {kind: HASH_LABEL + bytes((FORMAT_VERSION, kind)) for kind in Kind}
_LEAF_HEADER = bytes((FORMAT_VERSION, Kind.LEAF))


@dataclass(frozen=True, slots=True)
class Branch:
    """An edge: ``length`` key bits (``path``, first bit as the MSB) down to a child."""

    length: int
    path: int
    child: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.length <= KEY_BITS:
            raise ValueError(f"branch length {self.length} is not in 1..{KEY_BITS}")
        if not 0 <= self.path < 1 << self.length:
            raise ValueError("branch path does not fit its length")
        check_hash(self.child, "child hash")

    @property
    def first_bit(self) -> int:
        return self.path >> (self.length - 1)


@dataclass(frozen=True, slots=True)
class Interior:
    """The root (``is_root``; branches may be empty) or an inner node (two branches)."""

    left: Branch | None
    right: Branch | None
    is_root: bool = False

    def __post_init__(self) -> None:
        if self.left is not None and self.left.first_bit != 0:
            raise ValueError("a left branch starts with bit 0")
        if self.right is not None and self.right.first_bit != 1:
            raise ValueError("a right branch starts with bit 1")
        if not self.is_root and (self.left is None or self.right is None):
            raise ValueError("an inner node has two branches")

    @property
    def kind(self) -> Kind:
        return Kind.ROOT if self.is_root else Kind.INNER

    def branch(self, bit: int) -> Branch | None:
        """The branch a key whose next bit is ``bit`` takes."""
        return self.right if bit else self.left


@dataclass(frozen=True, slots=True)
class Leaf:
    """A record: its id and the hash of its sealed blob."""

    key: bytes
    value: bytes

    def __post_init__(self) -> None:
        check_key(self.key)
        check_hash(self.value, "leaf value")


Node = Interior | Leaf

EMPTY_ROOT = Interior(None, None, is_root=True)
"""The root of a tree without records."""


class NodeId(NamedTuple):
    """Where the host stores a node: its position (depth, key prefix) and its hash.

    ``prefix`` is the first ``depth`` key bits as an integer (0 at the root, the
    whole key at a leaf). Position first lets the host read a whole path in one
    query (every position on a key's path is known before any node is read);
    the hash lets an old and a new node at one position coexist.
    """

    depth: int
    prefix: int
    hash: bytes


# --- checks -------------------------------------------------------------------


def check_key(key: bytes) -> None:
    """Caller misuse unless ``key`` is a 32-byte record id."""
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError(f"a record id is {KEY_SIZE} bytes")


def check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} is {HASH_SIZE} bytes")


def check_tree_id(tree_id: bytes) -> None:
    if not isinstance(tree_id, bytes) or len(tree_id) != TREE_ID_SIZE:
        raise ValueError(f"a tree id is {TREE_ID_SIZE} bytes")


# --- hashes ---------------------------------------------------------------------


def _digest(kind: Kind, tree_id: bytes, body: bytes) -> bytes:
    check_tree_id(tree_id)
    return hashlib.sha256(_HASH_PREFIX[kind] + tree_id + body).digest()


def record_hash(tree_id: bytes, key: bytes, blob: bytes) -> bytes:
    """The leaf value of a sealed record blob: bound to its tree and its record id."""
    check_key(key)
    if not 0 < len(blob) <= MAX_RECORD_SIZE:
        raise ValueError(f"a sealed record is 1..{MAX_RECORD_SIZE} bytes")
    return _digest(Kind.RECORD, tree_id, key + blob)


def leaf_hash(tree_id: bytes, key: bytes, value: bytes) -> bytes:
    """The hash of the leaf of ``key`` whose value is ``value``."""
    check_key(key)
    check_hash(value, "leaf value")
    return _digest(Kind.LEAF, tree_id, key + value)


def interior_hash(tree_id: bytes, is_root: bool, body: bytes) -> bytes:
    """The hash of an interior node from its exact body encoding (no re-encoding)."""
    return _digest(Kind.ROOT if is_root else Kind.INNER, tree_id, body)


def node_hash(tree_id: bytes, node: Node) -> bytes:
    """The hash of any node (its parent's branch holds it; the head holds the root's)."""
    return _digest(node_kind(node), tree_id, _body(node))


def hash_and_encode(tree_id: bytes, node: Node) -> tuple[bytes, bytes]:
    """``(node_hash(tree_id, node), encode_node(node))`` from one encoding of the body."""
    kind, body = node_kind(node), _body(node)
    return _digest(kind, tree_id, body), bytes((FORMAT_VERSION, kind)) + body


def leaf_hash_and_encode(tree_id: bytes, key: bytes, value: bytes) -> tuple[bytes, bytes]:
    """``hash_and_encode`` of ``Leaf(key, value)``, without making the Leaf (bulk builds)."""
    check_key(key)
    check_hash(value, "leaf value")
    body = key + value
    return _digest(Kind.LEAF, tree_id, body), _LEAF_HEADER + body


def node_kind(node: Node) -> Kind:
    return Kind.LEAF if isinstance(node, Leaf) else node.kind


def _body(node: Node) -> bytes:
    if isinstance(node, Leaf):
        return node.key + node.value
    return encode_interior_body(node)


def empty_root_hash(tree_id: bytes) -> bytes:
    """The root hash of a tree without records."""
    return node_hash(tree_id, EMPTY_ROOT)


# --- encoding -------------------------------------------------------------------


def _bits_to_bytes(length: int, bits: int) -> bytes:
    """``length`` bits, first bit as the MSB of the first byte, zero-padded (may be empty)."""
    size = (length + 7) // 8
    return (bits << (8 * size - length)).to_bytes(size, "big")


def encode_branch(branch: Branch | None) -> bytes:
    if branch is None:
        return b"\x00\x00"
    return (
        branch.length.to_bytes(2, "big") + _bits_to_bytes(branch.length, branch.path) + branch.child
    )


def encode_interior_body(node: Interior) -> bytes:
    return encode_branch(node.left) + encode_branch(node.right)


def encode_node(node: Node) -> bytes:
    """The canonical encoding a host stores."""
    return bytes((FORMAT_VERSION, node_kind(node))) + _body(node)


def encode_position(depth: int, prefix: int) -> bytes:
    """A position as bytes: ``u16 depth || the prefix bits, zero-padded`` (a store key)."""
    if not 0 <= depth <= KEY_BITS or not 0 <= prefix < 1 << depth:
        raise ValueError("not a tree position")
    return depth.to_bytes(2, "big") + _bits_to_bytes(depth, prefix)


_DEPTHS = tuple(depth.to_bytes(2, "big") for depth in range(KEY_BITS + 1))
_LAST_BYTE_MASKS = tuple((0xFF << (8 - depth % 8)) & 0xFF for depth in range(KEY_BITS + 1))


def encoded_path_positions(key: bytes) -> list[bytes]:
    """``encode_position`` of every position on ``key``'s path (257), by byte slicing.

    A prefix of ``depth`` bits, zero-padded, is the key's first ``ceil(depth/8)``
    bytes with the bits past ``depth`` cleared: no integer arithmetic per position
    (a host reads one path per request).
    """
    check_key(key)
    out = []
    for depth in range(KEY_BITS + 1):
        size, rest = divmod(depth, 8)
        prefix = key[:size] + bytes((key[size] & _LAST_BYTE_MASKS[depth],)) if rest else key[:size]
        out.append(_DEPTHS[depth] + prefix)
    return out


# --- strict decoding --------------------------------------------------------------


class Reader:
    """A cursor over untrusted bytes; every read past the end is a TruncatedError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int) -> bytes:
        end = self._pos + size
        if end > len(self._data):
            raise TruncatedError("input ends inside a record tree structure")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    @property
    def position(self) -> int:
        """How many bytes have been read."""
        return self._pos

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise TrailingBytesError(f"{len(self._data) - self._pos} bytes after the structure")


def check_input(data: bytes, limit: int, what: str) -> None:
    """Refuse non-bytes (caller misuse) and oversized input (before parsing)."""
    if not isinstance(data, bytes):
        raise TypeError(f"{what} is decoded from bytes")
    if len(data) > limit:
        raise SizeLimitError(f"{what} is {len(data)} bytes, more than {limit}")


def read_header(reader: Reader) -> int:
    """Check the format version; return the kind byte (not yet checked)."""
    version = reader.uint(1)
    if version != FORMAT_VERSION:
        raise UnknownTagError(f"record tree format version {version} is not {FORMAT_VERSION}")
    return reader.uint(1)


def read_bits(reader: Reader, length: int) -> int:
    """``length`` bits, zero-padded to whole bytes; a set padding bit is non-canonical."""
    size = (length + 7) // 8
    value = reader.uint(size)
    padding = 8 * size - length
    if value & ((1 << padding) - 1):
        raise NonCanonicalError("padding bits of a key path are not zero")
    return value >> padding


def _read_branch(reader: Reader, may_be_empty: bool) -> Branch | None:
    length = reader.uint(2)
    if length == 0:
        if not may_be_empty:
            raise InvalidValueError("an inner node has an empty branch")
        return None
    if length > KEY_BITS:
        raise InvalidValueError(f"branch length {length} is more than {KEY_BITS} bits")
    path = read_bits(reader, length)
    return Branch(length, path, reader.take(HASH_SIZE))


def read_interior_body(reader: Reader, is_root: bool) -> Interior:
    left = _read_branch(reader, may_be_empty=is_root)
    right = _read_branch(reader, may_be_empty=is_root)
    try:
        return Interior(left, right, is_root)
    except ValueError as exc:
        # The side of a branch (its first bit) is a property of the bytes here.
        raise InvalidValueError(str(exc)) from None


def decode_node(data: bytes) -> Node:
    """Strictly decode one stored node."""
    check_input(data, MAX_NODE_SIZE, "a record tree node")
    reader = Reader(data)
    kind = read_header(reader)
    node: Node
    if kind == Kind.LEAF:
        node = Leaf(reader.take(KEY_SIZE), reader.take(HASH_SIZE))
    elif kind in (Kind.INNER, Kind.ROOT):
        node = read_interior_body(reader, is_root=kind == Kind.ROOT)
    else:
        raise UnknownTagError(f"kind {kind} is not a record tree node")
    reader.finish()
    return node


def decode_position(data: bytes) -> tuple[int, int]:
    """Strictly decode :func:`encode_position` bytes into ``(depth, prefix)``."""
    check_input(data, 2 + KEY_SIZE, "a tree position")
    reader = Reader(data)
    depth = reader.uint(2)
    if depth > KEY_BITS:
        raise InvalidValueError(f"depth {depth} is more than {KEY_BITS}")
    prefix = read_bits(reader, depth)
    reader.finish()
    return depth, prefix
