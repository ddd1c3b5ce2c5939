"""The record tree's hashes and encodings: pinned vectors, round trips, and strict decoding.

Decoders see host bytes: each rule has its own negative test, and random or
mutated bytes only ever raise CodecError subclasses (or decode to something
that re-encodes to the very same bytes).
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records_reference import record_value, root_hash
from records_world import TREE_ID, key_of

from bkv.errors import (
    CodecError,
    InvalidValueError,
    NonCanonicalError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)
from bkv.records.nodes import (
    EMPTY_ROOT,
    MAX_NODE_SIZE,
    MAX_RECORD_SIZE,
    Branch,
    Interior,
    Leaf,
    decode_node,
    decode_position,
    empty_root_hash,
    encode_node,
    encode_position,
    encoded_path_positions,
    node_hash,
    record_hash,
)
from bkv.records.proof import (
    MAX_PROOF_NODES,
    MAX_PROOF_SIZE,
    MAX_TREE_VERSION,
    Proof,
    decode_proof,
    encode_proof,
)
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.tree import TreeHead, build_nodes, build_tree, path_positions, read_proof

ZERO_TREE = bytes(32)
H = bytes(range(32))
H2 = bytes(range(1, 33))

# --- pinned vectors: the format changes only on purpose ------------------------------------------


def test_pinned_roots() -> None:
    fifty = {
        hashlib.sha256(bytes([i])).digest(): hashlib.sha256(b"v" + bytes([i])).digest()
        for i in range(50)
    }
    one = {bytes(32): hashlib.sha256(b"a").digest()}
    assert empty_root_hash(ZERO_TREE).hex() == (
        "213b17d209fd32fdffd2eff4f4087235804ec8bbe149788003ce50a9b804917b"
    )
    assert build_tree(ZERO_TREE, one).new_head.root.hex() == (
        "c8c230be1d0bfa7b9ffbddf4d7d191f7a9b7710ad53d826a370468ea52798a0b"
    )
    assert build_tree(ZERO_TREE, fifty).new_head.root.hex() == (
        "13a76dc20ed9853ac002979d3d9de955e0c8f1c939bd2c555646cf38fa8d4e8b"
    )
    for records in ({}, one, fifty):
        assert build_tree(ZERO_TREE, records).new_head.root == root_hash(ZERO_TREE, records)


def test_a_build_with_a_record_id_twice_is_refused_before_any_node_is_given_out() -> None:
    """A bulk loader's sink (a store) never sees part of a tree that cannot exist."""
    given_out: list[object] = []
    records = [(key_of(1), H), (key_of(2), H), (key_of(1), H2)]
    with pytest.raises(ValueError, match="twice"):
        build_nodes(TREE_ID, iter(records), lambda node_id, data: given_out.append(node_id))
    assert given_out == []
    # Without the repeat, the same records (in any order) build the reference tree.
    root = build_nodes(TREE_ID, iter(records[1::-1]), lambda node_id, data: None)
    assert root == root_hash(TREE_ID, dict(records[:2]))


def test_record_hash_matches_the_spec_and_binds_tree_and_id() -> None:
    blob = b"sealed"
    value = record_hash(TREE_ID, key_of(1), blob)
    assert value == record_value(TREE_ID, key_of(1), blob)
    assert value != record_hash(TREE_ID, key_of(2), blob)
    assert value != record_hash(ZERO_TREE, key_of(1), blob)
    with pytest.raises(ValueError):
        record_hash(TREE_ID, key_of(1), b"")
    with pytest.raises(ValueError):
        record_hash(TREE_ID, key_of(1), bytes(MAX_RECORD_SIZE + 1))


def test_kinds_are_domain_separated() -> None:
    # The same body hashed as an inner node and as a root gives different hashes,
    # and so does the same node under another tree id.
    node = Interior(Branch(1, 0, H), Branch(1, 1, H2))
    root = Interior(Branch(1, 0, H), Branch(1, 1, H2), is_root=True)
    assert encode_node(node)[2:] == encode_node(root)[2:]
    assert node_hash(TREE_ID, node) != node_hash(TREE_ID, root)
    assert node_hash(TREE_ID, node) != node_hash(ZERO_TREE, node)


def test_node_encodings() -> None:
    leaf = Leaf(key_of(1), H)
    assert encode_node(leaf) == b"\x01\x02" + key_of(1) + H
    inner = Interior(Branch(3, 0b010, H), Branch(9, 0b1_0000_0001, H2))
    assert encode_node(inner) == (b"\x01\x03" + b"\x00\x03\x40" + H + b"\x00\x09\x80\x80" + H2)
    assert encode_node(EMPTY_ROOT) == b"\x01\x04\x00\x00\x00\x00"
    for node in (leaf, inner, EMPTY_ROOT, Interior(None, Branch(256, (1 << 256) - 1, H), True)):
        assert decode_node(encode_node(node)) == node


def test_position_encoding() -> None:
    assert encode_position(0, 0) == b"\x00\x00"
    assert encode_position(3, 0b101) == b"\x00\x03\xa0"
    assert decode_position(b"\x00\x03\xa0") == (3, 0b101)
    with pytest.raises(ValueError):
        encode_position(3, 8)
    with pytest.raises(InvalidValueError):
        decode_position(b"\x01\x01" + bytes(32))
    with pytest.raises(NonCanonicalError):
        decode_position(b"\x00\x03\xb0")
    with pytest.raises(TrailingBytesError):
        decode_position(b"\x00\x03\xa0\x00")
    with pytest.raises(SizeLimitError):
        decode_position(bytes(35))


# --- the data model refuses impossible values (caller misuse) ------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Branch(0, 0, H),
        lambda: Branch(257, 0, H),
        lambda: Branch(2, 4, H),
        lambda: Branch(1, 0, b"short"),
        lambda: Interior(Branch(1, 1, H), None, is_root=True),
        lambda: Interior(None, Branch(1, 0, H), is_root=True),
        lambda: Interior(Branch(1, 0, H), None),
        lambda: Leaf(b"short", H),
        lambda: Proof(0, key_of(1), (), None),
        lambda: Proof(0, key_of(1), (Interior(Branch(1, 0, H), Branch(1, 1, H)),), None),
        lambda: Proof(0, key_of(1), (EMPTY_ROOT, EMPTY_ROOT), None),
        lambda: Proof(MAX_TREE_VERSION + 1, key_of(1), (EMPTY_ROOT,), None),
        lambda: Proof(0, key_of(1), (EMPTY_ROOT,), b"short"),
        lambda: TreeHead(b"short", 0, H),
        lambda: TreeHead(TREE_ID, -1, H),
    ],
)
def test_impossible_values_are_caller_misuse(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


# --- strict node decoding: one negative test per rule --------------------------------------------


def _inner_bytes(left: bytes, right: bytes) -> bytes:
    return b"\x01\x03" + left + right


GOOD_LEFT = b"\x00\x01\x00" + H
GOOD_RIGHT = b"\x00\x01\x80" + H


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", TruncatedError),
        (b"\x01", TruncatedError),
        (b"\x02\x02" + key_of(1) + H, UnknownTagError),  # format version 2
        (b"\x01\x01" + key_of(1) + H, UnknownTagError),  # a record is not a node
        (b"\x01\x05" + bytes(10), UnknownTagError),  # a proof is not a node
        (b"\x01\x63", UnknownTagError),
        (b"\x01\x02" + key_of(1) + H[:-1], TruncatedError),
        (b"\x01\x02" + key_of(1) + H + b"\x00", TrailingBytesError),
        (_inner_bytes(GOOD_LEFT, b"\x00\x00"), InvalidValueError),  # inner with an empty branch
        (_inner_bytes(b"\x00\x00", GOOD_RIGHT), InvalidValueError),
        (_inner_bytes(GOOD_RIGHT, GOOD_RIGHT), InvalidValueError),  # left branch starting with 1
        (_inner_bytes(GOOD_LEFT, GOOD_LEFT), InvalidValueError),  # right branch starting with 0
        (_inner_bytes(b"\x01\x01" + bytes(33) + H, GOOD_RIGHT), InvalidValueError),  # 257 bits
        (_inner_bytes(b"\x00\x01\x40" + H, GOOD_RIGHT), NonCanonicalError),  # padding bit set
        (_inner_bytes(b"\x00\x09\x00\x01" + H, GOOD_RIGHT), NonCanonicalError),
        (_inner_bytes(GOOD_LEFT, GOOD_RIGHT[:-1]), TruncatedError),
        (_inner_bytes(GOOD_LEFT, GOOD_RIGHT) + b"\x00", TrailingBytesError),
        (bytes(MAX_NODE_SIZE + 1), SizeLimitError),
    ],
)
def test_node_decoding_is_strict(data: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        decode_node(data)


def test_a_root_may_have_empty_branches_but_an_inner_node_may_not() -> None:
    assert decode_node(b"\x01\x04" + GOOD_LEFT + b"\x00\x00") == Interior(
        Branch(1, 0, H), None, is_root=True
    )
    assert decode_node(_inner_bytes(GOOD_LEFT, GOOD_RIGHT)) == Interior(
        Branch(1, 0, H), Branch(1, 1, H)
    )


def test_decoders_take_bytes_only() -> None:
    with pytest.raises(TypeError):
        decode_node(bytearray(encode_node(EMPTY_ROOT)))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode_proof("proof")  # type: ignore[arg-type]


# --- strict proof decoding -----------------------------------------------------------------------


def _proof_bytes(count: bytes, bodies: bytes, tail: bytes, version: bytes = bytes(8)) -> bytes:
    return b"\x01\x05" + version + key_of(1) + count + bodies + tail


ROOT_BODY = b"\x00\x00\x00\x00"
INNER_BODY = GOOD_LEFT + GOOD_RIGHT


def test_proof_encoding() -> None:
    proof = Proof(7, key_of(1), (EMPTY_ROOT,), None)
    assert encode_proof(proof) == _proof_bytes(b"\x00\x01", ROOT_BODY, b"\x00", bytes(7) + b"\x07")
    assert decode_proof(encode_proof(proof)) == proof


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_proof_bytes(b"\x00\x01", ROOT_BODY, b"\x00")[:-1], TruncatedError),
        (_proof_bytes(b"\x00\x01", ROOT_BODY, b"\x00\x00"), TrailingBytesError),
        (b"\x02" + _proof_bytes(b"\x00\x01", ROOT_BODY, b"\x00")[1:], UnknownTagError),
        (b"\x01\x04" + _proof_bytes(b"\x00\x01", ROOT_BODY, b"\x00")[2:], UnknownTagError),
        (_proof_bytes(b"\x00\x00", b"", b"\x00"), InvalidValueError),  # no nodes
        (_proof_bytes(b"\x01\x01", ROOT_BODY, b"\x00"), InvalidValueError),  # 257 nodes
        (_proof_bytes(b"\x00\x02", ROOT_BODY + ROOT_BODY, b"\x00"), InvalidValueError),
        (_proof_bytes(b"\x00\x01", ROOT_BODY, b"\x02" + H), NonCanonicalError),
        (_proof_bytes(b"\x00\x01", ROOT_BODY, b"\x01" + H[:5]), TruncatedError),
        (_proof_bytes(b"\x00\x01", ROOT_BODY, b"\x00", b"\x80" + bytes(7)), InvalidValueError),
        (bytes(MAX_PROOF_SIZE + 1), SizeLimitError),
    ],
)
def test_proof_decoding_is_strict(data: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        decode_proof(data)


def test_the_largest_proof_fits_its_limit() -> None:
    # A degenerate path: 256 interior nodes, each branch as long as its encoding allows.
    long = Branch(256, 1 << 255, H)
    nodes = (Interior(Branch(256, 0, H), long, True),) + (Interior(Branch(256, 0, H), long),) * (
        MAX_PROOF_NODES - 1
    )
    data = encode_proof(Proof(MAX_TREE_VERSION, key_of(1), nodes, H))
    assert len(data) == MAX_PROOF_SIZE
    assert encode_proof(decode_proof(data)) == data


# --- random and mutated bytes --------------------------------------------------------------------


def _sample_proofs() -> list[bytes]:
    store = MemoryTreeStore()
    update = build_tree(TREE_ID, {key_of(i): H for i in range(12)})
    store.commit(update, {}, b"sealed state")
    return [encode_proof(read_proof(store, update.new_head, key_of(i))) for i in (0, 5, 99)]


SAMPLE_PROOFS = _sample_proofs()
SAMPLE_NODES = [encode_node(n) for n in (EMPTY_ROOT, Leaf(key_of(1), H))] + [
    _inner_bytes(GOOD_LEFT, GOOD_RIGHT)
]


def _decodes_canonically_or_raises_codec_error(data: bytes) -> None:
    for decode, encode in ((decode_node, encode_node), (decode_proof, encode_proof)):
        try:
            value = decode(data)
        except CodecError:
            continue
        assert encode(value) == data  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_codec_errors(data: bytes) -> None:
    _decodes_canonically_or_raises_codec_error(data)
    _decodes_canonically_or_raises_codec_error(b"\x01\x05" + data)
    _decodes_canonically_or_raises_codec_error(b"\x01\x03" + data)


@settings(max_examples=300)
@given(
    original=st.sampled_from(SAMPLE_PROOFS + SAMPLE_NODES),
    position=st.integers(0, 10_000),
    mutation=st.sampled_from(["flip", "cut", "insert", "delete"]),
    byte=st.integers(0, 255),
)
def test_mutated_encodings_only_raise_codec_errors(
    original: bytes, position: int, mutation: str, byte: int
) -> None:
    at = position % len(original)
    mutated = {
        "flip": original[:at] + bytes([original[at] ^ (byte or 1)]) + original[at + 1 :],
        "cut": original[:at],
        "insert": original[:at] + bytes([byte]) + original[at:],
        "delete": original[:at] + original[at + 1 :],
    }[mutation]
    _decodes_canonically_or_raises_codec_error(mutated)


def test_sample_proofs_round_trip() -> None:
    for data in SAMPLE_PROOFS:
        assert encode_proof(decode_proof(data)) == data


@given(st.binary(min_size=32, max_size=32))
def test_encoded_path_positions_equal_encode_position_on_every_depth(key: bytes) -> None:
    assert encoded_path_positions(key) == [encode_position(d, p) for d, p in path_positions(key)]
