"""bkv.backup.recovery_key: the typed form of a backup key (docs/backup.md, "Recovery keys")."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.backup.recovery_key import (
    CHECKSUM_LABEL,
    GROUPS,
    MAX_INPUT_CHARS,
    format_recovery_key,
    generate_recovery_key,
    parse_recovery_key,
)
from bkv.errors import BackupError, RecoveryKeyError

KEY = bytes(range(32))
_HEX = "0123456789ABCDEF"


def _groups(text: str) -> list[str]:
    return text.split("-")


def test_format_is_17_groups_of_4_with_a_checksum_group() -> None:
    text = format_recovery_key(KEY)
    assert re.fullmatch(r"[0-9A-F]{4}(-[0-9A-F]{4}){16}", text)
    groups = _groups(text)
    assert len(groups) == GROUPS == 17
    assert "".join(groups[:16]) == KEY.hex().upper()
    assert groups[16] == hashlib.sha256(CHECKSUM_LABEL + KEY).digest()[:2].hex().upper()


def test_known_answer() -> None:
    checksum = hashlib.sha256(b"bkv recovery key checksum v1" + KEY).hexdigest()[:4].upper()
    assert format_recovery_key(KEY) == (
        "0001-0203-0405-0607-0809-0A0B-0C0D-0E0F-"
        "1011-1213-1415-1617-1819-1A1B-1C1D-1E1F-" + checksum
    )


@given(st.binary(min_size=32, max_size=32))
def test_round_trip(key: bytes) -> None:
    assert parse_recovery_key(format_recovery_key(key)) == key


@pytest.mark.parametrize(
    "transform",
    [
        str.lower,
        lambda t: t.replace("-", " "),
        lambda t: t.replace("-", ""),
        lambda t: "  " + t.replace("-", "\n") + "\n",
        lambda t: t.replace("-", " - "),
        lambda t: t.replace("-", "\u2013"),  # an en dash, as word processors make them
        lambda t: "".join(g.lower() if i % 2 else g for i, g in enumerate(_groups(t))),
        lambda t: t.replace("-", "")[:30] + "  " + t.replace("-", "")[30:],
    ],
)
def test_parse_tolerates_case_spaces_and_dashes(transform: object) -> None:
    text = transform(format_recovery_key(KEY))  # type: ignore[operator]
    assert parse_recovery_key(text) == KEY


def test_generate_uses_the_injected_rng() -> None:
    assert generate_recovery_key(bytes) == bytes(32)
    assert len(generate_recovery_key()) == 32


def _replace(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


def test_every_single_digit_typo_is_caught_and_located() -> None:
    text = format_recovery_key(KEY)
    located = 0
    for index, char in enumerate(text):
        if char == "-":
            continue
        group = index // 5 + 1
        for typo in _HEX:
            if typo == char:
                continue
            with pytest.raises(RecoveryKeyError, match="checksum") as caught:
                parse_recovery_key(_replace(text, index, typo))
            error = caught.value
            # The true group always explains the typo, so a single suspect is always right.
            assert error.group in (None, group)
            if error.group is not None:
                located += 1
            else:
                assert f"{group}" in str(error) or "check every group" in str(error)
    assert located > 0.9 * 68 * 15


def test_swapped_neighbours_are_caught() -> None:
    text = format_recovery_key(KEY)  # 0001-0203-...: neighbours differ in each group
    swapped = text[:5] + text[6] + text[5] + text[7:]
    with pytest.raises(RecoveryKeyError, match="checksum") as caught:
        parse_recovery_key(swapped)
    assert caught.value.group in (None, 2)


def test_a_non_hex_character_is_named_by_group_and_position() -> None:
    text = format_recovery_key(KEY)
    with pytest.raises(RecoveryKeyError, match=r"group 3, character 2 .*did you mean 0\?") as e:
        parse_recovery_key(_replace(text, 11, "O"))
    assert e.value.group == 3
    with pytest.raises(RecoveryKeyError, match=r"group 5, character 4 .*did you mean 1\?"):
        parse_recovery_key(_replace(text, 23, "l"))
    undashed = text.replace("-", "")
    with pytest.raises(RecoveryKeyError, match=r"group 2, character 1 is not a hex digit") as e:
        parse_recovery_key(_replace(undashed, 4, "g"))
    assert "did you mean" not in str(e.value)
    with pytest.raises(RecoveryKeyError, match=r"group 17, character 4"):
        parse_recovery_key(text[:-1] + "#")


def test_a_group_of_the_wrong_length_is_named() -> None:
    groups = _groups(format_recovery_key(KEY))
    short = [*groups]
    short[6] = short[6][:3]
    with pytest.raises(RecoveryKeyError, match="group 7 has 3 digits, 4 expected") as caught:
        parse_recovery_key("-".join(short))
    assert caught.value.group == 7
    long = [*groups]
    long[1] += "A"
    with pytest.raises(RecoveryKeyError, match="group 2 has 5 digits"):
        parse_recovery_key(" ".join(long))


def test_missing_or_extra_groups_and_wrong_lengths() -> None:
    text = format_recovery_key(KEY)
    with pytest.raises(RecoveryKeyError, match="16 groups typed, 17 expected"):
        parse_recovery_key(text[:-5])
    with pytest.raises(RecoveryKeyError, match="18 groups typed"):
        parse_recovery_key(text + "-0000")
    with pytest.raises(RecoveryKeyError, match=r"68 hex digits .* this has 67"):
        parse_recovery_key(text.replace("-", "")[:-1])
    with pytest.raises(RecoveryKeyError, match="this has 0"):
        parse_recovery_key("  \n")
    with pytest.raises(RecoveryKeyError, match="too long"):
        parse_recovery_key("0" * (MAX_INPUT_CHARS + 1))


def test_errors_are_backup_errors_and_never_repeat_the_digits() -> None:
    text = format_recovery_key(KEY)
    for bad in (_replace(text, 0, "F"), _replace(text, 0, "x"), text[:-1]):
        with pytest.raises(BackupError) as caught:
            parse_recovery_key(bad)
        message = str(caught.value)
        assert not any(group in message.upper() for group in _groups(text) if group != "0001")
        assert not re.search(r"[0-9A-Fa-f]{4}", message)


def test_misuse() -> None:
    with pytest.raises(TypeError):
        parse_recovery_key(KEY)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_recovery_key(KEY.hex())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        format_recovery_key(KEY[:16])
