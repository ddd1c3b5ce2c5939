"""Key stretching functions (KSF) for OPAQUE (RFC 9807 section 4.3).

``Stretch(msg)`` hardens the OPRF output against offline guessing by anyone who
learns the OPRF key and a record (an HSM compromise): each guess then costs one
KSF evaluation. Its output is concatenated with the OPRF output and fed to
HKDF-Extract (RFC 9807 section 6.3.2.1), so the output length is Nh = 64.

- :class:`Identity` is the KSF of every RFC 9807 Appendix C vector (tests only).
- :class:`Argon2id` (RFC 9106) is for real use. Default parameters: RFC 9106
  section 4, second recommended option (m = 64 MiB, t = 3, p = 4, 128-bit salt).

The salt. RFC 9807 section 4.3 instantiates Argon2id with a fixed all-zero salt
(``S = zeroes(16)``): the KSF input is already a per-user pseudorandom value
(the OPRF output, keyed by a per-credential OPRF key), so a salt adds nothing
and a random one would have to be stored where the client can fetch it before
login. We do the same: the default salt is 16 zero bytes. It is configurable
only so that configurations of other implementations (e.g. opaque-ke, which
also hashes with a zero salt of ``argon2::RECOMMENDED_SALT_LEN`` = 16 bytes)
can be matched byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id as _Argon2idKdf

from bkv.crypto import hkdf

OUTPUT_SIZE = hkdf.HASH_SIZE
"""Nh: the KSF output length for ristretto255-SHA512."""

MIN_SALT_SIZE = 8  # RFC 9106 section 3.1: salt of 8 to 2^32-1 bytes
MAX_SALT_SIZE = 64
MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB: anything larger is a configuration mistake
MAX_ITERATIONS = 64
MAX_LANES = 64


class Ksf(Protocol):
    """A KSF: a deterministic function from the OPRF output to Nh bytes."""

    def stretch(self, msg: bytes) -> bytes:
        """Stretch(msg) of RFC 9807 section 4.3."""
        ...


@dataclass(frozen=True)
class Identity:
    """The identity KSF: Stretch(msg) = msg. Only for test vectors: it adds no hardening."""

    def stretch(self, msg: bytes) -> bytes:
        """Return ``msg`` unchanged."""
        return msg


@dataclass(frozen=True)
class Argon2id:
    """Argon2id (RFC 9106) with output length Nh = 64 and no secret or associated data.

    Defaults: RFC 9106 section 4, second recommended option (memory-constrained
    environments): 64 MiB, 3 passes, 4 lanes; salt = 16 zero bytes as in RFC
    9807 section 4.3 (see the module docstring for why the salt may be fixed).
    """

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4
    salt: bytes = bytes(16)

    def __post_init__(self) -> None:
        if not 1 <= self.lanes <= MAX_LANES:
            raise ValueError(f"Argon2id lanes must be 1..{MAX_LANES}")
        if not 8 * self.lanes <= self.memory_kib <= MAX_MEMORY_KIB:
            raise ValueError("Argon2id memory must be at least 8 KiB per lane and at most 4 GiB")
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"Argon2id iterations must be 1..{MAX_ITERATIONS}")
        if not MIN_SALT_SIZE <= len(self.salt) <= MAX_SALT_SIZE:
            raise ValueError(f"Argon2id salt must be {MIN_SALT_SIZE}..{MAX_SALT_SIZE} bytes")

    def stretch(self, msg: bytes) -> bytes:
        """Argon2id(msg) with this configuration, Nh bytes."""
        kdf = _Argon2idKdf(
            salt=self.salt,
            length=OUTPUT_SIZE,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(msg)
