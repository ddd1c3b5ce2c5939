"""bkv.tlog.note: the C2SP signed-note example vector, round trips and every rejection."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import NoteError
from bkv.tlog import note
from bkv.tlog.note import (
    Ed25519Signer,
    Ed25519Verifier,
    NoteSignature,
    SoftwareEd25519Key,
    generate_signer_key,
    open_note,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
)

VECTOR = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "signed-note-example.json").read_text()
)


def seeded(i: int) -> bytes:
    return bytes([i]) * 32


def signer(name: str = "example.com/log", i: int = 1) -> Ed25519Signer:
    return Ed25519Signer(name, SoftwareEd25519Key(seeded(i)))


def test_spec_example_verifies() -> None:
    verifier = parse_verifier_key(VECTOR["vkey"])
    assert verifier.name == "example.com/foo"
    assert verifier.key_id == 0x530D903A
    assert verifier.verifier_key() == VECTOR["vkey"]
    opened = open_note(VECTOR["note"].encode(), [verifier])
    assert opened.text == VECTOR["text"]
    assert [s.name for s in opened.signatures] == ["example.com/foo"]
    assert opened.to_bytes() == VECTOR["note"].encode()


GO_VECTOR = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "signed-note-go-example.json").read_text()
)


def test_go_reference_example_signs_byte_for_byte() -> None:
    # Ed25519 is deterministic, so our signer must reproduce Go's note.Sign output.
    s = parse_signer_key(GO_VECTOR["skey"])
    assert (s.name, s.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert s.verifier().verifier_key() == GO_VECTOR["vkey"]
    assert sign_note(GO_VECTOR["text"], [s]) == GO_VECTOR["note"].encode()
    opened = open_note(GO_VECTOR["note"].encode(), [parse_verifier_key(GO_VECTOR["vkey"])])
    assert opened.text == GO_VECTOR["text"]


def test_spec_example_tampered_text_fails() -> None:
    verifier = parse_verifier_key(VECTOR["vkey"])
    data = VECTOR["note"].replace("example message", "exemplary message").encode()
    with pytest.raises(NoteError, match="does not verify"):
        open_note(data, [verifier])


def test_sign_and_open_round_trip() -> None:
    s1, s2 = signer("a.example/1", 1), signer("b.example/2", 2)
    data = sign_note("line one\n\nline three\n", [s1, s2])
    opened = open_note(data, [s2.verifier()])
    assert opened.text == "line one\n\nline three\n"
    assert [s.name for s in opened.signatures] == ["b.example/2"]
    assert [s.name for s in opened.unverified] == ["a.example/1"]
    assert sign_note(b"bytes text\n", [s1]) == sign_note("bytes text\n", [s1])


def test_key_strings_round_trip() -> None:
    skey, vkey = generate_signer_key("example.com/k", rng=lambda n: b"\x07" * n)
    assert skey.startswith("PRIVATE+KEY+example.com/k+")
    s = parse_signer_key(skey)
    v = parse_verifier_key(vkey)
    assert s.verifier() == v
    assert s.key_id == v.key_id
    assert note.format_signer_key("example.com/k", b"\x07" * 32) == skey
    assert "\x07" not in repr(s) and skey not in repr(s)
    assert base64.b64encode(b"\x07" * 32).decode() not in repr(SoftwareEd25519Key(b"\x07" * 32))
    data = sign_note("hi\n", [s])
    assert open_note(data, [v]).text == "hi\n"


def test_key_id_definition() -> None:
    pk = SoftwareEd25519Key(seeded(3)).public_key()
    want = hashlib.sha256(b"n.example\n\x01" + pk).digest()[:4]
    assert note.key_id("n.example", 1, pk) == int.from_bytes(want, "big")


@pytest.mark.parametrize(
    "vkey",
    [
        "",
        "example.com/foo+530d903a",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k+x",
        "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/fo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2l",
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
        "example.com/foo+530d903a+AQ==",
        "example com+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "a+" * 600,
    ],
)
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(vkey)


def test_verifier_key_of_other_type_is_refused() -> None:
    pk = SoftwareEd25519Key(seeded(4)).public_key()
    with pytest.raises(NoteError, match="not Ed25519"):
        parse_verifier_key(note.format_verifier_key("x.example", 0x04, pk))


def test_bad_signer_keys() -> None:
    skey, _ = generate_signer_key("s.example", rng=lambda n: b"\x01" * n)
    body = skey[len("PRIVATE+KEY+") :]
    name, hex_id, key = body.split("+")
    for bad in [
        body,
        "PRIVATE+KEY+" + name + "+" + hex_id,
        "PRIVATE+KEY+" + name + "+00000000+" + key,
        "PRIVATE+KEY+" + name + "+" + hex_id + "+" + key[:-4],
        "PRIVATE+KEY+"
        + name
        + "+"
        + hex_id
        + "+"
        + base64.b64encode(b"\x04" + b"\x01" * 32).decode(),
        "PRIVATE+KEY+bad name+" + hex_id + "+" + key,
    ]:
        with pytest.raises(NoteError) as info:
            parse_signer_key(bad)
        assert key not in str(info.value)


def _raw_sig_line(name: str, raw: bytes) -> str:
    return f"— {name} {base64.b64encode(raw).decode()}\n"


def _signed(text: str = "hello\n") -> tuple[bytes, Ed25519Verifier]:
    s = signer()
    return sign_note(text, [s]), s.verifier()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b"hello\n\n", b"hello\n"), "signature"),
        (lambda d: d[:-1], "newline"),
        (lambda d: d.replace(b"hello", b"hel\rlo"), "control"),
        (lambda d: d.replace(b"hello", b"hel\tlo"), "control"),
        (lambda d: d.replace(b"hello", b"hel\xfflo"), "UTF-8"),
        (lambda d: d.replace("— ".encode(), b"- "), "em dash"),
        (lambda d: d.replace("— ".encode(), "—".encode()), "em dash"),
        (lambda d: d.replace(b"example.com/log ", b"example.com/log  "), "name signature"),
        (lambda d: d.replace(b"=\n", b"\n"), "base64"),
        (lambda d: d + b"\n", "signature block"),
        (lambda d: b"\n" + d[6:], "does not verify"),
        (lambda d: d.replace(b"hello\n", b"hello"), "signature"),
    ],
)
def test_malformed_notes(mutate: object, message: str) -> None:
    data, verifier = _signed()
    bad = mutate(data)  # type: ignore[operator]
    with pytest.raises(NoteError, match=message):
        open_note(bad, [verifier])


def test_empty_and_oversized_notes() -> None:
    _, verifier = _signed()
    with pytest.raises(NoteError):
        open_note(b"", [verifier])
    big = sign_note("a" * 1000 + "\n", [signer()])
    with pytest.raises(NoteError, match="larger"):
        open_note(big + b"x" * note.MAX_NOTE_SIZE, [verifier])
    with pytest.raises(NoteError, match="too large"):
        sign_note("a" * note.MAX_NOTE_SIZE + "\n", [signer()])


def test_non_canonical_base64_signature() -> None:
    data, verifier = _signed()
    _, sigs = note.parse_note(data)
    b64 = base64.b64encode(sigs[0].key_id.to_bytes(4, "big") + sigs[0].signature).decode()
    # 68 bytes = 3 * 22 + 2: the base64 ends in one "=" and its last letter has 2 spare bits.
    assert b64.endswith("=") and not b64.endswith("==")
    last = b64[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # Set a padding bit the canonical encoding leaves zero.
    tweaked = b64[:-2] + alphabet[alphabet.index(last) | 1] + "="
    if tweaked == b64:
        tweaked = b64[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    assert base64.b64decode(tweaked) == base64.b64decode(b64)
    with pytest.raises(NoteError, match="canonical"):
        open_note(data.replace(b64.encode(), tweaked.encode()), [verifier])
    with pytest.raises(NoteError, match="base64"):
        open_note(data.replace(b64.encode(), b64.replace("=", "").encode()), [verifier])
    with pytest.raises(NoteError, match="base64"):
        open_note(data.replace(b64.encode(), ("\u00e9" + b64[1:]).encode()), [verifier])


def test_unknown_signatures_ignored_but_one_known_required() -> None:
    data, verifier = _signed()
    other = signer("other.example", 9).verifier()
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(data, [other])
    # Same name, different key: ignored (unknown), so still no known signature.
    same_name = signer("example.com/log", 9).verifier()
    with pytest.raises(NoteError, match="no signature from a known key"):
        open_note(data, [same_name])
    # Unknown lines with garbage signature bytes are ignored.
    extra = _raw_sig_line("unknown.example", b"\x00\x00\x00\x01" + b"junk")
    opened = open_note(data + extra.encode(), [verifier])
    assert [s.name for s in opened.unverified] == ["unknown.example"]


def test_bad_signature_from_known_key() -> None:
    data, verifier = _signed()
    _, sigs = note.parse_note(data)
    bad = NoteSignature(sigs[0].name, sigs[0].key_id, bytes(64))
    with pytest.raises(NoteError, match="does not verify"):
        open_note(b"hello\n\n" + bad.line().encode(), [verifier])
    short = NoteSignature(sigs[0].name, sigs[0].key_id, bytes(63))
    with pytest.raises(NoteError, match="does not verify"):
        open_note(b"hello\n\n" + short.line().encode(), [verifier])
    # A good signature does not excuse a bad one from another known key.
    other = signer("x.example", 5).verifier()
    forged = NoteSignature(other.name, other.key_id, bytes(64)).line().encode()
    open_note(data + forged, [verifier])  # unknown there: ignored
    with pytest.raises(NoteError, match=r"x\.example does not verify"):
        open_note(data + forged, [verifier, other])


def test_duplicate_signatures_rejected() -> None:
    data, verifier = _signed()
    _, sigs = note.parse_note(data)
    with pytest.raises(NoteError, match="same key"):
        open_note(data + sigs[0].line().encode(), [verifier])
    unknown = _raw_sig_line("u.example", b"\x00\x00\x00\x01zz")
    with pytest.raises(NoteError, match="same key"):
        open_note(data + (unknown * 2).encode(), [verifier])


def test_signature_count_limit() -> None:
    data, verifier = _signed()
    lines = "".join(
        _raw_sig_line(f"u{i}.example", b"\x00\x00\x00\x01zz")
        for i in range(note.MAX_SIGNATURES - 1)
    )
    open_note(data + lines.encode(), [verifier])
    with pytest.raises(NoteError, match="more than 100"):
        open_note(data + lines.encode() + _raw_sig_line("z.example", b"1234z").encode(), [verifier])


def test_signature_too_short_or_long() -> None:
    data, verifier = _signed()
    with pytest.raises(NoteError, match="shorter"):
        open_note(data + _raw_sig_line("u.example", b"1234").encode(), [verifier])
    with pytest.raises(NoteError, match="too long"):
        long_line = _raw_sig_line("u.example", b"1234" + b"z" * note.MAX_SIGNATURE_SIZE)
        open_note(data + long_line.encode(), [verifier])
    with pytest.raises(NoteError, match="too long"):
        # 4101 bytes encode without padding to the same length as 4100 bytes.
        edge = _raw_sig_line("u.example", b"z" * (note.MAX_SIGNATURE_SIZE + 1))
        open_note(data + edge.encode(), [verifier])
    at_limit = _raw_sig_line("u.example", b"z" * note.MAX_SIGNATURE_SIZE)
    assert open_note(data + at_limit.encode(), [verifier]).unverified


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u2003b", "a\nb", "x" * 257])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(NoteError):
        note.check_key_name(name)
    data, verifier = _signed()
    if "\n" not in name:
        with pytest.raises(NoteError):
            open_note(data + _raw_sig_line(name, b"1234zz").encode(), [verifier])


def test_sign_note_misuse() -> None:
    with pytest.raises(NoteError):
        sign_note("no newline", [signer()])
    with pytest.raises(NoteError):
        sign_note("", [signer()])
    with pytest.raises(NoteError):
        sign_note(b"\xff\n", [signer()])
    with pytest.raises(NoteError):
        sign_note("a\x00\n", [signer()])
    with pytest.raises(ValueError):
        sign_note("a\n", [])
    with pytest.raises(ValueError):
        open_note(_signed()[0], [])
    with pytest.raises(TypeError):
        note.parse_note("str")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        note.format_note("a\n", [])
    with pytest.raises(ValueError):
        SoftwareEd25519Key(b"short")
    with pytest.raises(ValueError):
        note.key_id("a", 256, b"")


def test_bad_public_key() -> None:
    with pytest.raises(NoteError):
        Ed25519Verifier("a.example", b"\x00" * 31)


#: Identity, a small-order point, a non-canonical encoding (y = p) and a point off the curve.
WEAK_KEYS = [
    bytes([1]) + bytes(31),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    b"\xff" * 32,
]


@pytest.mark.parametrize("weak", WEAK_KEYS)
def test_weak_public_keys_are_refused_by_every_note_verifier(weak: bytes) -> None:
    # Under the identity key, (R = identity, S = 0) verifies for every text: a note
    # verifier holding such a key would accept forged checkpoints.
    with pytest.raises(NoteError):
        Ed25519Verifier("a.example", weak)
    vkey = note.format_verifier_key("a.example", note.ALG_ED25519, weak)
    with pytest.raises(NoteError):
        parse_verifier_key(vkey)


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_note_error(data: bytes) -> None:
    _, verifier = _signed()
    with pytest.raises(NoteError):
        open_note(data, [verifier])


@given(st.text(max_size=200))
def test_random_text_notes_raise_only_note_error(text: str) -> None:
    _, verifier = _signed()
    with pytest.raises(NoteError):
        open_note(("hello\n\n" + text).encode(), [verifier])


@given(st.text(max_size=100))
def test_random_vkeys_raise_only_note_error(text: str) -> None:
    try:
        v = parse_verifier_key(text)
    except NoteError:
        return
    assert v.verifier_key() == text


@given(st.binary(min_size=32, max_size=32))
def test_key_strings_round_trip_any_seed(seed: bytes) -> None:
    # Base64 of the key may contain '+', the vkey field separator.
    skey, vkey = generate_signer_key("r.example", rng=lambda n: seed)
    assert parse_signer_key(skey).verifier() == parse_verifier_key(vkey)
    assert parse_verifier_key(vkey).verifier_key() == vkey


def test_ambiguous_verifiers_are_refused() -> None:
    data, verifier = _signed()
    twin = Ed25519Verifier(verifier.name, SoftwareEd25519Key(seeded(8)).public_key())
    object.__setattr__(twin, "key_id", verifier.key_id)  # forge a colliding key ID
    with pytest.raises(ValueError, match="ambiguous"):
        open_note(data, [verifier, twin])
    # The same verifier listed twice is not ambiguous.
    assert open_note(data, [verifier, verifier]).signatures


class BadNameSigner:
    """A NoteSigner whose name would break the signature line format."""

    name = "bad name"
    key_id = 1

    def sign(self, text: bytes) -> bytes:
        return b"sig"


def test_sign_note_checks_signer_names() -> None:
    with pytest.raises(NoteError, match="key name"):
        sign_note("a\n", [BadNameSigner()])
