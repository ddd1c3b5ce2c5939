"""OPAQUE configuration (RFC 9807 section 4): the fixed suite and the two choices we expose.

Suite (fixed, RFC 9807 section 4 / Appendix C "ristretto255-SHA512"):
OPRF ristretto255-SHA512 (RFC 9497), Hash SHA-512, KDF HKDF-SHA512,
MAC HMAC-SHA512, AKE group ristretto255, Nh = Nx = Nm = 64, Npk = Nsk = 32,
Nok = 32, Nn = Nseed = 32.

Exposed: the application ``context`` bound into the AKE preamble (section
6.4.3) and the KSF (section 4.3). Client and server must agree on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bkv.crypto import hkdf, ristretto
from bkv.crypto.ksf import Argon2id, Ksf

NH = hkdf.HASH_SIZE
"""Output size of Hash, and of the KSF."""
NX = hkdf.HASH_SIZE
"""Output size of the KDF's Extract."""
NM = hkdf.HASH_SIZE
"""Output size of the MAC."""
NPK = ristretto.ELEMENT_SIZE
"""Size of an AKE public key / OPRF element."""
NSK = ristretto.SCALAR_SIZE
"""Size of an AKE private key."""
NOE = ristretto.ELEMENT_SIZE
"""Size of a serialized OPRF group element."""
NOK = ristretto.SCALAR_SIZE
"""Size of an OPRF private key (and of the seed it is derived from)."""
NN = 32
"""Nonce size (RFC 9807 section 4)."""
NSEED = 32
"""Private key seed size (RFC 9807 section 4)."""

MAX_CONTEXT_SIZE = 65535
"""The context is prefixed by two length bytes in the preamble."""
MAX_IDENTITY_SIZE = 65535
"""Identities are <1..2^16-1> (RFC 9807 section 6.1.1 CleartextCredentials)."""


@dataclass(frozen=True)
class Config:
    """The OPAQUE parameters client and server must share.

    ``context``: application context string bound into every handshake
    (RFC 9807 section 6.4.3); ``ksf``: the key stretching function, run by the
    client only. It defaults to Argon2id with RFC 9106's second recommended
    parameters: a default must never leave passwords unstretched. ``Identity``
    is for the RFC test vectors and for server-side configs, where it is unused.
    """

    context: bytes = b""
    ksf: Ksf = field(default_factory=Argon2id)

    def __post_init__(self) -> None:
        if len(self.context) > MAX_CONTEXT_SIZE:
            raise ValueError(f"context longer than {MAX_CONTEXT_SIZE} bytes")
