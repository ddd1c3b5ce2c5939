"""The validation bundle the host serves (``GET /v1/bundle?since=<tree size>``).

The host is not trusted with the bundle: it only ships the bytes ``bkv operator
publish`` wrote, plus a consistency proof from the client's last tree size
(``since``) to the tree size of the bundle's checkpoint, so that the client can
check, offline and sans-IO, that the witness log it sees now extends the one it
saw before (RFC 9162 §2.1.4; :func:`bkv.protocol.bundle.with_consistency_proof`).

- The bundle file is re-read whenever its size, mtime or inode changes (an
  operator replaces it with ``mv`` when a new epoch is published), and decoded
  strictly; a file that is not a bundle is a 503, never served.
- Proofs are fetched from the witness (``GET {witness_url}/log/consistency?old=M&size=N``,
  M = ``since`` < N = the bundle's tree size), each answer read as a stream and
  dropped past :data:`MAX_PROOF_RESPONSE` bytes and parsed with the bounded
  JSON parser (:func:`bkv.wire.strict_json.parse_json_object`). A proof is
  served (and cached: a proof between two tree heads of an append-only log
  never changes) only after it verifies (RFC 9162 §2.1.4.2) from the root of
  the checkpoint the witness signed at size M (``GET
  {witness_url}/checkpoints/M``: the bundle's origin, size M, and a signature
  that verifies under the log's key, ``log_verifier_key`` of the host
  configuration -- a key name and ID anyone can copy into a signature line
  prove nothing) to the root of the bundle's own checkpoint. The cache is
  keyed by both sizes *and* the bundle's root, so a garbled or lying answer is
  never cached and never outlives the bundle it was checked against. The
  client still verifies everything itself; this only keeps one bad answer
  from being served to every client.
- A ``since`` above the bundle's tree size (the client saw a newer log than
  this bundle's) gets the bundle without a proof and the witness is not asked:
  a client-chosen size must not make the host fetch arbitrary proofs.
- Without ``witness_url``, or when the witness does not answer or its answer
  does not verify, the bundle goes out without a proof (``consistency_size``
  0). A client that saw another tree size then refuses it
  (``ConsistencyProofError``): availability only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from bkv.errors import BkvError, CodecError, StorageError
from bkv.protocol.bundle import (
    MAX_BUNDLE_SIZE,
    ValidationBundle,
    decode_bundle,
    encode_bundle,
    with_consistency_proof,
)
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint, parse_decimal
from bkv.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES, verify_consistency
from bkv.tlog.note import MAX_NOTE_SIZE, parse_note, parse_verifier_key
from bkv.wire.strict_json import parse_json_object

#: Most cached consistency proofs (each at most 63 hashes); the cache is cleared when full.
MAX_CACHED_PROOFS: Final = 1024
#: Largest witness answer to /log/consistency (63 hex hashes and framing).
MAX_PROOF_RESPONSE: Final = 8192


def parse_since(text: str | None) -> int:
    """The ``since`` query parameter: canonical decimal tree size, 0 if absent (CodecError)."""
    if text is None:
        return 0
    return parse_decimal(text, "since", CodecError)


@dataclass(frozen=True)
class LoadedBundle:
    """The bundle file's bytes, decoded, with its checkpoint's tree size."""

    stamp: tuple[int, int, int]
    bundle: ValidationBundle
    checkpoint: Checkpoint

    @property
    def epoch(self) -> int:
        return self.bundle.epoch

    @property
    def tree_size(self) -> int:
        return self.checkpoint.size


def _checkpoint(bundle: ValidationBundle) -> Checkpoint:
    try:
        text, _ = parse_note(bundle.checkpoint)
        return parse_checkpoint(text)
    except BkvError as exc:
        raise StorageError(f"the bundle's checkpoint is malformed: {exc}") from None


class BundleSource:
    """Serves the configured bundle with consistency proofs attached.

    ``witness_url`` (where proofs are fetched) needs ``log_verifier_key``, the C2SP
    verifier key of the witness log: an old checkpoint's root is used only once its
    signature verifies under it (ValueError without it, NoteError if malformed).
    """

    def __init__(
        self,
        path: Path,
        witness_url: str | None,
        *,
        timeout_seconds: float = 10.0,
        log_verifier_key: str | None = None,
    ) -> None:
        if witness_url is not None and log_verifier_key is None:
            raise ValueError("fetching proofs from the witness needs the log's verifier key")
        self._path = path
        self._witness_url = witness_url
        self._client = httpx.AsyncClient(timeout=timeout_seconds)
        self._loaded: LoadedBundle | None = None
        # Keyed by (old size, new size, new root): only proofs verified against that root.
        self._proofs: dict[tuple[int, int, bytes], tuple[bytes, ...]] = {}
        self._log_verifier = (
            None if log_verifier_key is None else parse_verifier_key(log_verifier_key)
        )

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
        self._loaded = LoadedBundle(stamp, bundle, _checkpoint(bundle))
        return self._loaded

    async def for_client(self, since: int) -> tuple[bytes, int]:
        """(bundle bytes, epoch) for a client whose last seen tree size is ``since``."""
        loaded = self.current()
        return await self._with_proof(loaded, since), loaded.epoch

    async def _with_proof(self, loaded: LoadedBundle, since: int) -> bytes:
        if since in (0, loaded.tree_size) or since > loaded.tree_size:
            # Nothing seen yet, or the same tree (the client compares roots): no proof.
            # Above the bundle's size: the witness is not asked (see the module doc).
            return encode_bundle(loaded.bundle)
        proof = await self._consistency_proof(loaded, since)
        if proof is None:
            return encode_bundle(loaded.bundle)
        return encode_bundle(with_consistency_proof(loaded.bundle, since, proof))

    async def _consistency_proof(self, loaded: LoadedBundle, old: int) -> tuple[bytes, ...] | None:
        new, new_root = loaded.tree_size, loaded.checkpoint.root_hash
        cached = self._proofs.get((old, new, new_root))
        if cached is not None or self._witness_url is None:
            return cached
        old_note = await self._get_capped(f"/checkpoints/{old}", {}, MAX_NOTE_SIZE)
        old_root = None if old_note is None else self._old_root(old_note, loaded, old)
        if old_root is None:
            return None
        body = await self._get_capped(
            "/log/consistency", {"old": str(old), "size": str(new)}, MAX_PROOF_RESPONSE
        )
        proof = None if body is None else _proof_from_json(body)
        if proof is None:
            return None
        try:
            verify_consistency(old, new, proof, old_root, new_root)
        except BkvError:
            return None  # a wrong proof is never cached nor served
        if len(self._proofs) >= MAX_CACHED_PROOFS:
            self._proofs.clear()
        self._proofs[(old, new, new_root)] = proof
        return proof

    def _old_root(self, note: bytes, loaded: LoadedBundle, old: int) -> bytes | None:
        """Root of the witness's checkpoint at size ``old``, if the log's key signed it."""
        if self._log_verifier is None:
            return None
        try:
            # The bundle's origin, and a signature that verifies under the log's key.
            checkpoint = open_checkpoint(note, loaded.checkpoint.origin, [self._log_verifier])
        except BkvError:
            return None
        return checkpoint.root_hash if checkpoint.size == old else None

    async def _get_capped(self, path: str, params: dict[str, str], cap: int) -> bytes | None:
        """The witness's 200 answer at ``path``, read as a stream; None past ``cap`` bytes."""
        url = f"{self._witness_url}{path}"
        body = bytearray()
        try:
            async with self._client.stream("GET", url, params=params) as response:
                if response.status_code != 200:
                    return None
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > cap:
                        return None
        except httpx.HTTPError:
            return None
        return bytes(body)


def _proof_from_json(body: bytes) -> tuple[bytes, ...] | None:
    """The hashes of a ``{"proof": [hex, ...]}`` answer, or None if it is not one."""
    try:
        data = parse_json_object(body, MAX_PROOF_RESPONSE)
    except CodecError:
        return None
    hashes = data.get("proof")
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
