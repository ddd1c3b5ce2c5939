"""What a malicious host can try against the HSM's checks; each is refused with a typed error.

A proof for another key, a stale proof, a tampered hash or path, a truncated or
extended proof, a hidden record (absence claimed for a present key), nodes of
another tree, a stale blob or another record's blob, and the same tricks
inside a batch. Every test runs on both stores.
"""

from __future__ import annotations

import dataclasses

import pytest
from records_world import OTHER_TREE_ID, TREE_ID, Vault, blob_of, key_of

from bkv.errors import (
    ProofKeyMismatchError,
    RecordMismatchError,
    RecordProofError,
    SizeLimitError,
    StaleProofError,
    TrailingBytesError,
    TruncatedError,
)
from bkv.records.nodes import (
    KEY_SIZE,
    MAX_RECORD_SIZE,
    Branch,
    Interior,
    node_hash,
    record_hash,
)
from bkv.records.proof import Proof, decode_proof, encode_proof
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.tree import (
    TreeHead,
    TreeStore,
    apply_batch,
    open_record,
    read_proof,
    verify_read,
)

RECORDS = 40
# Two keys that differ only in their last bit: their parent is at depth 255.
TWIN = key_of("twin")
TWIN2 = (int.from_bytes(TWIN, "big") ^ 1).to_bytes(KEY_SIZE, "big")
ABSENT = key_of("absent")


@pytest.fixture
def vault(store: TreeStore) -> Vault:
    vault = Vault(store)
    vault.change({key_of(i): blob_of(i) for i in range(RECORDS)})
    vault.change({TWIN: blob_of("twin"), TWIN2: blob_of("twin2")})
    return vault


def _proof(vault: Vault, key: bytes) -> Proof:
    return read_proof(vault.store, vault.head, key)


def _only(error: type[Exception], excinfo: pytest.ExceptionInfo[Exception]) -> None:
    """The error is exactly ``error``, not a more specific subclass that would hide the cause."""
    assert type(excinfo.value) is error


def _with_node(proof: Proof, index: int, node: Interior) -> Proof:
    nodes = list(proof.nodes)
    nodes[index] = node
    return dataclasses.replace(proof, nodes=tuple(nodes))


def _with_branch(node: Interior, side: str, branch: Branch) -> Interior:
    if side == "left":
        return dataclasses.replace(node, left=branch)
    return dataclasses.replace(node, right=branch)


def _flip_hash(digest: bytes) -> bytes:
    return bytes([digest[0] ^ 1]) + digest[1:]


def _toward(proof: Proof, index: int) -> Branch:
    branch = getattr(proof.nodes[index], _toward_side(proof, index))
    assert isinstance(branch, Branch)
    return branch


def _toward_side(proof: Proof, index: int) -> str:
    """'left' or 'right': the branch of node ``index`` that the key's path takes."""
    depth = 0
    key = int.from_bytes(proof.key, "big")
    for node in proof.nodes[:index]:
        bit = (key >> (255 - depth)) & 1
        branch = node.right if bit else node.left
        assert branch is not None
        depth += branch.length
    return "right" if (key >> (255 - depth)) & 1 else "left"


# --- the honest baseline: both answers verify -----------------------------------------------------


def test_honest_membership_and_absence_verify(vault: Vault) -> None:
    for key in (key_of(7), TWIN, TWIN2):
        assert verify_read(vault.head, key, _proof(vault, key)) == vault.values()[key]
    assert verify_read(vault.head, ABSENT, _proof(vault, ABSENT)) is None
    assert len(_proof(vault, TWIN).nodes) > 2  # the twins sit below a deep inner node


# --- a proof for another key ----------------------------------------------------------------------


@pytest.mark.parametrize("asked", [key_of(3), ABSENT, TWIN2], ids=["record", "absent", "twin2"])
def test_a_proof_for_another_key_is_refused(vault: Vault, asked: bytes) -> None:
    other = _proof(vault, TWIN)
    with pytest.raises(ProofKeyMismatchError):
        verify_read(vault.head, asked, other)
    # Relabelled to the asked key, its nodes still don't lead to an answer for it.
    with pytest.raises(RecordProofError) as excinfo:
        verify_read(vault.head, asked, dataclasses.replace(other, key=asked))
    _only(RecordProofError, excinfo)


def test_an_absence_proof_for_another_key_is_refused(vault: Vault) -> None:
    absent_proof = _proof(vault, ABSENT)
    with pytest.raises(RecordProofError):
        verify_read(vault.head, key_of(3), dataclasses.replace(absent_proof, key=key_of(3)))


# --- a stale proof --------------------------------------------------------------------------------


def test_a_stale_proof_is_refused(vault: Vault) -> None:
    stale = _proof(vault, key_of(5))
    vault.change({key_of(6): blob_of(6, generation=1)})  # another record changes
    with pytest.raises(StaleProofError):
        verify_read(vault.head, key_of(5), stale)
    # Claiming the current version does not help: the old root is not the head's.
    with pytest.raises(RecordProofError) as excinfo:
        verify_read(vault.head, key_of(5), dataclasses.replace(stale, version=vault.head.version))
    _only(RecordProofError, excinfo)


def test_a_stale_proof_of_the_changed_record_is_refused(vault: Vault) -> None:
    stale = _proof(vault, key_of(5))
    vault.change({key_of(5): blob_of(5, generation=1)})
    current = dataclasses.replace(stale, version=vault.head.version)
    with pytest.raises(RecordProofError):
        verify_read(vault.head, key_of(5), current)


# --- tampered hashes and paths --------------------------------------------------------------------


@pytest.mark.parametrize("key", [key_of(11), TWIN, ABSENT], ids=["record", "twin", "absent"])
def test_every_tampered_hash_on_the_path_is_refused(vault: Vault, key: bytes) -> None:
    proof = _proof(vault, key)
    for index, node in enumerate(proof.nodes):
        for side in ("left", "right"):
            branch = getattr(node, side)
            if branch is None:
                continue
            forged = dataclasses.replace(branch, child=_flip_hash(branch.child))
            tampered = _with_node(proof, index, _with_branch(node, side, forged))
            with pytest.raises(RecordProofError):
                verify_read(vault.head, key, tampered)


def test_a_tampered_leaf_value_is_refused(vault: Vault) -> None:
    proof = _proof(vault, key_of(2))
    assert proof.value is not None
    with pytest.raises(RecordProofError):
        verify_read(
            vault.head, key_of(2), dataclasses.replace(proof, value=_flip_hash(proof.value))
        )


def test_a_tampered_branch_path_is_refused(vault: Vault) -> None:
    proof = _proof(vault, TWIN)
    last = proof.nodes[-1]
    # Lengthen the sibling's path by one bit: the node no longer hashes to its parent's hash.
    side = "right" if _toward_side(proof, len(proof.nodes) - 1) == "left" else "left"
    branch = getattr(last, side)
    assert branch is not None and branch.length < 256
    longer = Branch(branch.length + 1, branch.path << 1, branch.child)
    with pytest.raises(RecordProofError):
        verify_read(
            vault.head,
            TWIN,
            _with_node(proof, len(proof.nodes) - 1, _with_branch(last, side, longer)),
        )


# --- truncated and extended proofs ----------------------------------------------------------------


def test_a_truncated_proof_is_refused(vault: Vault) -> None:
    proof = _proof(vault, TWIN)
    for cut in range(1, len(proof.nodes)):
        with pytest.raises(RecordProofError):
            verify_read(vault.head, TWIN, dataclasses.replace(proof, nodes=proof.nodes[:cut]))
    data = encode_proof(proof)
    for size in (len(data) - 1, len(data) - 33, len(data) // 2, 3):
        with pytest.raises(TruncatedError):
            decode_proof(data[:size])


def test_an_extended_proof_is_refused(vault: Vault) -> None:
    member, absent = _proof(vault, TWIN), _proof(vault, ABSENT)
    extra = member.nodes[1]
    with pytest.raises(RecordProofError):
        verify_read(vault.head, TWIN, dataclasses.replace(member, nodes=(*member.nodes, extra)))
    with pytest.raises(RecordProofError):
        verify_read(vault.head, ABSENT, dataclasses.replace(absent, nodes=(*absent.nodes, extra)))
    with pytest.raises(RecordProofError):
        verify_read(vault.head, ABSENT, dataclasses.replace(absent, value=bytes(32)))
    with pytest.raises(TrailingBytesError):
        decode_proof(encode_proof(member) + b"\x00")


# --- a hidden record: absence claimed for a present key -------------------------------------------


@pytest.mark.parametrize("key", [key_of(9), TWIN], ids=["record", "twin"])
def test_a_hidden_record_is_refused(vault: Vault, key: bytes) -> None:
    member = _proof(vault, key)
    # The path without the leaf's value, and every shorter path without it.
    for cut in range(1, len(member.nodes) + 1):
        hidden = dataclasses.replace(member, nodes=member.nodes[:cut], value=None)
        with pytest.raises(RecordProofError):
            verify_read(vault.head, key, hidden)
    # A forged node whose branch toward the key diverges from it (the deepest
    # branch longer than one bit, so the forged path still starts on its side).
    index = max(i for i in range(len(member.nodes)) if _toward(member, i).length > 1)
    node, side = member.nodes[index], _toward_side(member, index)
    toward = _toward(member, index)
    diverging = Branch(toward.length, toward.path ^ 1, toward.child)
    forged = _with_node(member, index, _with_branch(node, side, diverging))
    hidden = dataclasses.replace(forged, nodes=forged.nodes[: index + 1], value=None)
    with pytest.raises(RecordProofError):
        verify_read(vault.head, key, hidden)
    # And the record's blob cannot be withheld behind its true proof.
    with pytest.raises(RecordMismatchError):
        open_record(vault.head, key, member, None)


def test_an_old_absence_proof_hides_nothing(vault: Vault) -> None:
    before = _proof(vault, ABSENT)
    vault.change({ABSENT: blob_of("absent")})
    with pytest.raises(StaleProofError):
        verify_read(vault.head, ABSENT, before)
    with pytest.raises(RecordProofError):
        verify_read(vault.head, ABSENT, dataclasses.replace(before, version=vault.head.version))


# --- nodes of another tree ------------------------------------------------------------------------


def test_nodes_of_another_tree_are_refused(vault: Vault) -> None:
    # The same records under another tree id: same shape, other hashes.
    other = Vault(MemoryTreeStore(), tree_id=OTHER_TREE_ID)
    other.change(dict(vault.blobs))
    foreign = read_proof(other.store, other.head, TWIN)
    same_version = dataclasses.replace(foreign, version=vault.head.version)
    with pytest.raises(RecordProofError):
        verify_read(vault.head, TWIN, same_version)
    # One foreign node spliced into an otherwise genuine proof.
    mine = _proof(vault, TWIN)
    for index in range(1, min(len(mine.nodes), len(foreign.nodes))):
        with pytest.raises(RecordProofError):
            verify_read(vault.head, TWIN, _with_node(mine, index, foreign.nodes[index]))


# --- stale and swapped blobs ----------------------------------------------------------------------


def test_a_stale_blob_is_refused(vault: Vault) -> None:
    vault.change({key_of(4): blob_of(4, generation=1)})
    proof = _proof(vault, key_of(4))
    assert open_record(vault.head, key_of(4), proof, blob_of(4, generation=1)) == blob_of(4, 1)
    with pytest.raises(RecordMismatchError):
        open_record(vault.head, key_of(4), proof, blob_of(4, generation=0))


def test_another_records_blob_is_refused(vault: Vault) -> None:
    # Even a blob with the very bytes of another record: the record hash binds the id.
    vault.change({key_of(8): blob_of(1)})
    with pytest.raises(RecordMismatchError):
        open_record(vault.head, key_of(1), _proof(vault, key_of(1)), blob_of(2))
    assert record_hash(vault.tree_id, key_of(8), blob_of(1)) != vault.values()[key_of(1)]


def test_a_blob_for_an_absent_record_is_refused(vault: Vault) -> None:
    with pytest.raises(RecordMismatchError):
        open_record(vault.head, ABSENT, _proof(vault, ABSENT), blob_of(1))
    assert open_record(vault.head, ABSENT, _proof(vault, ABSENT), None) is None


def test_an_oversized_blob_is_refused(vault: Vault) -> None:
    with pytest.raises(SizeLimitError):
        open_record(vault.head, key_of(1), _proof(vault, key_of(1)), bytes(MAX_RECORD_SIZE + 1))
    with pytest.raises(SizeLimitError):
        open_record(vault.head, key_of(1), _proof(vault, key_of(1)), b"")


# --- the same tricks inside a batch ---------------------------------------------------------------


def _changes(*keys: bytes) -> dict[bytes, bytes | None]:
    return {key: bytes([i + 1]) * 32 for i, key in enumerate(keys)}


def test_a_batch_needs_one_honest_proof_per_changed_key(vault: Vault) -> None:
    a, b = key_of(1), ABSENT
    pa, pb = _proof(vault, a), _proof(vault, b)
    with pytest.raises(RecordProofError):
        apply_batch(vault.head, [pa], _changes(a, b))  # b has no proof
    with pytest.raises(RecordProofError):
        apply_batch(vault.head, [pa, pa, pb], _changes(a, b))  # two for a
    with pytest.raises(ProofKeyMismatchError):
        apply_batch(vault.head, [pa, pb, _proof(vault, TWIN)], _changes(a, b))  # TWIN unchanged
    assert (
        apply_batch(vault.head, [pb, pa], _changes(a, b)).new_head.version == vault.head.version + 1
    )


def test_a_batch_with_a_forged_proof_is_refused(vault: Vault) -> None:
    a, b = key_of(1), TWIN
    pa, pb = _proof(vault, a), _proof(vault, b)
    hidden = dataclasses.replace(pb, nodes=pb.nodes[:-1], value=None)  # "TWIN is absent"
    with pytest.raises(RecordProofError):
        apply_batch(vault.head, [pa, hidden], _changes(a, b))
    stale = _proof(vault, a)
    vault.change({key_of(2): None})
    with pytest.raises(StaleProofError):
        apply_batch(vault.head, [stale], _changes(a))


def test_a_batch_refuses_caller_misuse(vault: Vault) -> None:
    with pytest.raises(ValueError, match="1\\.\\."):
        apply_batch(vault.head, [], {})
    with pytest.raises(ValueError, match="record id"):
        apply_batch(vault.head, [], {b"short": None})
    with pytest.raises(ValueError, match="leaf value"):
        apply_batch(vault.head, [_proof(vault, ABSENT)], {ABSENT: b"short"})


# --- a head over a malformed tree (an HSM bug, not a host trick) ---------------------------------


def test_a_branch_deeper_than_the_leaves_is_refused() -> None:
    # Hash-valid nodes the builder never makes: an inner node at depth 1 whose
    # right branch is 256 bits long. The walk refuses it instead of reading past the key.
    child = bytes(32)
    inner = Interior(Branch(1, 0, child), Branch(256, 1 << 255, child))
    root = Interior(None, Branch(1, 1, node_hash(TREE_ID, inner)), is_root=True)
    head = TreeHead(TREE_ID, 0, node_hash(TREE_ID, root))
    key = b"\xff" * KEY_SIZE
    with pytest.raises(RecordProofError, match="deeper than the leaves"):
        verify_read(head, key, Proof(0, key, (root, inner), None))
