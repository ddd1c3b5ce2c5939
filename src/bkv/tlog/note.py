"""C2SP signed-note (https://c2sp.org/signed-note), Ed25519 (signature type 0x01).

A note is UTF-8 text ending in a newline, a blank line, and one or more
signature lines ``"— <key name> <base64(key ID || signature)>\\n"``. The key ID
is ``SHA-256(name || 0x0A || type || public key)[:4]`` read big-endian.

Parsing is strict; everything below raises :class:`bkv.errors.NoteError`:

- larger than :data:`MAX_NOTE_SIZE`, not UTF-8, ASCII control characters
  other than newline (so no ``\\r``), text not ending in a newline, no
  signature block, malformed signature lines, key names that are empty, too
  long (:data:`MAX_KEY_NAME_SIZE`) or contain spaces or ``+``;
- base64 that is not the one canonical RFC 4648 encoding, a signature shorter
  than its key ID or longer than :data:`MAX_SIGNATURE_SIZE`;
- more than :data:`MAX_SIGNATURES` signature lines;
- two signature lines with the same (name, key ID);
- a signature from a known key (name and key ID both match a verifier) that
  does not verify;
- no signature from a known key.

Signatures from unknown keys are ignored (kept in ``Note.unverified``), as
the spec requires, even if they share the name *or* the ID of a known key.

Verifiers and signers are small protocols (:class:`NoteVerifier`,
:class:`NoteSigner`) so the cosignature/v1 keys of :mod:`bkv.tlog.cosignature`
plug into the same :func:`open_note` / :func:`sign_note`. A signer can wrap any
object with ``public_key() -> bytes`` and ``sign(message) -> bytes`` (e.g. a
:mod:`bkv.keystore` Ed25519 signer backed by PKCS#11).

Example::

    skey, vkey = generate_signer_key("example.com/log")
    data = sign_note("hello\\n", [parse_signer_key(skey)])
    note = open_note(data, [parse_verifier_key(vkey)])
    assert note.text == "hello\\n"
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bkv.crypto.ed25519 import is_strong_ed25519_key
from bkv.errors import NoteError, SignatureError

ALG_ED25519 = 0x01
"""signed-note signature type of plain Ed25519 note signatures."""

MAX_NOTE_SIZE = 1 << 16
"""Largest serialized note (text + signatures) accepted, in bytes."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (the spec requires at least 16)."""

MAX_KEY_NAME_SIZE = 256
"""Longest key name accepted, in UTF-8 bytes."""

MAX_SIGNATURE_SIZE = 4 + 4096
"""Longest decoded signature (key ID included) accepted; room for post-quantum cosigners."""

MAX_KEY_STRING_SIZE = 1024
"""Longest verifier- or signer-key string accepted."""

ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

SIGNATURE_LINE_PREFIX = "— "
"""Em dash (U+2014) and a space start every signature line."""

_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"

Rng = Callable[[int], bytes]


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4] as a big-endian uint32."""
    check_key_name(name)
    if not 0 <= alg <= 0xFF:
        raise ValueError("signature type is one byte")
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def check_key_name(name: str) -> None:
    """Raise NoteError unless ``name`` is a valid key name (non-empty, no spaces or '+')."""
    if not name or len(name.encode()) > MAX_KEY_NAME_SIZE:
        raise NoteError("key name is empty or too long")
    if "+" in name or _SPACE.search(name) is not None or _has_control(name):
        raise NoteError("key name contains a space, '+' or a control character")


#: C0 controls (one regex search, not a Python loop: notes are checked on every validation).
_CONTROL = re.compile(r"[\x00-\x1f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f]")
_SPACE = re.compile(r"\s")  # str.isspace(): both are Py_UNICODE_ISSPACE


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def b64decode_canonical(value: str, what: str) -> bytes:
    """Decode standard padded base64, rejecting every non-canonical spelling (NoteError)."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    # Re-encoding catches missing padding and non-zero padding bits.
    if base64.b64encode(raw).decode("ascii") != value:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def b64encode(raw: bytes) -> str:
    """Standard padded base64 as a str."""
    return base64.b64encode(raw).decode("ascii")


class NoteVerifier(Protocol):
    """Verifies one key's signatures on note text."""

    @property
    def name(self) -> str:
        """Key name, as in signature lines."""
        ...

    @property
    def key_id(self) -> int:
        """32-bit key ID, as in signature lines."""
        ...

    def verify(self, text: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` (key ID stripped) signs ``text``."""
        ...


class NoteSigner(Protocol):
    """Signs note text with one key."""

    @property
    def name(self) -> str:
        """Key name, as in signature lines."""
        ...

    @property
    def key_id(self) -> int:
        """32-bit key ID, as in signature lines."""
        ...

    def sign(self, text: bytes) -> bytes:
        """Return the signature over ``text`` (without the key ID prefix)."""
        ...


class RawEd25519Signer(Protocol):
    """Anything that holds an Ed25519 key: ``bkv.keystore`` signers fit."""

    def public_key(self) -> bytes:
        """32-byte RFC 8032 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """64-byte RFC 8032 signature over ``message``."""
        ...


class SoftwareEd25519Key:
    """An in-process Ed25519 key (from a 32-byte seed); repr hides the seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)

    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"SoftwareEd25519Key(public_key={self.public_key().hex()})"


def load_ed25519_public_key(public_key: bytes) -> Ed25519PublicKey:
    """Load a raw 32-byte Ed25519 public key (NoteError if it is not a strong one).

    Small-order, identity, mixed-order and non-canonical encodings are refused
    (:mod:`bkv.crypto.ed25519`): RFC 8032 would accept them, and under a
    small-order key one signature verifies for every note, so a log or cosigner
    configured with one would let anyone forge its checkpoints.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise NoteError("Ed25519 public key is not 32 bytes")
    if not is_strong_ed25519_key(public_key):
        raise NoteError(
            "Ed25519 public key is not a prime-order point (small-order, identity or "
            "non-canonical keys accept forged signatures)"
        )
    try:
        return Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise NoteError("not an Ed25519 public key") from None


def ed25519_verify(key: Ed25519PublicKey, message: bytes, signature: bytes) -> None:
    """Verify an RFC 8032 signature; raise SignatureError."""
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise SignatureError("Ed25519 signature is not 64 bytes")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError("Ed25519 signature does not verify") from None


@dataclass(frozen=True)
class Ed25519Verifier:
    """signed-note Ed25519 verifier (type 0x01)."""

    name: str
    public_key: bytes
    key_id: int = field(init=False)
    #: The key checked and loaded once (a pinned log key verifies every checkpoint).
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", load_ed25519_public_key(self.public_key))
        object.__setattr__(self, "key_id", key_id(self.name, ALG_ED25519, self.public_key))

    def verify(self, text: bytes, signature: bytes) -> None:
        ed25519_verify(self._key, text, signature)

    def verifier_key(self) -> str:
        """The vkey string ``name+hex8+base64(0x01 || public key)``."""
        return format_verifier_key(self.name, ALG_ED25519, self.public_key)


class NamedEd25519Key:
    """A named Ed25519 key of one signed-note signature type, and its key ID.

    The key itself stays behind :class:`RawEd25519Signer` (software or PKCS#11);
    the repr names the key, never its material.
    """

    ALG: int = ALG_ED25519

    def __init__(self, name: str, key: RawEd25519Signer) -> None:
        self._name = name
        self._key = key
        self._public_key = key.public_key()
        self._key_id = key_id(name, self.ALG, self._public_key)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._key_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, key_id={self._key_id:08x})"


class Ed25519Signer(NamedEd25519Key):
    """signed-note Ed25519 signer (type 0x01) over any :class:`RawEd25519Signer`."""

    def sign(self, text: bytes) -> bytes:
        return self._key.sign(text)

    def verifier(self) -> Ed25519Verifier:
        """The matching verifier."""
        return Ed25519Verifier(self._name, self._public_key)


def format_verifier_key(name: str, alg: int, public_key: bytes) -> str:
    """``<name>+<hex8 key ID>+<base64(alg || public key)>``."""
    return f"{name}+{key_id(name, alg, public_key):08x}+{b64encode(bytes([alg]) + public_key)}"


def split_verifier_key(vkey: str) -> tuple[str, int, int, bytes]:
    """Parse a vkey into (name, key ID, alg, public key); check the ID matches (NoteError)."""
    if not vkey or len(vkey) > MAX_KEY_STRING_SIZE:
        raise NoteError("verifier key is empty or too long")
    # Key names contain no '+', but base64 may: split on the first two only.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError("verifier key is not name+id+key")
    name, hex_id, key_b64 = parts
    check_key_name(name)
    if (
        len(hex_id) != 8
        or hex_id != hex_id.lower()
        or not all(c in "0123456789abcdef" for c in hex_id)
    ):
        raise NoteError("verifier key ID is not 8 lowercase hex digits")
    raw = b64decode_canonical(key_b64, "verifier key")
    if len(raw) < 2:
        raise NoteError("verifier key has no key material")
    alg, public_key = raw[0], raw[1:]
    if key_id(name, alg, public_key) != int(hex_id, 16):
        raise NoteError("verifier key ID does not match the key")
    return name, int(hex_id, 16), alg, public_key


def parse_verifier_key(vkey: str) -> Ed25519Verifier:
    """Parse an Ed25519 (type 0x01) vkey string into a verifier (NoteError)."""
    name, _, alg, public_key = split_verifier_key(vkey)
    if alg != ALG_ED25519:
        raise NoteError(f"verifier key type 0x{alg:02x} is not Ed25519 (0x01)")
    return Ed25519Verifier(name, public_key)


def format_signer_key(name: str, seed: bytes) -> str:
    """``PRIVATE+KEY+<name>+<hex8 key ID>+<base64(0x01 || seed)>`` (secret!)."""
    public_key = SoftwareEd25519Key(seed).public_key()
    kid = key_id(name, ALG_ED25519, public_key)
    return f"{_PRIVATE_KEY_PREFIX}{name}+{kid:08x}+{b64encode(bytes([ALG_ED25519]) + seed)}"


def parse_signer_key(skey: str) -> Ed25519Signer:
    """Parse a signer-key string into a software signer (NoteError; never echoes the key)."""
    if len(skey) > MAX_KEY_STRING_SIZE or not skey.startswith(_PRIVATE_KEY_PREFIX):
        raise NoteError("signer key does not start with PRIVATE+KEY+")
    parts = skey[len(_PRIVATE_KEY_PREFIX) :].split("+", 2)
    if len(parts) != 3:
        raise NoteError("signer key is not PRIVATE+KEY+name+id+key")
    name, hex_id, key_b64 = parts
    check_key_name(name)
    raw = b64decode_canonical(key_b64, "signer key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("signer key is not an Ed25519 seed")
    signer = Ed25519Signer(name, SoftwareEd25519Key(raw[1:]))
    if hex_id != f"{signer.key_id:08x}":
        raise NoteError("signer key ID does not match the key")
    return signer


def generate_signer_key(name: str, rng: Rng = secrets.token_bytes) -> tuple[str, str]:
    """Make a new Ed25519 note key: (signer-key string, verifier-key string)."""
    seed = rng(32)
    public_key = SoftwareEd25519Key(seed).public_key()
    return format_signer_key(name, seed), format_verifier_key(name, ALG_ED25519, public_key)


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes (ID stripped)."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        """The signature line, newline included."""
        raw = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIGNATURE_LINE_PREFIX}{self.name} {b64encode(raw)}\n"


@dataclass(frozen=True)
class Note:
    """An opened note: its text and its signatures (verified ones, and the ignored rest)."""

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...] = ()

    @property
    def text_bytes(self) -> bytes:
        """The signed bytes: UTF-8 text with its final newline."""
        return self.text.encode()

    def to_bytes(self) -> bytes:
        """Serialize text and all signatures (verified first)."""
        return format_note(self.text, self.signatures + self.unverified)


def check_text(text: str) -> None:
    """Raise NoteError unless ``text`` is a valid note text."""
    if not text or not text.endswith("\n"):
        raise NoteError("note text is empty or does not end in a newline")
    if _CONTROL_BUT_NEWLINE.search(text) is not None:
        raise NoteError("note text contains a control character")
    if len(text.encode()) > MAX_NOTE_SIZE:
        raise NoteError("note text is too large")


def format_note(text: str, signatures: Sequence[NoteSignature]) -> bytes:
    """Serialize a note from its text and signature lines."""
    check_text(text)
    if not signatures:
        raise ValueError("a note needs at least one signature")
    data = (text + "\n" + "".join(sig.line() for sig in signatures)).encode()
    if len(data) > MAX_NOTE_SIZE:
        raise NoteError("note is too large")
    return data


def sign_note(text: str | bytes, signers: Sequence[NoteSigner]) -> bytes:
    """Sign ``text`` (must end in a newline) with every signer; return the note bytes."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise NoteError("note text is not UTF-8") from None
    check_text(text)
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    for s in signers:
        check_key_name(s.name)
    signed = text.encode()
    sigs = [NoteSignature(s.name, s.key_id, s.sign(signed)) for s in signers]
    return format_note(text, sigs)


def parse_note(data: bytes) -> tuple[str, list[NoteSignature]]:
    """Split note bytes into text and signature lines, without verifying (NoteError)."""
    if not isinstance(data, bytes):
        raise TypeError("note must be bytes")
    if len(data) > MAX_NOTE_SIZE:
        raise NoteError(f"note is larger than {MAX_NOTE_SIZE} bytes")
    try:
        whole = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise NoteError("note is not UTF-8") from None
    if _CONTROL_BUT_NEWLINE.search(whole) is not None:
        raise NoteError("note contains a control character")
    # The text ends at the last blank line (signed-note, "Format").
    split = whole.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no signature block")
    text, block = whole[: split + 1], whole[split + 2 :]
    check_text(text)
    if not block.endswith("\n"):
        raise NoteError("signature block does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    sigs = [_parse_signature_line(line) for line in lines]
    seen: set[tuple[str, int]] = set()
    for sig in sigs:
        if (sig.name, sig.key_id) in seen:
            raise NoteError("two signatures by the same key")
        seen.add((sig.name, sig.key_id))
    return text, sigs


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_LINE_PREFIX):
        raise NoteError("signature line does not start with an em dash and a space")
    parts = line[len(SIGNATURE_LINE_PREFIX) :].split(" ")
    if len(parts) != 2:
        raise NoteError("signature line is not '— name signature'")
    name, sig_b64 = parts
    check_key_name(name)
    if len(sig_b64) > (MAX_SIGNATURE_SIZE + 2) // 3 * 4:
        raise NoteError("signature is too long")
    raw = b64decode_canonical(sig_b64, "signature")
    if len(raw) < 5:
        raise NoteError("signature is shorter than a key ID")
    if len(raw) > MAX_SIGNATURE_SIZE:
        raise NoteError("signature is too long")
    return NoteSignature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def open_note(data: bytes, verifiers: Sequence[NoteVerifier]) -> Note:
    """Parse ``data`` and verify it against ``verifiers`` (see module docstring); NoteError."""
    text, sigs = parse_note(data)
    known: dict[tuple[str, int], NoteVerifier] = {}
    for v in verifiers:
        previous = known.setdefault((v.name, v.key_id), v)
        if previous is not v and previous != v:
            # Two different keys claim one (name, key ID): a bad configuration.
            raise ValueError(f"ambiguous verifiers for key {v.name}+{v.key_id:08x}")
    if not known:
        raise ValueError("open_note needs at least one verifier")
    signed = text.encode()
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    for sig in sigs:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified.append(sig)
            continue
        try:
            verifier.verify(signed, sig.signature)
        except SignatureError:
            raise NoteError(f"signature by known key {sig.name} does not verify") from None
        verified.append(sig)
    if not verified:
        raise NoteError("no signature from a known key")
    return Note(text, tuple(verified), tuple(unverified))
