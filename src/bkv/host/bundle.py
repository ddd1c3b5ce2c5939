"""The validation bundle the host serves (``GET /v1/bundle?since=<tree size>``).

The host is not trusted with the bundle: it only ships the bytes ``bkv operator
publish`` wrote, plus a consistency proof from the client's last tree size
(``since``) to the tree size of the bundle's checkpoint, so that the client can
check, offline and sans-IO, that the witness log it sees now extends the one it
saw before (RFC 9162 §2.1.4; :func:`bkv.client.bundle.with_consistency_proof`).

- The bundle file is re-read whenever its size, mtime or inode changes (an
  operator replaces it with ``mv`` when a new epoch is published), and decoded
  strictly; a file that is not a bundle is a 503, never served.
- Proofs are fetched from the witness (``GET {witness_url}/log/consistency?old=M&size=N``,
  M < N the two sizes, in either order: a cached bundle may be older than what
  the client saw) and cached: a proof between two tree sizes of an append-only
  log never changes. The proof is not verified here (the client does); a wrong
  one only makes validation fail.
- Without ``witness_url``, or when the witness does not answer, the bundle goes
  out without a proof (``consistency_size`` 0). A client that saw another tree
  size then refuses it (``ConsistencyProofError``): availability only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from bkv.client.bundle import (
    MAX_BUNDLE_SIZE,
    ValidationBundle,
    decode_bundle,
    encode_bundle,
    with_consistency_proof,
)
from bkv.errors import BkvError, CodecError, StorageError
from bkv.tlog.checkpoint import parse_checkpoint
from bkv.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES
from bkv.tlog.note import parse_note

#: Most cached consistency proofs (each at most 63 hashes); the cache is cleared when full.
MAX_CACHED_PROOFS: Final = 1024
#: Largest witness answer to /log/consistency (63 hex hashes and framing).
MAX_PROOF_RESPONSE: Final = 8192
#: C2SP tree sizes are below 2**63.
MAX_TREE_SIZE: Final = (1 << 63) - 1


def parse_since(text: str | None) -> int:
    """The ``since`` query parameter: canonical decimal tree size, 0 if absent (CodecError)."""
    if text is None:
        return 0
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        raise CodecError("since must be a decimal tree size")
    if text != "0" and text.startswith("0"):
        raise CodecError("since has leading zeros")
    value = int(text)
    if value > MAX_TREE_SIZE:
        raise CodecError("since is too large")
    return value


@dataclass(frozen=True)
class LoadedBundle:
    """The bundle file's bytes, decoded, with its checkpoint's tree size."""

    stamp: tuple[int, int, int]
    bundle: ValidationBundle
    tree_size: int

    @property
    def epoch(self) -> int:
        return self.bundle.epoch


def _tree_size(bundle: ValidationBundle) -> int:
    try:
        text, _signatures = parse_note(bundle.checkpoint)
        return parse_checkpoint(text).size
    except BkvError as exc:
        raise StorageError(f"the bundle's checkpoint is malformed: {exc}") from None


class BundleSource:
    """Serves the configured bundle with consistency proofs attached."""

    def __init__(
        self, path: Path, witness_url: str | None, *, timeout_seconds: float = 10.0
    ) -> None:
        self._path = path
        self._witness_url = witness_url
        self._client = httpx.AsyncClient(timeout=timeout_seconds)
        self._loaded: LoadedBundle | None = None
        self._proofs: dict[tuple[int, int], tuple[bytes, ...]] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    def current(self) -> LoadedBundle:
        """The bundle now in the file (StorageError if unreadable or not a bundle)."""
        try:
            info = os.stat(self._path)
        except OSError as exc:
            raise StorageError(f"bundle file unavailable: {type(exc).__name__}") from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if self._loaded is not None and self._loaded.stamp == stamp:
            return self._loaded
        if info.st_size > MAX_BUNDLE_SIZE:
            raise StorageError("bundle file is larger than a bundle can be")
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            raise StorageError(f"bundle file unavailable: {type(exc).__name__}") from None
        try:
            bundle = decode_bundle(data)
        except CodecError as exc:
            raise StorageError(f"bundle file is not a validation bundle: {exc}") from None
        self._loaded = LoadedBundle(stamp, bundle, _tree_size(bundle))
        return self._loaded

    async def for_client(self, since: int) -> tuple[bytes, int]:
        """(bundle bytes, epoch) for a client whose last seen tree size is ``since``."""
        loaded = self.current()
        return await self._with_proof(loaded, since), loaded.epoch

    async def _with_proof(self, loaded: LoadedBundle, since: int) -> bytes:
        if since in (0, loaded.tree_size):
            # Nothing seen yet, or the same tree: the client compares roots, no proof.
            return encode_bundle(loaded.bundle)
        proof = await self._consistency_proof(
            min(since, loaded.tree_size), max(since, loaded.tree_size)
        )
        if proof is None:
            return encode_bundle(loaded.bundle)
        return encode_bundle(with_consistency_proof(loaded.bundle, since, proof))

    async def _consistency_proof(self, old: int, new: int) -> tuple[bytes, ...] | None:
        cached = self._proofs.get((old, new))
        if cached is not None or self._witness_url is None:
            return cached
        url = f"{self._witness_url}/log/consistency"
        try:
            response = await self._client.get(url, params={"old": str(old), "size": str(new)})
        except httpx.HTTPError:
            return None
        if response.status_code != 200 or len(response.content) > MAX_PROOF_RESPONSE:
            return None
        proof = _proof_from_json(response)
        if proof is None:
            return None
        if len(self._proofs) >= MAX_CACHED_PROOFS:
            self._proofs.clear()
        self._proofs[(old, new)] = proof
        return proof


def _proof_from_json(response: httpx.Response) -> tuple[bytes, ...] | None:
    """The hashes of a ``{"proof": [hex, ...]}`` answer, or None if it is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    hashes = data.get("proof") if isinstance(data, dict) else None
    if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
        return None
    proof: list[bytes] = []
    for value in hashes:
        if not isinstance(value, str) or len(value) != 2 * HASH_SIZE:
            return None
        try:
            proof.append(bytes.fromhex(value))
        except ValueError:
            return None
    return tuple(proof)
