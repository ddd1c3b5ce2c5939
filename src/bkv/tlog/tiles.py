"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): serving and reading a log as tiles.

Tiles have height 8 (:data:`TILE_HEIGHT`): tile ``(L, N)`` holds up to 256
consecutive hashes of tree level ``8 * L``, namely the tree hashes of the
complete subtrees ``(8L, 256N) .. (8L, 256N + 255)``. A tree of size ``s`` has,
at level ``L``, ``s >> 8L`` complete hashes; the last tile of a level is
*partial* (width ``(s >> 8L) % 256``) and is served at ``.p/<W>``.

Paths (relative to the log's prefix):

- ``tile/<L>/<N>[.p/<W>]`` — hash tiles, ``N`` in 3-digit groups, all but the
  last prefixed with ``x`` (1234067 -> ``x001/x234/067``);
- ``tile/entries/<N>[.p/<W>]`` — entry bundles: each entry as a big-endian
  uint16 length followed by the entry bytes.

Server side: :func:`serve_tile` (request path -> bytes or None), built on
:func:`parse_tile_path`, :func:`read_tile`, :func:`read_entry_bundle`;
:func:`tiles_for_size` lists the tiles of a tree size. Client side (sans-IO, tiles are untrusted
input): :func:`inclusion_proof_from_tiles`, :func:`consistency_proof_from_tiles`
and :func:`verify_inclusion_with_tiles`, given a ``TileReader`` callable that
returns the bytes of a tile. Proofs computed from tiles are always checked
against a verified checkpoint root, so a wrong tile can only make a proof
fail, never pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bkv.errors import CodecError, InclusionProofError, SizeLimitError, TruncatedError
from bkv.tlog.log import MAX_ENTRY_SIZE, MerkleLog
from bkv.tlog.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
    consistency_proof_ranges,
    fold_subtrees,
    inclusion_proof_ranges,
    node_hash,
    subtree_decomposition,
    verify_inclusion,
)

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes (or entries) in a full tile: 256."""

MAX_TILE_LEVEL = 63
"""tlog-tiles: L is between 0 and 63."""

MAX_TILE_PATH_SIZE = 128
"""Longest tile path accepted by :func:`parse_tile_path`."""

MAX_ENTRY_BUNDLE_SIZE = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)
"""Largest possible entry bundle (256 maximal entries)."""

ENTRIES_LEVEL = -1
"""The ``level`` of an entry-bundle :class:`Tile` (``tile/entries/...``)."""

TileReader = Callable[["Tile"], bytes]
"""Returns the bytes served at ``tile.path()`` (raise any BkvError if unavailable)."""


@dataclass(frozen=True, order=True)
class Tile:
    """A tile: ``level`` (:data:`ENTRIES_LEVEL` for entry bundles), ``index`` and ``width``."""

    level: int
    index: int
    width: int

    def __post_init__(self) -> None:
        if not ENTRIES_LEVEL <= self.level <= MAX_TILE_LEVEL:
            raise ValueError("tile level out of range")
        if self.index < 0 or not 1 <= self.width <= TILE_WIDTH:
            raise ValueError("tile index or width out of range")

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    def path(self) -> str:
        """The tile's path, ``tile/<L>/<N>[.p/<W>]`` or ``tile/entries/<N>[.p/<W>]``."""
        return tile_path(self)


def format_index(index: int) -> str:
    """Encode a tile index as 3-digit path elements (1234067 -> ``x001/x234/067``)."""
    if index < 0:
        raise ValueError("negative tile index")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def tile_path(tile: Tile) -> str:
    """Path of ``tile`` relative to the log prefix."""
    level = "entries" if tile.level == ENTRIES_LEVEL else str(tile.level)
    suffix = f".p/{tile.width}" if tile.is_partial else ""
    return f"tile/{level}/{format_index(tile.index)}{suffix}"


def parse_tile_path(path: str) -> Tile:
    """Parse a tile path strictly (CodecError); ``path(parse(p)) == p`` for every accepted p."""
    if len(path) > MAX_TILE_PATH_SIZE or not path.startswith("tile/"):
        raise CodecError("not a tile path")
    parts = path.split("/")[1:]
    width = TILE_WIDTH
    if len(parts) >= 2 and parts[-2].endswith(".p"):
        width = _parse_small_decimal(parts[-1], "tile width")
        if not 1 <= width < TILE_WIDTH:
            raise CodecError("partial tile width out of range")
        parts = [*parts[:-2], parts[-2][:-2]]
    if len(parts) < 2:
        raise CodecError("tile path has no index")
    level_text, groups = parts[0], parts[1:]
    level = ENTRIES_LEVEL if level_text == "entries" else _parse_small_decimal(level_text, "level")
    if level > MAX_TILE_LEVEL:
        raise CodecError("tile level out of range")
    index = 0
    for i, group in enumerate(groups):
        want_x = i < len(groups) - 1
        if want_x != group.startswith("x"):
            raise CodecError("tile index element has a misplaced 'x'")
        digits = group[1:] if want_x else group
        if len(digits) != 3 or not all("0" <= c <= "9" for c in digits):
            raise CodecError("tile index element is not three digits")
        index = index * 1000 + int(digits)
    tile = Tile(level, index, width)
    if tile_path(tile) != path:
        # e.g. a leading "x000/" element.
        raise CodecError("tile path is not canonical")
    return tile


def _parse_small_decimal(text: str, what: str) -> int:
    if not text or len(text) > 3 or not all("0" <= c <= "9" for c in text):
        raise CodecError(f"{what} is not a decimal")
    if text != "0" and text.startswith("0"):
        raise CodecError(f"{what} has leading zeros")
    return int(text)


# --- server side --------------------------------------------------------------


def tiles_for_size(size: int) -> list[Tile]:
    """Every hash tile of a tree of ``size`` leaves (full and the partial ones), level by level."""
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError("size out of range")
    tiles: list[Tile] = []
    level = 0
    while (count := size >> (TILE_HEIGHT * level)) > 0:
        full, rest = divmod(count, TILE_WIDTH)
        tiles.extend(Tile(level, n, TILE_WIDTH) for n in range(full))
        if rest:
            tiles.append(Tile(level, full, rest))
        level += 1
    return tiles


def read_tile(log: MerkleLog, tile: Tile) -> bytes:
    """The bytes of a hash tile, read from ``log`` (ValueError if the log is too small)."""
    if tile.level == ENTRIES_LEVEL:
        raise ValueError("use read_entry_bundle for entry tiles")
    start = tile.index * TILE_WIDTH
    return b"".join(log.subtree_hashes(TILE_HEIGHT * tile.level, start, start + tile.width))


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Concatenate entries, each prefixed by its big-endian uint16 length."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise ValueError("an entry bundle holds 1 to 256 entries")
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_SIZE:
            raise ValueError("entry longer than 65535 bytes")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def decode_entry_bundle(data: bytes, width: int) -> list[bytes]:
    """Split an entry bundle that must hold exactly ``width`` entries (CodecError)."""
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError("width out of range")
    if len(data) > MAX_ENTRY_BUNDLE_SIZE:
        raise SizeLimitError("entry bundle too large")
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(entries) == width:
            raise CodecError("entry bundle has more entries than its width")
        if pos + 2 > len(data):
            raise TruncatedError("entry bundle ends inside a length prefix")
        length = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + length > len(data):
            raise TruncatedError("entry bundle ends inside an entry")
        entries.append(data[pos : pos + length])
        pos += length
    if len(entries) != width:
        raise TruncatedError("entry bundle has fewer entries than its width")
    return entries


def read_entry_bundle(log: MerkleLog, tile: Tile) -> bytes:
    """The bytes of ``tile/entries/<N>[.p/<W>]`` from ``log``."""
    if tile.level != ENTRIES_LEVEL:
        raise ValueError("not an entry tile")
    start = tile.index * TILE_WIDTH
    return encode_entry_bundle(log.entries(start, start + tile.width))


def serve_tile(log: MerkleLog, path: str) -> bytes | None:
    """Bytes for a ``tile/...`` request path, or ``None`` if that tile does not exist (404).

    Raises CodecError for a malformed path. A partial tile is served whenever
    the log has at least that many hashes (or entries) at that level, so the
    partial tiles of every published checkpoint stay available.
    """
    tile = parse_tile_path(path)
    # Entries and level-0 hashes both number log.size; level L has size >> 8L hashes.
    available = log.size >> (TILE_HEIGHT * max(tile.level, 0))
    if tile.index * TILE_WIDTH + tile.width > available:
        return None
    if tile.level == ENTRIES_LEVEL:
        return read_entry_bundle(log, tile)
    return read_tile(log, tile)


def entry_tile_for_index(index: int, size: int) -> Tile:
    """The entry bundle that holds entry ``index`` in a tree of ``size``."""
    if not 0 <= index < size:
        raise ValueError("index outside the tree")
    n = index // TILE_WIDTH
    return Tile(ENTRIES_LEVEL, n, min(TILE_WIDTH, size - n * TILE_WIDTH))


# --- client side --------------------------------------------------------------


def _tile_for_node(level: int, index: int, size: int) -> tuple[Tile, int, int]:
    """Where complete subtree (level, index) lives: tile, first slot, slot count.

    A node at level ``8L + r`` is the hash of ``2**r`` adjacent hashes of tile
    level ``L`` (tlog-tiles: levels between tile levels are recomputed).
    """
    tile_level, r = divmod(level, TILE_HEIGHT)
    first = index << r
    n = first // TILE_WIDTH
    width = min(TILE_WIDTH, (size >> (TILE_HEIGHT * tile_level)) - n * TILE_WIDTH)
    return Tile(tile_level, n, width), first % TILE_WIDTH, 1 << r


class _TileHashes:
    """Reads and caches tiles for one tree size; recomputes in-between levels."""

    def __init__(self, size: int, reader: TileReader) -> None:
        self._size = size
        self._reader = reader
        self._tiles: dict[Tile, bytes] = {}

    def _tile(self, tile: Tile) -> bytes:
        data = self._tiles.get(tile)
        if data is None:
            data = self._reader(tile)
            if not isinstance(data, bytes) or len(data) != tile.width * HASH_SIZE:
                raise CodecError(f"{tile.path()} is not {tile.width} hashes")
            self._tiles[tile] = data
        return data

    def node(self, level: int, index: int) -> bytes:
        tile, slot, count = _tile_for_node(level, index, self._size)
        data = self._tile(tile)
        hashes = [data[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(slot, slot + count)]
        while len(hashes) > 1:
            hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    def range_hash(self, lo: int, hi: int) -> bytes:
        return fold_subtrees([self.node(lv, k) for lv, k in subtree_decomposition(lo, hi)])


def _tiles_for_ranges(ranges: Sequence[tuple[int, int]], size: int) -> list[Tile]:
    needed = {
        _tile_for_node(level, index, size)[0]
        for lo, hi in ranges
        for level, index in subtree_decomposition(lo, hi)
    }
    return sorted(needed)


def tiles_for_inclusion_proof(index: int, size: int) -> list[Tile]:
    """The hash tiles an inclusion proof for ``index`` in a tree of ``size`` reads.

    Lets an HTTP client fetch them in parallel before calling
    :func:`verify_inclusion_with_tiles` with a reader over what it fetched.
    """
    if not 0 <= index < size <= MAX_TREE_SIZE:
        raise ValueError("index must be in [0, size)")
    return _tiles_for_ranges(inclusion_proof_ranges(index, size), size)


def tiles_for_consistency_proof(old_size: int, new_size: int) -> list[Tile]:
    """The hash tiles (of ``new_size``) a consistency proof from ``old_size`` reads."""
    if not 0 < old_size <= new_size <= MAX_TREE_SIZE:
        raise ValueError("need 0 < old_size <= new_size")
    return _tiles_for_ranges(consistency_proof_ranges(old_size, new_size), new_size)


def inclusion_proof_from_tiles(index: int, size: int, reader: TileReader) -> list[bytes]:
    """Compute PATH(index, D[0:size]) from tiles. Not verified: check it against a root."""
    if not 0 <= index < size <= MAX_TREE_SIZE:
        raise InclusionProofError(f"leaf index {index} is not inside a tree of size {size}")
    hashes = _TileHashes(size, reader)
    return [hashes.range_hash(lo, hi) for lo, hi in inclusion_proof_ranges(index, size)]


def consistency_proof_from_tiles(old_size: int, new_size: int, reader: TileReader) -> list[bytes]:
    """Compute PROOF(old_size, D[0:new_size]) from the tiles of ``new_size``. Not verified."""
    if not 0 < old_size <= new_size <= MAX_TREE_SIZE:
        raise ValueError("need 0 < old_size <= new_size")
    hashes = _TileHashes(new_size, reader)
    return [hashes.range_hash(lo, hi) for lo, hi in consistency_proof_ranges(old_size, new_size)]


def root_from_tiles(size: int, reader: TileReader) -> bytes:
    """Compute the tree hash of ``size`` leaves from tiles. Not verified.

    Comparing the result with a signed checkpoint's root authenticates only the
    hashes this computation read: for a full 256-leaf block that is its hash in
    the level-1 tile, not the 256 level-0 hashes below it. An auditor that then
    trusts tile/0/N or tile/entries/N must rehash the entries and fold them to
    the signed root itself (as :mod:`bkv.audit.verify` does); a client proving
    one inclusion should use :func:`verify_inclusion_with_tiles` instead.
    """
    if not 0 < size <= MAX_TREE_SIZE:
        raise ValueError("size must be positive")
    return _TileHashes(size, reader).range_hash(0, size)


def verify_inclusion_with_tiles(
    leaf_hash: bytes, index: int, size: int, root: bytes, reader: TileReader
) -> list[bytes]:
    """Fetch the tiles an inclusion proof needs, verify it against ``root``; return the proof.

    ``size`` and ``root`` must come from a verified checkpoint. Raises
    InclusionProofError (or CodecError for malformed tiles).
    """
    proof = inclusion_proof_from_tiles(index, size, reader)
    verify_inclusion(leaf_hash, index, size, proof, root)
    return proof
