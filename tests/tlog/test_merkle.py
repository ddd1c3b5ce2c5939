"""bkv.tlog.merkle: hashing, proof ranges and verification, with negatives and properties."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import ConsistencyProofError, InclusionProofError
from bkv.tlog import merkle
from bkv.tlog.merkle import (
    EMPTY_ROOT,
    MAX_PROOF_HASHES,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1 MTH, written recursively as in the RFC (independent of root_hash)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 section 2.1.3.1 PATH, recursive."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*reference_path(m, leaves[:k]), reference_mth(leaves[k:])]
    return [*reference_path(m - k, leaves[k:]), reference_mth(leaves[:k])]


def reference_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 section 2.1.4.1 SUBPROOF, recursive."""
    n = len(leaves)
    if m == n:
        return [] if b else [reference_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*reference_subproof(m, leaves[:k], b), reference_mth(leaves[k:])]
    return [*reference_subproof(m - k, leaves[k:], False), reference_mth(leaves[:k])]


def leaves_of(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def proof_from_ranges(ranges: list[tuple[int, int]], leaves: list[bytes]) -> list[bytes]:
    return [reference_mth(leaves[lo:hi]) for lo, hi in ranges]


def test_known_hashes() -> None:
    # RFC 6962 test data (certificate-transparency "empty tree" and "empty leaf").
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert (
        leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert (
        node_hash(b"\x00" * 32, b"\x11" * 32)
        == hashlib.sha256(b"\x01" + b"\x00" * 32 + b"\x11" * 32).digest()
    )


def test_node_hash_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        node_hash(b"\x00" * 31, b"\x00" * 32)
    with pytest.raises(ValueError):
        node_hash(b"\x00" * 32, b"\x00" * 33)


def test_root_hash_rejects_wrong_length() -> None:
    with pytest.raises(ValueError):
        root_hash([b"short"])


@pytest.mark.parametrize("n", [*range(0, 40), 63, 64, 65, 127, 128, 129, 255, 256, 257])
def test_root_hash_matches_recursive_definition(n: int) -> None:
    leaves = leaves_of(n)
    assert root_hash([leaf_hash(x) for x in leaves]) == reference_mth(leaves)


@pytest.mark.parametrize("n", range(1, 34))
def test_proof_ranges_match_rfc_recursion(n: int) -> None:
    leaves = leaves_of(n)
    for m in range(n):
        got = proof_from_ranges(merkle.inclusion_proof_ranges(m, n), leaves)
        assert got == reference_path(m, leaves)
    for m in range(1, n + 1):
        got = proof_from_ranges(merkle.consistency_proof_ranges(m, n), leaves)
        assert got == reference_subproof(m, leaves, True)


def test_range_helpers_reject_misuse() -> None:
    with pytest.raises(ValueError):
        merkle.inclusion_proof_ranges(3, 3)
    with pytest.raises(ValueError):
        merkle.consistency_proof_ranges(0, 3)
    with pytest.raises(ValueError):
        merkle.consistency_proof_ranges(4, 3)
    with pytest.raises(ValueError):
        merkle.subtree_decomposition(2, 2)
    with pytest.raises(ValueError):
        merkle.subtree_decomposition(1, 5)  # start not aligned for a 4-leaf subtree
    with pytest.raises(ValueError):
        merkle.fold_subtrees([])


def _tree(n: int) -> tuple[list[bytes], bytes]:
    leaves = leaves_of(n)
    return leaves, reference_mth(leaves)


def test_inclusion_index_outside_tree() -> None:
    leaves, root = _tree(5)
    proof = reference_path(4, leaves)
    for index, size in [(5, 5), (6, 5), (-1, 5), (0, 0)]:
        with pytest.raises(InclusionProofError):
            verify_inclusion(leaf_hash(leaves[4]), index, size, proof, root)


def test_inclusion_rejects_truncated_and_extra_hashes() -> None:
    leaves, root = _tree(11)
    proof = reference_path(6, leaves)
    lh = leaf_hash(leaves[6])
    verify_inclusion(lh, 6, 11, proof, root)
    with pytest.raises(InclusionProofError, match="missing"):
        verify_inclusion(lh, 6, 11, proof[:-1], root)
    with pytest.raises(InclusionProofError, match="extra"):
        verify_inclusion(lh, 6, 11, [*proof, root], root)
    with pytest.raises(InclusionProofError):
        verify_inclusion(lh, 6, 11, [proof[0], *proof], root)


def test_inclusion_rejects_wrong_hash_lengths() -> None:
    leaves, root = _tree(4)
    proof = reference_path(1, leaves)
    lh = leaf_hash(leaves[1])
    with pytest.raises(InclusionProofError, match="leaf hash"):
        verify_inclusion(lh[:31], 1, 4, proof, root)
    with pytest.raises(InclusionProofError, match="proof hash"):
        verify_inclusion(lh, 1, 4, [proof[0] + b"\x00", proof[1]], root)
    with pytest.raises(InclusionProofError):
        verify_inclusion(lh, 1, 4, proof, root + b"\x00")


def test_inclusion_rejects_too_many_hashes() -> None:
    with pytest.raises(InclusionProofError, match="more than"):
        root_from_inclusion_proof(b"\x00" * 32, 0, 1 << 62, [b"\x00" * 32] * (MAX_PROOF_HASHES + 1))


def test_inclusion_rejects_huge_size() -> None:
    with pytest.raises(InclusionProofError):
        verify_inclusion(b"\x00" * 32, 0, 1 << 63, [], b"\x00" * 32)


def test_root_from_inclusion_proof_single_leaf() -> None:
    lh = leaf_hash(b"x")
    assert root_from_inclusion_proof(lh, 0, 1, []) == lh


def test_consistency_rejections() -> None:
    leaves = leaves_of(7)
    r3, r7 = reference_mth(leaves[:3]), reference_mth(leaves)
    proof = reference_subproof(3, leaves, True)
    verify_consistency(3, 7, proof, r3, r7)
    cases = [
        (7, 3, proof, r3, r7, "not increasing"),
        (0, 7, proof, r3, r7, "empty tree"),
        (3, 7, [], r3, r7, "empty"),
        (3, 7, proof[:-1], r3, r7, "missing"),
        (3, 7, [*proof, r7], r3, r7, "extra"),
        (3, 7, proof, r7, r7, "old root"),
        (3, 7, proof, r3, r3, "new root"),
        (3, 7, proof, r3[:31], r7, "old root"),
        (3, 7, [proof[0][:31], *proof[1:]], r3, r7, "proof hash"),
        (7, 7, proof, r7, r7, "not empty"),
        (7, 7, [], r7, r3, "differ"),
        (3, 1 << 63, proof, r3, r7, "not increasing"),
    ]
    for old, new, pf, a, b, msg in cases:
        with pytest.raises(ConsistencyProofError, match=msg):
            verify_consistency(old, new, pf, a, b)


def test_consistency_rejects_too_many_hashes() -> None:
    with pytest.raises(ConsistencyProofError, match="more than"):
        verify_consistency(3, 1 << 62, [b"\x00" * 32] * 64, b"\x00" * 32, b"\x00" * 32)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=200))
    return n, draw(st.integers(min_value=0, max_value=n - 1))


@given(tree_and_index(), st.data())
def test_inclusion_property_and_bit_flips(ti: tuple[int, int], data: st.DataObject) -> None:
    n, m = ti
    leaves, root = _tree(n)
    proof = reference_path(m, leaves)
    lh = leaf_hash(leaves[m])
    verify_inclusion(lh, m, n, proof, root)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    with pytest.raises(InclusionProofError):
        verify_inclusion(lh, m, n, proof, _flip(root, bit))
    with pytest.raises(InclusionProofError):
        verify_inclusion(_flip(lh, bit), m, n, proof, root)
    if proof:
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof]
        bad[i] = _flip(bad[i], bit)
        with pytest.raises(InclusionProofError):
            verify_inclusion(lh, m, n, bad, root)


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(min_value=1, max_value=200))
    return draw(st.integers(min_value=1, max_value=new)), new


@given(two_sizes(), st.data())
def test_consistency_property_and_bit_flips(sizes: tuple[int, int], data: st.DataObject) -> None:
    old, new = sizes
    leaves = leaves_of(new)
    r_old, r_new = reference_mth(leaves[:old]), reference_mth(leaves)
    proof = reference_subproof(old, leaves, True)
    verify_consistency(old, new, proof, r_old, r_new)
    bit = data.draw(st.integers(min_value=0, max_value=255))
    with pytest.raises(ConsistencyProofError):
        verify_consistency(old, new, proof, _flip(r_old, bit), r_new)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(old, new, proof, r_old, _flip(r_new, bit))
    if proof:
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bad = [*proof]
        bad[i] = _flip(bad[i], bit)
        with pytest.raises(ConsistencyProofError):
            verify_consistency(old, new, bad, r_old, r_new)
