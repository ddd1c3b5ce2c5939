"""The host-to-HSM link: every request to an HSM carries a MAC under a key only its host has.

The host is where bearer tokens and rate limits are enforced
(docs/threat-model.md); an HSM port that answered anyone would let a local
account (or the network) skip both, destroy any record with a run of wrong
guesses, and tell registered accounts from unregistered ones. So the HSM
answers only requests authenticated with a 32-byte *link key* that it shares
with its host (a key file, mode 0600, made by ``bkv hsm init``;
:mod:`bkv.keystore.link_key`). The host sends, on every request::

    bkv-link-mac: hex(HMAC-SHA256(link_key, LINK_MAC_CONTEXT
                                  || u8(len(method)) || method
                                  || u16(len(target)) || target
                                  || body))

HMAC as in RFC 2104 with SHA-256; ``target`` is the request target as sent
(path and query), ``u8``/``u16`` are big-endian lengths, so no two requests
share a MAC input. The HSM checks the MAC (constant-time compare) before it
parses anything, and refuses a request without a valid one with the same
answer whatever the route, the method or the reason.

What the MAC does not give: confidentiality (the vault's requests and answers
are sealed end to end between client and HSM anyway, docs/protocol.md) and
replay protection. Replaying a request is something the host itself may do;
the HSM's message API is safe under replay by construction
(:mod:`bkv.hsm.app`, docs/threat-model.md). Whoever can see the link can
replay, so a link that leaves the machine belongs on a network the operator
trusts as much as the host (``allow_remote``, docs/operations.md).

Sans-IO: bytes in, bytes out; reading the key file is :mod:`bkv.keystore.link_key`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from bkv.errors import UnauthorizedError

LINK_KEY_SIZE: Final = 32
LINK_MAC_HEADER: Final = "bkv-link-mac"
LINK_MAC_CONTEXT: Final = b"bkv hsm link v1\x00"
"""Domain separation: this key and MAC are for nothing else."""

MAC_SIZE: Final = 32
MAX_METHOD: Final = 16
MAX_TARGET: Final = 2048


def link_mac(key: bytes, method: str, target: bytes, body: bytes) -> bytes:
    """The 32-byte MAC of one request (see the module docstring)."""
    if not isinstance(key, bytes) or len(key) != LINK_KEY_SIZE:
        raise ValueError("a link key is exactly 32 bytes")
    if not isinstance(target, bytes) or not isinstance(body, bytes):
        raise TypeError("the target and body are bytes")
    method_bytes = method.encode("ascii")
    if not 0 < len(method_bytes) <= MAX_METHOD or not 0 < len(target) <= MAX_TARGET:
        raise ValueError("the method or target is empty or too long")
    message = b"".join(
        (
            LINK_MAC_CONTEXT,
            len(method_bytes).to_bytes(1, "big"),
            method_bytes,
            len(target).to_bytes(2, "big"),
            target,
            body,
        )
    )
    return hmac.new(key, message, hashlib.sha256).digest()


def link_mac_header(key: bytes, method: str, target: bytes, body: bytes) -> str:
    """The value of the ``bkv-link-mac`` header for one request (64 lowercase hex digits)."""
    return link_mac(key, method, target, body).hex()


def parse_link_mac(value: bytes | None) -> bytes:
    """The MAC in a ``bkv-link-mac`` header; :class:`UnauthorizedError` if absent or malformed."""
    if value is None:
        raise UnauthorizedError("the request carries no link MAC")
    if len(value) != 2 * MAC_SIZE or not _is_lower_hex(value):
        raise UnauthorizedError("the link MAC is not 64 lowercase hex digits")
    return bytes.fromhex(value.decode("ascii"))


def check_link_mac(key: bytes, method: str, target: bytes, body: bytes, presented: bytes) -> None:
    """Refuse (:class:`UnauthorizedError`) a request whose MAC is not the link key's."""
    if not _fits(method, target):
        raise UnauthorizedError("the request's method or target cannot carry a link MAC")
    expected = link_mac(key, method, target, body)
    if not hmac.compare_digest(expected, presented):
        raise UnauthorizedError("the link MAC does not match")


def _fits(method: str, target: bytes) -> bool:
    return method.isascii() and 0 < len(method) <= MAX_METHOD and 0 < len(target) <= MAX_TARGET


def _is_lower_hex(value: bytes) -> bool:
    return all(c in b"0123456789abcdef" for c in value)
