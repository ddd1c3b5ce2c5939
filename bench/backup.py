"""Encrypted backups: STREAM throughput against raw ChaCha20-Poly1305, and flat memory.

1. **Throughput** (docs/backup.md): a 1 GiB stream, generated as it goes (one 1 MiB
   random block cut into ``PUSH_SIZE`` pushes, again and again, never the whole stream
   in memory), encrypted by :class:`bkv.backup.stream.Encryptor` and each piece of
   ciphertext pushed at once into a :class:`bkv.backup.stream.Decryptor` (a pipeline,
   as a restore of a fresh backup would run it). The baseline, measured in the same
   run over the same chunks (``CHUNK_SIZE`` slices of the same blocks):
   ``ChaCha20Poly1305.encrypt`` then ``decrypt`` of each chunk with the same nonces,
   and nothing else. Target: ours >= ``TARGET_RATIO`` of raw. Noise (2 shared vCPUs):
   the stream is timed in ``SEGMENTS`` segments, ours and raw alternating in a rotated
   order, and the ratio reported is the median of the per-segment ratios (paired, so
   slow drifts cancel), next to the overall one. A detail line shows 1 MiB pushes (no
   target): each then returns a joined object of about 1 MiB, a fresh mmap'd
   allocation for glibc's malloc, whose page faults cost more than the AEAD; so
   bkv.backup.archive pushes a chunk's worth at a time.
2. **Peak RSS** of a child process (``python -m bench.backup child SIZE DIR``) that
   backs up one file of ``SIZE`` with :func:`bkv.backup.archive.create_backup` and
   restores it with :func:`bkv.backup.archive.restore_backup`, for 10 MiB and 1 GiB
   (``ru_maxrss``, KiB on Linux). Memory is flat if the 1 GiB peak is within
   ``FLAT_SLACK_MIB`` of the 10 MiB one. The files live under ``/var/tmp`` (a disk,
   not a tmpfs in RAM) and are removed afterwards; the restored file is compared to
   the original by SHA-256, outside the child.

The whole run takes about 15 s on the 2-vCPU CI machine (most of it writing and
reading the 1 GiB files).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bkv.backup.stream import CHUNK_SIZE, COUNTER_SIZE, Decryptor, Encryptor

REPO = Path(__file__).resolve().parent.parent
STREAM_BYTES = 1024**3
GENERATOR_SIZE = 1024 * 1024
"""The stream repeats one random block of this size, cut into pushes."""
PUSH_SIZE = CHUNK_SIZE
"""Each push of plaintext; the ciphertext a push returns is pushed into the decryptor whole."""
BIG_PUSH_SIZE = 1024 * 1024
BIG_PUSH_BYTES = 256 * 1024**2
BLOCK_SIZE = 1024 * 1024
"""File writes and hashes in the memory part."""
SEGMENTS = 8
TARGET_RATIO = 0.80
"""Ours >= 80% of the raw AEAD's throughput over the same chunks."""
RSS_SIZES = (10 * 1024**2, 1024**3)
FLAT_SLACK_MIB = 16
TEMP_ROOT = Path("/var/tmp")
KEY = bytes(range(32))


def _ours(encryptor: Encryptor, decryptor: Decryptor, pieces: list[bytes], rounds: int) -> int:
    released = 0
    for _ in range(rounds):
        for piece in pieces:
            released += len(decryptor.push(encryptor.push(piece)))
    return released


def _raw(aead: ChaCha20Poly1305, pieces: list[bytes], rounds: int, counter: int) -> int:
    for _ in range(rounds):
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(piece), CHUNK_SIZE):
                nonce = counter.to_bytes(COUNTER_SIZE, "big") + b"\x00"
                chunk = view[start : start + CHUNK_SIZE]
                aead.decrypt(nonce, aead.encrypt(nonce, chunk, None), None)
                counter += 1
    return counter


def _stream(push_size: int, total: int, segments: int) -> tuple[list[float], list[float]]:
    """Seconds per segment of ours and of raw over a stream of ``total`` bytes."""
    block = os.urandom(GENERATOR_SIZE)
    pieces = [block[start : start + push_size] for start in range(0, len(block), push_size)]
    rounds = total // GENERATOR_SIZE // segments
    encryptor, decryptor = Encryptor(KEY), Decryptor(KEY)
    aead = ChaCha20Poly1305(os.urandom(32))
    counter = released = 0
    times: dict[str, list[float]] = {"ours": [], "raw": []}
    gc.collect()
    gc.disable()
    try:
        for segment in range(segments):
            order = ("ours", "raw") if segment % 2 == 0 else ("raw", "ours")
            for name in order:
                started = time.perf_counter()
                if name == "ours":
                    released += _ours(encryptor, decryptor, pieces, rounds)
                else:
                    counter = _raw(aead, pieces, rounds, counter)
                times[name].append(time.perf_counter() - started)
        released += len(decryptor.push(encryptor.finish())) + len(decryptor.finish())
    finally:
        gc.enable()
    if released != total:
        raise RuntimeError(f"the decryptor released {released} bytes of {total}")
    return times["ours"], times["raw"]


def _throughput() -> list[str]:
    ours, raw = _stream(PUSH_SIZE, STREAM_BYTES, SEGMENTS)
    ours_s, raw_s = sum(ours), sum(raw)
    paired = statistics.median(r / o for r, o in zip(raw, ours, strict=True))
    mib = STREAM_BYTES / 1024**2
    big_ours, big_raw = _stream(BIG_PUSH_SIZE, BIG_PUSH_BYTES, 2)
    big_mib = BIG_PUSH_BYTES / 1024**2
    return [
        f"1 GiB stream, {CHUNK_SIZE // 1024} KiB chunks, {PUSH_SIZE // 1024} KiB pushes (as "
        "bkv.backup.archive pushes), encrypt + decrypt (ciphertext decrypted as it comes)",
        f"   ours: {mib / ours_s:7.0f} MiB/s ({ours_s:.2f} s)   "
        f"raw ChaCha20-Poly1305 over the same chunks: {mib / raw_s:7.0f} MiB/s ({raw_s:.2f} s)",
        f"   ours / raw: {paired:.2f} (median of {SEGMENTS} paired segments; overall "
        f"{raw_s / ours_s:.2f})  {_ok(paired >= TARGET_RATIO)} (>= {TARGET_RATIO:.2f})",
        f"   detail, {BIG_PUSH_SIZE // 1024} KiB pushes ({big_mib:.0f} MiB): ours "
        f"{big_mib / sum(big_ours):.0f} MiB/s, raw {big_mib / sum(big_raw):.0f} MiB/s (each "
        "push returns one joined object above malloc's mmap threshold: page faults)",
    ]


# --- peak RSS of a child doing a backup and a restore --------------------------------


def _write_file(path: Path, size: int) -> None:
    block = os.urandom(BLOCK_SIZE)
    with path.open("wb") as out:
        for start in range(0, size, BLOCK_SIZE):
            out.write(block[: min(BLOCK_SIZE, size - start)])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _child(size: int, directory: Path) -> int:
    """Back up and restore ``directory/data``; print peak RSS and times as JSON."""
    from bkv.backup.archive import create_backup, restore_backup  # noqa: PLC0415

    def peak_kib() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    report = {"after_imports_kib": peak_kib()}
    started = time.perf_counter()
    create_backup([directory / "data"], directory / "data.bkv", KEY)
    report["backup_s"] = time.perf_counter() - started
    report["after_backup_kib"] = peak_kib()
    started = time.perf_counter()
    restore_backup(directory / "data.bkv", directory / "restored", KEY)
    report["restore_s"] = time.perf_counter() - started
    report["after_restore_kib"] = peak_kib()
    report["size"] = size
    print(json.dumps(report))
    return 0


def _rss(size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bkv-bench-backup-", dir=TEMP_ROOT) as tmp:
        directory = Path(tmp)
        _write_file(directory / "data", size)
        done = subprocess.run(
            [sys.executable, "-m", "bench.backup", "child", str(size), str(directory)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.backup child failed: {done.stderr.strip()[-2000:]}")
        report: dict[str, float] = json.loads(done.stdout)
        if _sha256(directory / "restored" / "data") != _sha256(directory / "data"):
            raise RuntimeError("the restored file differs from the original")
        report["backup_bytes"] = (directory / "data.bkv").stat().st_size
    return report


def _memory() -> list[str]:
    reports = [_rss(size) for size in RSS_SIZES]
    lines = [
        f"peak RSS of a child backing up and restoring one file (under {TEMP_ROOT}):",
    ]
    for report in reports:
        mib = report["size"] / 1024**2
        lines.append(
            f"   {mib:6.0f} MiB file: peak {report['after_restore_kib'] / 1024:6.1f} MiB "
            f"(after imports {report['after_imports_kib'] / 1024:.1f}, after backup "
            f"{report['after_backup_kib'] / 1024:.1f}); backup {mib / report['backup_s']:.0f} "
            f"MiB/s, restore {mib / report['restore_s']:.0f} MiB/s; "
            f"backup file +{report['backup_bytes'] - report['size']:,} bytes"
        )
    small, large = reports[0], reports[-1]
    growth = (large["after_restore_kib"] - small["after_restore_kib"]) / 1024
    lines.append(
        f"   1 GiB peak - 10 MiB peak: {growth:+.1f} MiB  "
        f"{_ok(growth <= FLAT_SLACK_MIB)} (flat: <= {FLAT_SLACK_MIB} MiB)"
    )
    return lines


def _ok(good: bool) -> str:
    return "ok" if good else "MISSES"


def run() -> list[str]:
    """Throughput, then memory (see the module docstring)."""
    return [*_throughput(), "", *_memory()]


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        sys.exit(_child(int(sys.argv[2]), Path(sys.argv[3])))
    for line in run():
        print(line)
