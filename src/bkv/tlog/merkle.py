"""RFC 6962 / RFC 9162 Merkle tree hashing and proof verification.

Sans-IO and pure: bytes in, bytes out, typed errors on failure.

Hashing (RFC 9162 section 2.1.1), SHA-256 with domain-separation prefixes:

- ``leaf_hash(d)   = SHA-256(0x00 || d)``
- ``node_hash(l,r) = SHA-256(0x01 || l || r)``
- the hash of the empty tree is ``SHA-256("")``.

Verification follows the iterative algorithms of RFC 9162 section 2.1.3.2
(inclusion) and section 2.1.4.2 (consistency). Both raise
:class:`bkv.errors.InclusionProofError` / :class:`bkv.errors.ConsistencyProofError`
and never return ``False``. Proofs with missing or extra hashes, hashes of the
wrong length, impossible sizes or an index outside the tree are rejected.

Proof *generation* lives in :mod:`bkv.tlog.log` (from stored hashes) and
:mod:`bkv.tlog.tiles` (from tiles); the range arithmetic they share is here:
:func:`inclusion_proof_ranges`, :func:`consistency_proof_ranges` and
:func:`subtree_decomposition`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from bkv.errors import ConsistencyProofError, InclusionProofError

HASH_SIZE = 32
"""Size in bytes of every Merkle tree hash (SHA-256)."""

MAX_PROOF_HASHES = 63
"""A proof in a tree of fewer than 2**63 leaves has at most 63 hashes (RFC 9162 2.1.3/2.1.4)."""

MAX_TREE_SIZE = (1 << 63) - 1
"""Largest tree size accepted anywhere (C2SP tlog-checkpoint sizes are int64 in practice)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
# Proof verification hashes nodes inline (one SHA-256 call per level, no function call
# around it): every hash of a proof is checked to be 32 bytes before the loop.
_sha256 = hashlib.sha256

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 section 2.1.1)."""


def leaf_hash(data: bytes) -> bytes:
    """Return MTH({d}) = SHA-256(0x00 || d) (RFC 9162 section 2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return SHA-256(0x01 || left || right), the hash of an interior node."""
    if len(left) != HASH_SIZE or len(right) != HASH_SIZE:
        raise ValueError("node_hash takes two 32-byte hashes")
    return _sha256(_NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162 section 2.1.1: the largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle tree hash of a list of *leaf hashes* (RFC 9162 section 2.1.1).

    Works bottom-up in O(n) time. For an empty list it returns :data:`EMPTY_ROOT`.
    """
    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError("leaf hashes must be 32 bytes")
    if not leaf_hashes:
        return EMPTY_ROOT
    # Folding the maximal complete subtrees right to left equals the recursive
    # definition, whose split point k is always the largest power of two < n.
    return fold_subtrees(
        [_complete_root(leaf_hashes[lo:hi]) for lo, hi in _pow2_chunks(0, len(leaf_hashes))]
    )


def _complete_root(level: Sequence[bytes]) -> bytes:
    """Root of a perfect subtree (len is a power of two), bottom-up."""
    current = list(level)
    while len(current) > 1:
        current = [node_hash(current[i], current[i + 1]) for i in range(0, len(current), 2)]
    return current[0]


def _pow2_chunks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into maximal aligned power-of-two ranges, largest first."""
    chunks = []
    size = hi - lo
    pos = lo
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            width = 1 << level
            if pos % width:
                raise ValueError("range start is not aligned for an RFC 9162 subtree")
            chunks.append((pos, pos + width))
            pos += width
    return chunks


def subtree_decomposition(lo: int, hi: int) -> list[tuple[int, int]]:
    """Return the complete subtrees ``(level, index)`` whose fold is MTH(D[lo:hi]).

    ``[lo, hi)`` must be a range that the RFC 9162 recursion produces: ``lo`` is a
    multiple of the largest power of two not above ``hi - lo``. Subtree
    ``(level, index)`` covers leaves ``[index << level, (index + 1) << level)``.
    The result is ordered left to right; fold it with :func:`fold_subtrees`.
    """
    if not 0 <= lo < hi:
        raise ValueError("subtree range must be non-empty")
    return [
        ((b - a).bit_length() - 1, a >> ((b - a).bit_length() - 1)) for a, b in _pow2_chunks(lo, hi)
    ]


def fold_subtrees(hashes: Sequence[bytes]) -> bytes:
    """Fold complete-subtree hashes (left to right order) into one hash, right to left."""
    if not hashes:
        raise ValueError("nothing to fold")
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_proof_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose tree hashes form PATH(index, D[0:size]) (RFC 9162 section 2.1.3.1).

    Returned in proof order (closest sibling first).
    """
    if not 0 <= index < size:
        raise ValueError("index must be in [0, size)")
    ranges: list[tuple[int, int]] = []
    lo, hi, m = 0, size, index
    # Iterative form of the RFC recursion; the proof is built leaf-to-root, so
    # collect top-down and reverse.
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if m < k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m = lo + k, m - k
    ranges.reverse()
    return ranges


def consistency_proof_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose tree hashes form PROOF(old, D[0:new]) (RFC 9162 section 2.1.4.1).

    Empty when ``old_size == new_size``; ``old_size`` must be at least 1.
    """
    if not 0 < old_size <= new_size:
        raise ValueError("need 0 < old_size <= new_size")
    ranges: list[tuple[int, int]] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while m != hi - lo:
        k = _largest_power_of_two_below(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}
        ranges.append((lo, hi))
    ranges.reverse()
    return ranges


def _check_hash(value: bytes, what: str, error: type[Exception]) -> None:
    if len(value) != HASH_SIZE:
        raise error(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof_shape(proof: Sequence[bytes], error: type[Exception]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise error(f"proof has {len(proof)} hashes, more than {MAX_PROOF_HASHES}")
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:  # the message is formatted only for a bad hash
            _check_hash(h, f"proof hash {i}", error)


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes:
    """Return the root that ``proof`` implies for ``leaf_hash`` at ``index`` (RFC 9162 2.1.3.2).

    Raises :class:`InclusionProofError` if the index is outside the tree or the
    proof has the wrong number of hashes for (index, tree_size).
    """
    if not 0 <= index < tree_size <= MAX_TREE_SIZE:
        raise InclusionProofError(f"leaf index {index} is not inside a tree of size {tree_size}")
    _check_hash(leaf_hash, "leaf hash", InclusionProofError)
    _check_proof_shape(proof, InclusionProofError)
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise InclusionProofError("inclusion proof has extra hashes")
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            # Skip the levels where this node has no right sibling.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionProofError("inclusion proof is missing hashes")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 section 2.1.3.2. Returns ``None``; raises :class:`InclusionProofError`.
    """
    computed = root_from_inclusion_proof(leaf_hash, index, tree_size, proof)
    if not hmac.compare_digest(computed, root):
        raise InclusionProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root).

    RFC 9162 section 2.1.4.2. Returns ``None``; raises :class:`ConsistencyProofError`.

    ``old_size`` must be at least 1: every tree extends the empty tree, so a
    "proof" from size 0 proves nothing and is refused (callers such as the
    tlog-witness protocol handle size 0 themselves). Equal sizes need an empty
    proof and equal roots.
    """
    if not 0 <= old_size <= new_size <= MAX_TREE_SIZE:
        raise ConsistencyProofError(f"sizes {old_size} -> {new_size} are not increasing")
    if old_size == 0:
        raise ConsistencyProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise ConsistencyProofError("sizes are equal but the proof is not empty")
        if not hmac.compare_digest(old_root, new_root):
            raise ConsistencyProofError("sizes are equal but the roots differ")
        return
    if not proof:
        raise ConsistencyProofError("consistency proof is empty")
    _check_proof_shape(proof, ConsistencyProofError)
    _check_hash(old_root, "old root", ConsistencyProofError)
    _check_hash(new_root, "new root", ConsistencyProofError)
    path = list(proof)
    # Step 2: if old_size is a power of two, old_root is the first node of the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    # Step 4: skip the levels where the old tree's last node is a right child.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyProofError("consistency proof has extra hashes")
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyProofError("consistency proof is missing hashes")
    if not hmac.compare_digest(fr, old_root):
        raise ConsistencyProofError("consistency proof does not lead to the old root")
    if not hmac.compare_digest(sr, new_root):
        raise ConsistencyProofError("consistency proof does not lead to the new root")
