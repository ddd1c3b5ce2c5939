"""A naive, independent model of the record tree's hashes, written from the format spec.

It shares no code with bkv.records (only hashlib): keys are strings of "0"/"1",
and a subtree is hashed by splitting its key set at the first bit where the
keys differ, straight from the definition in bkv.records.nodes. A bug in the
real builder, batch update or encoder shows up as a root mismatch.
"""

from __future__ import annotations

import hashlib

LABEL = b"bkv/records/tree"
VERSION = 1
RECORD, LEAF, INNER, ROOT = 1, 2, 3, 4


def digest(kind: int, tree_id: bytes, body: bytes) -> bytes:
    return hashlib.sha256(LABEL + bytes([VERSION, kind]) + tree_id + body).digest()


def record_value(tree_id: bytes, key: bytes, blob: bytes) -> bytes:
    return digest(RECORD, tree_id, key + blob)


def bit_string(key: bytes) -> str:
    return "".join(f"{byte:08b}" for byte in key)


def branch(path: str, child: bytes) -> bytes:
    padded = path + "0" * (-len(path) % 8)
    return len(path).to_bytes(2, "big") + int(padded, 2).to_bytes(len(padded) // 8, "big") + child


def common_prefix(bits: list[str]) -> str:
    first, last = min(bits), max(bits)
    length = 0
    while length < len(first) and first[length] == last[length]:
        length += 1
    return first[:length]


def subtree(tree_id: bytes, keys: dict[str, tuple[bytes, bytes]]) -> tuple[str, bytes]:
    """(position as a bit string, hash) of the subtree holding exactly ``keys``."""
    if len(keys) == 1:
        ((position, (key, value)),) = keys.items()
        return position, digest(LEAF, tree_id, key + value)
    common = common_prefix(list(keys))
    depth = len(common)
    zeros = {k: v for k, v in keys.items() if k[depth] == "0"}
    ones = {k: v for k, v in keys.items() if k[depth] == "1"}
    left, left_hash = subtree(tree_id, zeros)
    right, right_hash = subtree(tree_id, ones)
    body = branch(left[depth:], left_hash) + branch(right[depth:], right_hash)
    return common, digest(INNER, tree_id, body)


def root_hash(tree_id: bytes, records: dict[bytes, bytes]) -> bytes:
    """The root hash of the tree holding ``records`` (record id -> leaf value)."""
    keys = {bit_string(k): (k, v) for k, v in records.items()}
    body = b""
    for side in "01":
        group = {k: v for k, v in keys.items() if k[0] == side}
        if group:
            position, child = subtree(tree_id, group)
            body += branch(position, child)
        else:
            body += b"\x00\x00"
    return digest(ROOT, tree_id, body)


def node_count(records: dict[bytes, bytes]) -> int:
    """Nodes of the tree: the root, n - 1 inner nodes less one per empty root side, n leaves."""
    n = len(records)
    sides = len({bit_string(k)[0] for k in records})
    return 1 + (n - sides) + n
