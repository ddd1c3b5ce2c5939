"""The auditor authenticates every log entry against the signed root, never the hash tiles."""

from __future__ import annotations

import pytest
from rogue_witness import NAMESPACE, RogueWitness, artifact

from bkv.audit.verify import audit_namespace
from bkv.errors import InclusionProofError
from bkv.tlog import tiles
from bkv.tlog.merkle import leaf_hash


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
        audit_namespace(source, NAMESPACE, rogue.pins())  # type: ignore[arg-type]


def test_entry_bundle_with_too_few_entries_is_refused() -> None:
    rogue = big_log()

    class Short(ForgedFirstTile):
        def get_bytes(self, path: str, max_size: int) -> bytes:
            if path == "/tile/entries/001.p/46":
                return tiles.encode_entry_bundle(rogue.log.entries(256, 301))
            return rogue.get_bytes(path, max_size)

    with pytest.raises(Exception) as info:
        audit_namespace(Short(rogue, 0, b"x"), NAMESPACE, rogue.pins())  # type: ignore[arg-type]
    assert type(info.value).__name__ in {"TruncatedError", "CodecError", "SizeLimitError"}
