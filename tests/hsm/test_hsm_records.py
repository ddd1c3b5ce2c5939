"""One account slot at rest: sealing (bkv.hsm.records), record ids and RecordRead (vault_records).

The proofs here are real: a :class:`MemoryTreeStore` written through
:func:`bkv.records.tree.apply_batch` the way the HSM's batches write it, read
back with :func:`bkv.records.tree.read_record_proof`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bkv.crypto.rng import Rng, default_rng
from bkv.errors import (
    CodecError,
    ProofKeyMismatchError,
    RecordMismatchError,
    RecordProofError,
    SealingError,
    StaleProofError,
    StorageError,
)
from bkv.hsm.records import AAD_LABEL, FORMAT, SALT_SIZE, SUBKEY_LABEL, TAG_SIZE, RecordCipher
from bkv.hsm.state import AccountSlot, Record
from bkv.protocol.messages import MAX_ACCOUNT_ID, MAX_FLEET_ID
from bkv.protocol.vault_records import (
    RECORD_ID_LABEL,
    TREE_ID_LABEL,
    RecordRead,
    record_id_for,
    tree_id_for,
)
from bkv.records.nodes import record_hash
from bkv.records.proof import MAX_TREE_VERSION, Proof, decode_proof, encode_proof
from bkv.records.store_memory import MemoryTreeStore
from bkv.records.tree import (
    TreeHead,
    apply_batch,
    build_tree,
    new_tree,
    read_proof,
    read_record_proof,
)
from bkv.wire import decode, encode

FLEET = "records-fleet"
TREE_ID = tree_id_for(FLEET)
RECORD_KEY = bytes(range(32))
OTHER_KEY = bytes(range(32, 64))


def counting_rng(calls: list[int]) -> Rng:
    """An rng that hands out distinct, predictable bytes and notes each request's size."""

    def rng(size: int) -> bytes:
        calls.append(size)
        return hashlib.sha256(b"rng %d" % len(calls)).digest()[:size].ljust(size, b"\x00")

    return rng


def cipher(key: bytes = RECORD_KEY, fleet_id: str = FLEET) -> RecordCipher:
    return RecordCipher(key, fleet_id, default_rng)


def slot_of(account: bytes, attempts: int = 0, secret: bytes = b"the backup key") -> AccountSlot:
    record = Record(1, b"\x6b" * 32, bytes(range(192)), secret, 10, attempts, 0, 0)
    return AccountSlot(account, 1, record)


def rid(account: bytes) -> bytes:
    return record_id_for(TREE_ID, account)


class Host:
    """The untrusted host: a memory store under the record tree, and the head the HSM holds.

    ``write`` is the HSM's side of a batch (seal, proofs, apply_batch) and the
    store's commit, in one step.
    """

    def __init__(self, sealer: RecordCipher) -> None:
        self.cipher = sealer
        self.store = MemoryTreeStore()
        genesis = new_tree(TREE_ID)
        self.store.commit(genesis, {}, b"sealed state 0")
        self.head: TreeHead = genesis.new_head

    def write_blobs(self, blobs: Mapping[bytes, bytes | None]) -> None:
        """Commit ``blobs`` (record id -> sealed blob, None to delete) as one batch."""
        proofs = [read_proof(self.store, self.head, record_id) for record_id in blobs]
        values = {
            record_id: None if blob is None else record_hash(TREE_ID, record_id, blob)
            for record_id, blob in blobs.items()
        }
        update = apply_batch(self.head, proofs, values)
        self.store.commit(update, blobs, b"sealed state %d" % update.new_head.version)
        self.head = update.new_head

    def write(self, *slots: AccountSlot) -> dict[bytes, bytes]:
        """Seal ``slots`` at the next version and commit them; return their blobs."""
        version = self.head.version + 1
        blobs = {rid(s.account_id): self.cipher.seal(rid(s.account_id), version, s) for s in slots}
        self.write_blobs(blobs)
        return blobs

    def proof(self, account: bytes) -> Proof:
        return read_record_proof(self.store, self.head, rid(account))[0]

    def blob(self, account: bytes) -> bytes | None:
        return self.store.read_record(rid(account))

    def read(self, account: bytes) -> bytes:
        """What an honest host sends with a request of ``account``."""
        proof, blob = read_record_proof(self.store, self.head, rid(account))
        return encode(RecordRead(encode_proof(proof), blob or b""))


def read_of(proof: Proof, blob: bytes | None) -> bytes:
    return encode(RecordRead(encode_proof(proof), blob or b""))


@pytest.fixture
def host() -> Host:
    world = Host(cipher())
    world.write(slot_of(b"alice"), slot_of(b"bob"), slot_of(b"carol"))
    return world


# --- sealing ---------------------------------------------------------------------------


def test_seal_open_round_trip() -> None:
    sealer = cipher()
    for slot in (slot_of(b"a"), slot_of(b"b" * MAX_ACCOUNT_ID, 9, b"\x00" * 128)):
        for version in (0, 1, MAX_TREE_VERSION):
            blob = sealer.seal(rid(slot.account_id), version, slot)
            assert sealer.open(rid(slot.account_id), blob) == slot
            assert blob[0] == FORMAT and int.from_bytes(blob[1:9], "big") == version
            assert len(blob) == 1 + 8 + SALT_SIZE + len(encode(slot)) + TAG_SIZE


def test_every_blob_has_a_fresh_salt_from_the_injected_rng() -> None:
    calls: list[int] = []
    rng = counting_rng(calls)
    sealer = RecordCipher(RECORD_KEY, FLEET, rng)
    slot = slot_of(b"alice")
    first = sealer.seal(rid(b"alice"), 3, slot)
    second = sealer.seal(rid(b"alice"), 3, slot)
    # The rng is asked for exactly one salt per seal, and the salt is what it gave.
    assert calls == [SALT_SIZE, SALT_SIZE]
    assert first[9 : 9 + SALT_SIZE] == hashlib.sha256(b"rng 1").digest()
    assert second[9 : 9 + SALT_SIZE] == hashlib.sha256(b"rng 2").digest()
    # Same slot, same record, same version: only the salt differs, and every byte after it.
    assert first[:9] == second[:9]
    assert first[9 + SALT_SIZE :] != second[9 + SALT_SIZE :]
    # The salt is the only randomness: the same salt gives the same blob.
    same = RecordCipher(RECORD_KEY, FLEET, lambda n: b"\x5a" * n)
    assert same.seal(rid(b"alice"), 3, slot) == same.seal(rid(b"alice"), 3, slot)
    # The default rng: two seals of one slot never share a salt.
    sealer = cipher()
    salts = {sealer.seal(rid(b"alice"), 3, slot)[9 : 9 + SALT_SIZE] for _ in range(8)}
    assert len(salts) == 8


def test_a_short_rng_is_refused() -> None:
    sealer = RecordCipher(RECORD_KEY, FLEET, lambda n: b"\x00" * (n - 1))
    with pytest.raises(ValueError, match="rng returned"):
        sealer.seal(rid(b"alice"), 1, slot_of(b"alice"))


def test_the_blob_is_the_documented_layout() -> None:
    """FORMAT || version || salt || AEAD(HKDF-Expand(key, label || salt), zero nonce, slot, aad)."""
    salt = b"\x33" * SALT_SIZE
    sealer = RecordCipher(RECORD_KEY, FLEET, lambda n: salt[:n])
    slot = slot_of(b"alice", 2)
    blob = sealer.seal(rid(b"alice"), 7, slot)
    # RFC 5869 section 2.3: T(1) = HMAC-Hash(PRK, info || 0x01), L = 32 = HashLen.
    subkey = hmac.digest(RECORD_KEY, SUBKEY_LABEL + salt + b"\x01", hashlib.sha256)
    fleet = FLEET.encode()
    aad = AAD_LABEL + bytes([len(fleet)]) + fleet + rid(b"alice") + (7).to_bytes(8, "big")
    expected = ChaCha20Poly1305(subkey).encrypt(bytes(12), encode(slot), aad)
    assert blob == bytes([FORMAT]) + (7).to_bytes(8, "big") + salt + expected
    # Authentic bytes that are not a slot (an incompatible writer): StorageError, not a forgery.
    garbage = ChaCha20Poly1305(subkey).encrypt(bytes(12), b"not a slot", aad)
    with pytest.raises(StorageError, match="does not decode") as refused:
        sealer.open(rid(b"alice"), blob[: 9 + SALT_SIZE] + garbage)
    assert not isinstance(refused.value, SealingError)


def test_open_refuses_another_record_id_fleet_or_key() -> None:
    sealer = cipher()
    blob = sealer.seal(rid(b"alice"), 4, slot_of(b"alice"))
    with pytest.raises(SealingError):
        sealer.open(rid(b"bob"), blob)
    other_tree_rid = record_id_for(tree_id_for("another-fleet"), b"alice")
    with pytest.raises(SealingError):
        sealer.open(other_tree_rid, blob)
    with pytest.raises(SealingError):
        cipher(fleet_id="another-fleet").open(rid(b"alice"), blob)  # same key, other fleet
    with pytest.raises(SealingError):
        cipher(OTHER_KEY).open(rid(b"alice"), blob)


def test_open_refuses_every_flipped_byte_truncation_and_unknown_format() -> None:
    sealer = cipher()
    blob = sealer.seal(rid(b"alice"), 4, slot_of(b"alice"))
    for index in range(len(blob)):
        for flip in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= flip
            with pytest.raises(SealingError):
                sealer.open(rid(b"alice"), bytes(tampered))
    for length in range(len(blob)):
        with pytest.raises(SealingError):
            sealer.open(rid(b"alice"), blob[:length])
    with pytest.raises(SealingError):
        sealer.open(rid(b"alice"), blob + b"\x00")
    for version in (0, FORMAT + 1, 0xFF):
        with pytest.raises(SealingError, match="unknown format"):
            sealer.open(rid(b"alice"), bytes([version]) + blob[1:])


def test_seal_and_construction_refuse_misuse() -> None:
    sealer = cipher()
    for version in (-1, MAX_TREE_VERSION + 1):
        with pytest.raises(ValueError, match="tree version"):
            sealer.seal(rid(b"alice"), version, slot_of(b"alice"))
    for key in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError, match="record key"):
            RecordCipher(key, FLEET, default_rng)


def test_the_cipher_repr_shows_no_key() -> None:
    text = repr(cipher())
    assert FLEET in text
    for shown in (
        RECORD_KEY.hex(),
        repr(RECORD_KEY),
        RECORD_KEY.hex()[:16],
        repr(RECORD_KEY)[2:20],
    ):
        assert shown not in text


# --- reading through a proof ----------------------------------------------------------


def test_an_honest_read_opens_the_slot_the_tree_holds(host: Host) -> None:
    read = host.cipher.read(host.head, b"alice", rid(b"alice"), host.read(b"alice"))
    assert read.slot == slot_of(b"alice") and read.record_id == rid(b"alice")
    proof = host.proof(b"alice")
    assert read.path.head == host.head and read.path.key_bytes == rid(b"alice")
    assert read.path.value == proof.value and [s.node for s in read.path.steps] == list(proof.nodes)
    absent = host.cipher.read(host.head, b"dave", rid(b"dave"), host.read(b"dave"))
    assert absent.slot is None and absent.path.value is None and absent.path.leaf is None
    # After a change, the new slot (at the new head).
    host.write(slot_of(b"alice", 3))
    read = host.cipher.read(host.head, b"alice", rid(b"alice"), host.read(b"alice"))
    assert read.slot == slot_of(b"alice", 3)


def _refused_alike(
    host: Host,
    error: type[Exception],
    account: bytes,
    record_read: bytes,
    head: TreeHead | None = None,
) -> None:
    """``read`` raises exactly ``error``, with this cipher and with one whose key opens nothing.

    The same error whatever the key shows the refusal comes from the proof and
    blob checks, before any blob is opened (opening with the foreign key would
    raise SealingError).
    """
    for reader in (host.cipher, cipher(OTHER_KEY)):
        with pytest.raises(error) as refused:
            reader.read(head or host.head, account, rid(account), record_read)
        assert type(refused.value) is error, refused.value


def test_read_refuses_an_undecodable_read(host: Host) -> None:
    good = host.read(b"alice")
    proof = encode_proof(host.proof(b"alice"))
    for bad in (
        b"",
        b"\x00",
        good[:-1],
        good + b"\x00",
        encode(RecordRead(b"\x01\x02\x03", host.blob(b"alice") or b"")),  # proof not a proof
        encode(RecordRead(proof[:-1], host.blob(b"alice") or b"")),
        encode(RecordRead(proof + b"\x00", host.blob(b"alice") or b"")),
    ):
        _refused_alike(host, RecordProofError, b"alice", bad)
    with pytest.raises(RecordProofError) as refused:
        host.cipher.read(host.head, b"alice", rid(b"alice"), b"\x08\x01garbage")
    assert isinstance(refused.value.__cause__, CodecError)


def test_read_refuses_a_proof_for_another_record(host: Host) -> None:
    # Bob's intact read, handed over for alice's request.
    _refused_alike(host, ProofKeyMismatchError, b"alice", host.read(b"bob"))
    _refused_alike(host, ProofKeyMismatchError, b"dave", host.read(b"alice"))


def test_read_refuses_a_proof_read_at_an_older_head(host: Host) -> None:
    old_head, old_read = host.head, host.read(b"alice")
    host.write(slot_of(b"bob", 1))
    _refused_alike(host, StaleProofError, b"alice", old_read)
    # A batch that changed no record (a KE1 without one) moves the version, not the root:
    # the old proof's nodes still hash right, and its version alone refuses it.
    same_root = dataclasses.replace(old_head, version=old_head.version + 1)
    _refused_alike(host, StaleProofError, b"alice", old_read, same_root)
    # A proof newer than the head the HSM holds (the store ran ahead) is refused too.
    older_head = dataclasses.replace(host.head, version=host.head.version - 1)
    _refused_alike(host, StaleProofError, b"alice", host.read(b"alice"), older_head)


def test_read_refuses_a_blob_that_is_not_the_one_the_tree_holds(host: Host) -> None:
    alice_then = host.blob(b"alice")
    host.write(slot_of(b"alice", 1))
    proof = host.proof(b"alice")
    # A blob for a record the tree does not hold.
    _refused_alike(host, RecordMismatchError, b"dave", read_of(host.proof(b"dave"), alice_then))
    # No blob for a record the tree holds (the host hides a record it has).
    _refused_alike(host, RecordMismatchError, b"alice", read_of(proof, None))
    # A stale blob of the same record: the slot before its last change, attempts and all.
    assert alice_then is not None
    assert host.cipher.open(rid(b"alice"), alice_then) == slot_of(b"alice")  # authentic, old
    _refused_alike(host, RecordMismatchError, b"alice", read_of(proof, alice_then))
    # Another record's blob, current and authentic for its own id.
    _refused_alike(host, RecordMismatchError, b"alice", read_of(proof, host.blob(b"bob")))


def test_read_refuses_a_forged_absence_proof_hiding_a_present_record(host: Host) -> None:
    proof = host.proof(b"alice")
    assert proof.value is not None
    # 1. The real path, its leaf value dropped: "no record here".
    stripped = dataclasses.replace(proof, value=None)
    _refused_alike(host, RecordProofError, b"alice", read_of(stripped, None))
    # 2. A genuine absence proof from a tree without alice, relabelled to the head's version.
    others = {rid(a): record_hash(TREE_ID, rid(a), host.blob(a) or b"") for a in (b"bob", b"carol")}
    forged_tree = build_tree(TREE_ID, others)
    store = MemoryTreeStore()
    store.commit(forged_tree, {}, b"forged state")
    absence = read_proof(store, forged_tree.new_head, rid(b"alice"))
    assert absence.value is None
    relabelled = dataclasses.replace(absence, version=host.head.version)
    _refused_alike(host, RecordProofError, b"alice", read_of(relabelled, None))
    # 3. Present in a tree of another fleet's id: its hashes are not this tree's.
    foreign = build_tree(tree_id_for("another-fleet"), {rid(b"alice"): b"\x01" * 32})
    store = MemoryTreeStore()
    store.commit(foreign, {}, b"foreign state")
    moved = dataclasses.replace(
        read_proof(store, foreign.new_head, rid(b"alice")), version=host.head.version
    )
    _refused_alike(host, RecordProofError, b"alice", read_of(moved, None))


def test_a_slot_of_another_account_under_this_record_id_is_refused(host: Host) -> None:
    """Only a holder of the record key could seal this; the check stays as a second line."""
    version = host.head.version + 1
    misplaced = host.cipher.seal(rid(b"alice"), version, slot_of(b"mallory"))
    host.write_blobs({rid(b"alice"): misplaced})
    with pytest.raises(SealingError, match="another account"):
        host.cipher.read(host.head, b"alice", rid(b"alice"), host.read(b"alice"))


def test_a_blob_the_tree_holds_but_the_key_does_not_open_is_a_sealing_error(host: Host) -> None:
    """The proof checks pass (the host stored it), then opening fails: SealingError."""
    foreign = cipher(OTHER_KEY).seal(rid(b"alice"), host.head.version + 1, slot_of(b"alice", 4))
    host.write_blobs({rid(b"alice"): foreign})
    with pytest.raises(SealingError):
        host.cipher.read(host.head, b"alice", rid(b"alice"), host.read(b"alice"))
    assert cipher(OTHER_KEY).read(host.head, b"alice", rid(b"alice"), host.read(b"alice")).slot == (
        slot_of(b"alice", 4)
    )


# --- record ids ----------------------------------------------------------------------------


def test_tree_and_record_ids_are_the_documented_hashes() -> None:
    fleet = FLEET.encode()
    expected_tree = hashlib.sha256(TREE_ID_LABEL + bytes([len(fleet)]) + fleet).digest()
    assert tree_id_for(FLEET) == expected_tree == tree_id_for(FLEET)
    material = RECORD_ID_LABEL + expected_tree + bytes([5]) + b"alice"
    assert record_id_for(expected_tree, b"alice") == hashlib.sha256(material).digest()
    assert record_id_for(expected_tree, b"alice") == record_id_for(tree_id_for(FLEET), b"alice")


def test_ids_are_domain_separated() -> None:
    tree = tree_id_for(FLEET)
    ids = {
        tree,
        tree_id_for("another-fleet"),
        record_id_for(tree, b"alice"),
        record_id_for(tree, b"bob"),
        record_id_for(tree_id_for("another-fleet"), b"alice"),
        hashlib.sha256(FLEET.encode()).digest(),
        hashlib.sha256(b"alice").digest(),
    }
    assert len(ids) == 7
    # A fleet id and an account id of the same bytes never give the same id.
    assert tree_id_for("alice") != record_id_for(tree, b"alice")
    # Neither label is a prefix of the other: no tree-id input is also a record-id input.
    assert not RECORD_ID_LABEL.startswith(TREE_ID_LABEL)
    assert not TREE_ID_LABEL.startswith(RECORD_ID_LABEL)


def test_ids_refuse_bad_lengths() -> None:
    for fleet in ("", "f" * (MAX_FLEET_ID + 1), "é" * (MAX_FLEET_ID // 2 + 1)):
        with pytest.raises(ValueError, match="fleet id"):
            tree_id_for(fleet)
    assert len(tree_id_for("f" * MAX_FLEET_ID)) == 32
    for tree_id in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError, match="tree id"):
            record_id_for(tree_id, b"alice")
    for account in (b"", b"a" * (MAX_ACCOUNT_ID + 1)):
        with pytest.raises(ValueError, match="account id"):
            record_id_for(TREE_ID, account)
    assert len(record_id_for(TREE_ID, b"a" * MAX_ACCOUNT_ID)) == 32


def test_a_record_read_carries_the_proof_the_host_encoded(host: Host) -> None:
    message = decode(RecordRead, host.read(b"alice"))
    assert decode_proof(message.proof) == host.proof(b"alice")
    assert message.sealed_record == host.blob(b"alice")
    assert decode(RecordRead, host.read(b"dave")).sealed_record == b""
