"""The auditor authenticates entries against the signed root, history against old checkpoints."""

from __future__ import annotations

import pytest
from rogue_witness import NAMESPACE, ORIGIN, T0, RogueWitness, artifact, key

from bkv.audit.verify import audit_namespace
from bkv.errors import (
    AuditError,
    ConsistencyProofError,
    CosignerPolicyError,
    FetchError,
    InclusionProofError,
    NoteError,
    TruncatedError,
)
from bkv.tlog import tiles
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.cosignature import CosignatureSigner, CosignerPolicy
from bkv.tlog.merkle import leaf_hash
from bkv.tlog.note import Ed25519Signer as NoteSigner


def big_log() -> RogueWitness:
    """Two real epochs after 300 entries of another namespace: > 256 leaves, two tiles."""
    rogue = RogueWitness()
    for i in range(300):
        rogue.sign(artifact(f"other-{i}"), i + 1, namespace="someone.else.v1")
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 2)
    return rogue


class ForgedFirstTile:
    """Serves a rewritten first 256-entry block: entry bundle and level-0 tile agree."""

    def __init__(self, rogue: RogueWitness, forged_index: int, forged_entry: bytes) -> None:
        self.rogue = rogue
        entries = rogue.log.entries(0, tiles.TILE_WIDTH)
        entries[forged_index] = forged_entry
        self.bundle = tiles.encode_entry_bundle(entries)
        self.level0 = b"".join(leaf_hash(e) for e in entries)

    def get_json(self, path: str) -> object:
        return self.rogue.get_json(path)

    def get_bytes(self, path: str, max_size: int) -> bytes:
        if path == "/tile/entries/000":
            return self.bundle
        if path == "/tile/0/000":
            return self.level0
        return self.rogue.get_bytes(path, max_size)


def test_big_honest_log_passes() -> None:
    rogue = big_log()
    report = audit_namespace(rogue, NAMESPACE, rogue.pins())
    assert [e.epoch for e in report.epochs] == [1, 2]
    assert report.checkpoint_size == 302


def test_rewritten_block_with_matching_level0_tile_is_refused() -> None:
    rogue = big_log()
    hidden = rogue.sign(artifact("hidden"), 3, namespace="someone.else.v1", log=False)
    source = ForgedFirstTile(rogue, 7, hidden.entry)
    with pytest.raises(InclusionProofError, match="checkpoint root"):
        audit_namespace(source, NAMESPACE, rogue.pins())


def test_entry_bundle_with_too_few_entries_is_refused() -> None:
    rogue = big_log()

    class Short:
        """The rogue witness, serving 45 of the 46 entries of the last (partial) tile."""

        def get_json(self, path: str) -> object:
            return rogue.get_json(path)

        def get_bytes(self, path: str, max_size: int) -> bytes:
            if path == "/tile/entries/001.p/46":
                return tiles.encode_entry_bundle(rogue.log.entries(256, 301))
            return rogue.get_bytes(path, max_size)

    with pytest.raises(TruncatedError, match="fewer entries than its width"):
        audit_namespace(Short(), NAMESPACE, rogue.pins())


# --- historical checkpoints (finding: the consistency check proved nothing) -----------


def test_rewritten_history_is_caught_by_the_checkpoint_signed_back_then() -> None:
    # The witness published epoch 1 under checkpoint C1, then rewrote its log (same
    # epochs, another entry 0) and serves a self-consistent rewritten log today.
    original = RogueWitness()
    original.sign(artifact("a"), 1)
    rewritten = RogueWitness()
    rewritten.sign(artifact("a"), 1, timestamp_ms=T0)
    rewritten.sign(artifact("b"), 2)
    assert audit_namespace(rewritten, NAMESPACE, rewritten.pins()).checkpoint_size == 2
    rewritten.history[1] = original.history[1]  # what clients were shown for epoch 1
    with pytest.raises(ConsistencyProofError, match="rewritten or forked"):
        audit_namespace(rewritten, NAMESPACE, rewritten.pins())


def test_historical_checkpoint_must_be_signed_by_the_log_key() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 2)
    body = Checkpoint(ORIGIN, 1, rogue.log.root(1))
    rogue.history[1] = body.sign([NoteSigner(ORIGIN, key("not-the-log-key"))])
    with pytest.raises(NoteError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_historical_checkpoint_of_another_size() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    rogue.sign(artifact("b"), 2)
    rogue.history[1] = rogue.history[2]
    with pytest.raises(ConsistencyProofError, match="size-2 checkpoint as 1"):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


def test_missing_historical_checkpoint_fails_the_audit() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    del rogue.history[1]
    with pytest.raises(FetchError):
        audit_namespace(rogue, NAMESPACE, rogue.pins())


# --- cosigner policy (split view) ------------------------------------------------------


def cosigned() -> RogueWitness:
    rogue = RogueWitness(
        cosigners=[CosignatureSigner(f"cosigner{i}.test", key(f"cosigner{i}")) for i in range(2)]
    )
    rogue.sign(artifact("a"), 1)
    return rogue


def test_cosigner_policy_met() -> None:
    rogue = cosigned()
    policy = CosignerPolicy(2, [c.verifier() for c in rogue.cosigners])
    report = audit_namespace(rogue, NAMESPACE, rogue.pins(cosigner_policy=policy))
    assert [e.epoch for e in report.epochs] == [1]
    assert report.checkpoint_size == 1


def test_cosigner_policy_not_met() -> None:
    rogue = cosigned()
    absent = CosignatureSigner("absent.test", key("absent"))
    policy = CosignerPolicy(2, [rogue.cosigners[0].verifier(), absent.verifier()])
    with pytest.raises(CosignerPolicyError):
        audit_namespace(rogue, NAMESPACE, rogue.pins(cosigner_policy=policy))
    # A witness serving an uncosigned checkpoint (e.g. a split view) fails too.
    rogue.cosigners = []
    policy = CosignerPolicy(1, [absent.verifier()])
    with pytest.raises(CosignerPolicyError):
        audit_namespace(rogue, NAMESPACE, rogue.pins(cosigner_policy=policy))


def test_a_namespace_that_is_not_one_path_segment_is_refused_before_any_fetch() -> None:
    rogue = RogueWitness()
    rogue.sign(artifact("a"), 1)
    asked: list[str] = []

    class Recording:
        def get_json(self, path: str) -> object:
            asked.append(path)
            return rogue.get_json(path)

        def get_bytes(self, path: str, max_size: int) -> bytes:
            return rogue.get_bytes(path, max_size)

    with pytest.raises(AuditError, match="not a namespace name"):
        audit_namespace(Recording(), "../checkpoint?x#", rogue.pins())
    assert asked == []
