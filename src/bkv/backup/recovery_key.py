"""Recovery keys: a 32-byte backup key written for people (sans-IO).

A recovery key is shown once and typed back in to restore, so its text form is
made for reading aloud and retyping (docs/backup.md, "Recovery keys")::

    7F3A-09C1-...-B2E4-5D0C      16 groups of 4 hex digits (the 32-byte key)
                                 and 1 checksum group (4 hex digits)

The checksum group is the first 2 bytes of SHA-256(CHECKSUM_LABEL || key), so a
mistyped digit is caught before the key is tried against a backup (where it
would only say "wrong key"); 1 in 65536 typos gets through, and is then refused
by the backup's header MAC. :func:`parse_recovery_key` accepts upper or lower
case, any spaces and dashes (or none), and says what is wrong: a character that
is not a hex digit (group and position), a group of the wrong length, a missing
or extra group, or a checksum mismatch, naming the group that most likely holds
the typo when a single changed or swapped digit explains it. Its errors never
repeat the digits typed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import RecoveryKeyError

RECOVERY_KEY_SIZE: Final = 32
GROUP_DIGITS: Final = 4
KEY_GROUPS: Final = 2 * RECOVERY_KEY_SIZE // GROUP_DIGITS
"""16 groups of 4 hex digits hold the key."""
CHECKSUM_SIZE: Final = 2
GROUPS: Final = KEY_GROUPS + 1
"""17: the key's groups and the checksum group."""
DIGITS: Final = GROUPS * GROUP_DIGITS
"""68 hex digits in all."""
MAX_INPUT_CHARS: Final = 512
"""Longer input is refused before it is parsed."""
CHECKSUM_LABEL: Final = b"bkv recovery key checksum v1"
SEPARATOR: Final = "-"
_DASHES: Final = frozenset("-\u2010\u2011\u2012\u2013\u2014")  # ASCII and Unicode dashes

_HEX: Final = frozenset("0123456789abcdefABCDEF")
_HEX_LOWER: Final = "0123456789abcdef"
_HINTS: Final = {"o": "0", "i": "1", "l": "1"}
_MAX_NAMED_GROUPS: Final = 3


def generate_recovery_key(rng: Rng = default_rng) -> bytes:
    """A fresh 32-byte key (to be shown once with :func:`format_recovery_key`)."""
    return draw(rng, RECOVERY_KEY_SIZE)


def _checksum(key: bytes) -> bytes:
    return hashlib.sha256(CHECKSUM_LABEL + key).digest()[:CHECKSUM_SIZE]


def format_recovery_key(key: bytes) -> str:
    """``key`` as 17 dash-separated groups of 4 upper-case hex digits, the last a checksum."""
    if not isinstance(key, bytes):
        raise TypeError("a recovery key is bytes")
    if len(key) != RECOVERY_KEY_SIZE:
        raise ValueError(f"a recovery key is {RECOVERY_KEY_SIZE} bytes")
    digits = (key + _checksum(key)).hex().upper()
    return SEPARATOR.join(
        digits[start : start + GROUP_DIGITS] for start in range(0, DIGITS, GROUP_DIGITS)
    )


def parse_recovery_key(text: str) -> bytes:
    """The 32-byte key typed as ``text``; :class:`RecoveryKeyError` says what is wrong."""
    if not isinstance(text, str):
        raise TypeError("a typed recovery key is str")
    if len(text) > MAX_INPUT_CHARS:
        raise RecoveryKeyError(f"this is too long for a recovery key ({DIGITS} hex digits)")
    digits: list[str] = []
    groups: list[int] = []  # lengths of the separated groups seen so far
    current = 0
    for char in text:
        if char.isspace() or char in _DASHES:
            if current:
                groups.append(current)
                current = 0
            continue
        if char in _HEX:
            digits.append(char.lower())
            current += 1
            continue
        if groups:  # the typist separates groups: count theirs
            group, position = len(groups) + 1, current + 1
        else:
            group, position = len(digits) // GROUP_DIGITS + 1, len(digits) % GROUP_DIGITS + 1
        hint = _HINTS.get(char.lower())
        raise RecoveryKeyError(
            f"group {group}, character {position} is not a hex digit (0-9, A-F)"
            + (f"; did you mean {hint}?" if hint else ""),
            group=group,
        )
    if current:
        groups.append(current)
    if len(digits) != DIGITS:
        raise _length_error(len(digits), groups)
    key = bytes.fromhex("".join(digits[: 2 * RECOVERY_KEY_SIZE]))
    typed = bytes.fromhex("".join(digits[2 * RECOVERY_KEY_SIZE :]))
    if not hmac.compare_digest(_checksum(key), typed):
        raise _checksum_error(digits)
    return key


def _length_error(count: int, groups: list[int]) -> RecoveryKeyError:
    expected = f"{DIGITS} hex digits ({GROUPS} groups of {GROUP_DIGITS})"
    if len(groups) > 1:
        wrong = [index for index, size in enumerate(groups, 1) if size != GROUP_DIGITS]
        if not wrong:
            what = "missing" if len(groups) < GROUPS else "too many"
            return RecoveryKeyError(
                f"{len(groups)} groups typed, {GROUPS} expected ({what} groups)"
            )
        if len(wrong) == 1:
            index = wrong[0]
            return RecoveryKeyError(
                f"group {index} has {groups[index - 1]} digits, {GROUP_DIGITS} expected",
                group=index,
            )
    return RecoveryKeyError(f"a recovery key has {expected}; this has {count}")


def _checksum_error(digits: list[str]) -> RecoveryKeyError:
    """Name the groups where one changed digit, or two swapped neighbours, fix the checksum."""
    typed = "".join(digits)
    key_digits = 2 * RECOVERY_KEY_SIZE
    prefix = hashlib.sha256(CHECKSUM_LABEL)

    def valid(candidate: str) -> bool:
        hasher = prefix.copy()
        hasher.update(bytes.fromhex(candidate[:key_digits]))
        return hasher.digest()[:CHECKSUM_SIZE].hex() == candidate[key_digits:]

    suspects: set[int] = set()
    for position in range(DIGITS):
        for replacement in _HEX_LOWER:
            if replacement != typed[position] and valid(
                typed[:position] + replacement + typed[position + 1 :]
            ):
                suspects.add(position // GROUP_DIGITS + 1)
                break
    for position in range(DIGITS - 1):
        left, right = typed[position], typed[position + 1]
        if left != right and valid(typed[:position] + right + left + typed[position + 2 :]):
            suspects.update({position // GROUP_DIGITS + 1, (position + 1) // GROUP_DIGITS + 1})
    message = "the checksum group does not match: a digit is mistyped"
    if len(suspects) == 1:
        (group,) = suspects
        where = "the checksum group itself" if group == GROUPS else f"group {group}"
        return RecoveryKeyError(f"{message}, most likely in {where}", group=group)
    if 1 < len(suspects) <= _MAX_NAMED_GROUPS:
        named = ", ".join(str(group) for group in sorted(suspects))
        return RecoveryKeyError(f"{message}, most likely in one of groups {named}")
    return RecoveryKeyError(f"{message}; check every group")
