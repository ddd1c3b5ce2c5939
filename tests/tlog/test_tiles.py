"""bkv.tlog.tiles: C2SP tlog-tiles paths, tile contents, entry bundles, proofs from tiles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import CodecError, InclusionProofError, SizeLimitError, TruncatedError
from bkv.tlog import tiles
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.merkle import leaf_hash, root_hash, verify_consistency
from bkv.tlog.tiles import ENTRIES_LEVEL, Tile


def make_log(n: int) -> MerkleLog:
    log = MerkleLog(MemoryHashStore())
    log.append_many([b"e%d" % i for i in range(n)])
    return log


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (Tile(0, 0, 256), "tile/0/000"),
        (Tile(0, 1234067, 256), "tile/0/x001/x234/067"),
        (Tile(1, 999, 256), "tile/1/999"),
        (Tile(2, 1000, 256), "tile/2/x001/000"),
        (Tile(0, 5, 17), "tile/0/005.p/17"),
        (Tile(63, 0, 1), "tile/63/000.p/1"),
        (Tile(ENTRIES_LEVEL, 1234067, 256), "tile/entries/x001/x234/067"),
        (Tile(ENTRIES_LEVEL, 0, 255), "tile/entries/000.p/255"),
    ],
)
def test_tile_paths(tile: Tile, path: str) -> None:
    assert tile.path() == path
    assert tiles.parse_tile_path(path) == tile


@pytest.mark.parametrize(
    "path",
    [
        "",
        "tile/0",
        "tile/00/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/0/00",
        "tile/0/0000",
        "tile/0/x000/001",
        "tile/0/001/002",
        "tile/0/x001",
        "tile/0/x001/x002",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/017",
        "tile/0/000.p/",
        "tile/0/000.p",
        "tile/0/000/.p/5",
        "tile/entry/000",
        "tiles/0/000",
        "tile/0/abc",
        "tile/0/000/",
        "tile/0/x" + "/x999" * 40 + "/000",
    ],
)
def test_bad_tile_paths(path: str) -> None:
    with pytest.raises(CodecError):
        tiles.parse_tile_path(path)


@given(st.text(max_size=60))
def test_parse_tile_path_random_text(text: str) -> None:
    try:
        tile = tiles.parse_tile_path(text)
    except CodecError:
        return
    assert tile.path() == text


@given(st.integers(min_value=0, max_value=10**15), st.integers(min_value=1, max_value=256))
def test_tile_path_round_trip(index: int, width: int) -> None:
    for level in (ENTRIES_LEVEL, 0, 7):
        tile = Tile(level, index, width)
        assert tiles.parse_tile_path(tile.path()) == tile


def test_tile_rejects_bad_fields() -> None:
    for args in [(-2, 0, 1), (64, 0, 1), (0, -1, 1), (0, 0, 0), (0, 0, 257)]:
        with pytest.raises(ValueError):
            Tile(*args)
    with pytest.raises(ValueError):
        tiles.format_index(-1)


def test_tiles_for_size_matches_spec_example() -> None:
    # tlog-tiles: size 70,000 -> 273 full level-0 tiles, a partial of width 112,
    # one full level-1 tile, a partial level-1 tile of width 17, a level-2 tile of width 1.
    ts = tiles.tiles_for_size(70000)
    level0 = [t for t in ts if t.level == 0]
    assert len(level0) == 274 and level0[-1] == Tile(0, 273, 112)
    assert [t for t in ts if t.level > 0] == [Tile(1, 0, 256), Tile(1, 1, 17), Tile(2, 0, 1)]
    assert tiles.tiles_for_size(256) == [Tile(0, 0, 256), Tile(1, 0, 1)]
    assert tiles.tiles_for_size(0) == []
    with pytest.raises(ValueError):
        tiles.tiles_for_size(-1)


def test_tile_contents() -> None:
    log = make_log(600)
    t0 = tiles.read_tile(log, Tile(0, 1, 256))
    assert t0 == b"".join(leaf_hash(b"e%d" % i) for i in range(256, 512))
    partial = tiles.read_tile(log, Tile(0, 2, 88))
    assert len(partial) == 88 * 32
    level1 = tiles.read_tile(log, Tile(1, 0, 2))
    assert level1[:32] == root_hash([leaf_hash(b"e%d" % i) for i in range(256)])
    assert level1[32:] == root_hash([leaf_hash(b"e%d" % i) for i in range(256, 512)])
    with pytest.raises(ValueError):
        tiles.read_tile(log, Tile(0, 2, 89))  # beyond the log
    with pytest.raises(ValueError):
        tiles.read_tile(log, Tile(ENTRIES_LEVEL, 0, 1))


def test_entry_bundles() -> None:
    log = make_log(300)
    bundle = tiles.read_entry_bundle(log, Tile(ENTRIES_LEVEL, 1, 44))
    assert tiles.decode_entry_bundle(bundle, 44) == [b"e%d" % i for i in range(256, 300)]
    assert bundle[:2] == len(b"e256").to_bytes(2, "big")
    assert tiles.entry_tile_for_index(257, 300) == Tile(ENTRIES_LEVEL, 1, 44)
    assert tiles.entry_tile_for_index(3, 300) == Tile(ENTRIES_LEVEL, 0, 256)
    assert tiles.encode_entry_bundle([b""]) == b"\x00\x00"
    with pytest.raises(ValueError):
        tiles.read_entry_bundle(log, Tile(0, 0, 1))
    with pytest.raises(ValueError):
        tiles.entry_tile_for_index(300, 300)


@pytest.mark.parametrize(
    ("data", "width", "error"),
    [
        (b"\x00", 1, TruncatedError),
        (b"\x00\x05abc", 1, TruncatedError),
        (b"\x00\x01a", 2, TruncatedError),
        (b"\x00\x01a\x00\x01b", 1, CodecError),
        (b"", 1, TruncatedError),
        (b"\x00" * (tiles.MAX_ENTRY_BUNDLE_SIZE + 1), 1, SizeLimitError),
    ],
)
def test_bad_entry_bundles(data: bytes, width: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        tiles.decode_entry_bundle(data, width)


def test_entry_bundle_misuse() -> None:
    with pytest.raises(ValueError):
        tiles.encode_entry_bundle([])
    with pytest.raises(ValueError):
        tiles.encode_entry_bundle([b"x"] * 257)
    with pytest.raises(ValueError):
        tiles.encode_entry_bundle([b"x" * 65536])
    with pytest.raises(ValueError):
        tiles.decode_entry_bundle(b"", 0)


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=256))
def test_decode_entry_bundle_random(data: bytes, width: int) -> None:
    try:
        entries = tiles.decode_entry_bundle(data, width)
    except CodecError:
        return
    assert tiles.encode_entry_bundle(entries) == data


class TileServer:
    """Serves tiles of a real log for one tree size, recording what was fetched."""

    def __init__(self, log: MerkleLog) -> None:
        self.log = log
        self.fetched: list[Tile] = []

    def __call__(self, tile: Tile) -> bytes:
        self.fetched.append(tile)
        return tiles.read_tile(self.log, tile)


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 511, 512, 513, 70000])
def test_proofs_from_tiles_match_log(size: int) -> None:
    log = make_log(size)
    server = TileServer(log)
    root = log.root()
    assert tiles.root_from_tiles(size, server) == root
    for index in sorted({0, 1 % size, size // 2, size - 1}):
        proof = tiles.verify_inclusion_with_tiles(
            leaf_hash(b"e%d" % index), index, size, root, server
        )
        assert proof == log.inclusion_proof(index)
    for old in sorted({1, size // 3 or 1, size - 1 or 1, size}):
        proof = tiles.consistency_proof_from_tiles(old, size, server)
        assert proof == log.consistency_proof(old)
        verify_consistency(old, size, proof, log.root(old), root)
    # Only tiles that exist for this size are ever requested.
    assert set(server.fetched) <= set(tiles.tiles_for_size(size))
    # The planning helpers name exactly what a proof reads.
    index = size // 2
    server.fetched.clear()
    tiles.inclusion_proof_from_tiles(index, size, server)
    assert sorted(set(server.fetched)) == tiles.tiles_for_inclusion_proof(index, size)
    old = size // 3 or 1
    server.fetched.clear()
    tiles.consistency_proof_from_tiles(old, size, server)
    assert sorted(set(server.fetched)) == tiles.tiles_for_consistency_proof(old, size)


def test_inclusion_with_tiles_of_a_bigger_tree() -> None:
    # A client with an older checkpoint reads partial tiles of that size.
    log = make_log(1000)
    server = TileServer(log)
    root = log.root(300)
    tiles.verify_inclusion_with_tiles(leaf_hash(b"e299"), 299, 300, root, server)
    assert Tile(0, 1, 44) in server.fetched


def test_tampered_tile_fails_inclusion() -> None:
    log = make_log(700)
    root = log.root()

    def evil(tile: Tile) -> bytes:
        data = bytearray(tiles.read_tile(log, tile))
        data[0] ^= 1
        return bytes(data)

    with pytest.raises(InclusionProofError):
        tiles.verify_inclusion_with_tiles(leaf_hash(b"e600"), 600, 700, root, evil)


def test_short_tile_is_codec_error() -> None:
    log = make_log(300)

    def short(tile: Tile) -> bytes:
        return tiles.read_tile(log, tile)[:-1]

    with pytest.raises(CodecError):
        tiles.inclusion_proof_from_tiles(5, 300, short)


def test_tile_client_misuse() -> None:
    log = make_log(3)
    server = TileServer(log)
    with pytest.raises(InclusionProofError):
        tiles.inclusion_proof_from_tiles(3, 3, server)
    with pytest.raises(ValueError):
        tiles.consistency_proof_from_tiles(0, 3, server)
    with pytest.raises(ValueError):
        tiles.root_from_tiles(0, server)
    with pytest.raises(ValueError):
        tiles.tiles_for_inclusion_proof(3, 3)
    with pytest.raises(ValueError):
        tiles.tiles_for_consistency_proof(4, 3)


def test_serve_tile() -> None:
    log = make_log(300)
    assert tiles.serve_tile(log, "tile/0/000") == tiles.read_tile(log, Tile(0, 0, 256))
    assert tiles.serve_tile(log, "tile/0/001.p/44") == tiles.read_tile(log, Tile(0, 1, 44))
    assert tiles.serve_tile(log, "tile/0/001.p/10") == tiles.read_tile(log, Tile(0, 1, 10))
    assert tiles.serve_tile(log, "tile/1/000.p/1") == tiles.read_tile(log, Tile(1, 0, 1))
    entries = tiles.serve_tile(log, "tile/entries/001.p/44")
    assert entries is not None
    assert tiles.decode_entry_bundle(entries, 44)[-1] == b"e299"
    for missing in [
        "tile/0/001",
        "tile/0/001.p/45",
        "tile/1/000",
        "tile/2/000.p/1",
        "tile/entries/001",
        "tile/entries/002.p/1",
    ]:
        assert tiles.serve_tile(log, missing) is None
    with pytest.raises(CodecError):
        tiles.serve_tile(log, "tile/0/1")
