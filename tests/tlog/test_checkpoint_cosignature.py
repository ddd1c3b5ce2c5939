"""bkv.tlog.checkpoint and bkv.tlog.cosignature: formats, opening, k-of-n cosigner policy."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import CheckpointError, CosignerPolicyError, NoteError, SignatureError
from bkv.tlog import cosignature
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint, parse_checkpoint
from bkv.tlog.cosignature import (
    CosignatureSigner,
    CosignatureVerifier,
    CosignerPolicy,
    cosigned_message,
    parse_cosigner_key,
)
from bkv.tlog.merkle import EMPTY_ROOT
from bkv.tlog.note import (
    Ed25519Signer,
    NoteSignature,
    SoftwareEd25519Key,
    format_verifier_key,
    open_note,
    sign_note,
)

ORIGIN = "bkv.example/witness-log"
ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()


def key(i: int) -> SoftwareEd25519Key:
    return SoftwareEd25519Key(bytes([i]) * 32)


LOG = Ed25519Signer(ORIGIN, key(1))


def cosigner(i: int) -> CosignatureSigner:
    return CosignatureSigner(f"w{i}.example", key(10 + i))


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint(ORIGIN, 20852163, ROOT, ("ext one",))
    text = cp.text()
    assert text == f"{ORIGIN}\n20852163\n{ROOT_B64}\next one\n"
    assert parse_checkpoint(text) == cp


def test_spec_example_checkpoint_parses() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = parse_checkpoint(text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.text() == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"{ORIGIN}\n1\n{ROOT_B64}",
        f"{ORIGIN}\n1\n",
        f"\n1\n{ROOT_B64}\n",
        f"{ORIGIN}\n01\n{ROOT_B64}\n",
        f"{ORIGIN}\n00\n{ROOT_B64}\n",
        f"{ORIGIN}\n+1\n{ROOT_B64}\n",
        f"{ORIGIN}\n-1\n{ROOT_B64}\n",
        f"{ORIGIN}\n1.0\n{ROOT_B64}\n",
        f"{ORIGIN}\n 1\n{ROOT_B64}\n",
        f"{ORIGIN}\n\u0661\n{ROOT_B64}\n",
        f"{ORIGIN}\n9223372036854775808\n{ROOT_B64}\n",
        f"{ORIGIN}\n99999999999999999999\n{ROOT_B64}\n",
        f"{ORIGIN}\n1\n{ROOT_B64[:-1]}\n",
        f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n1\n{ROOT_B64}\n\n",
        f"{ORIGIN}\n1\n{ROOT_B64}\next\n\n",
        f"{ORIGIN}\n1\n{ROOT_B64}\n" + "e\n" * 17,
        f"{ORIGIN}\n1\n{ROOT_B64}\nbad\tline\n",
        f"{'o' * 257}\n1\n{ROOT_B64}\n",
        f"{ORIGIN}\r\n1\n{ROOT_B64}\n",
    ],
)
def test_bad_checkpoint_text(text: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(text)


def test_non_canonical_root_base64() -> None:
    # Flip a padding bit in the last base64 character: same bytes, other spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = ROOT_B64[-2]
    other = ROOT_B64[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    assert base64.b64decode(other) == ROOT
    with pytest.raises(CheckpointError, match="canonical"):
        parse_checkpoint(f"{ORIGIN}\n1\n{other}\n")


def test_largest_size_accepted() -> None:
    assert parse_checkpoint(f"{ORIGIN}\n9223372036854775807\n{ROOT_B64}\n").size == 2**63 - 1
    assert parse_checkpoint(f"{ORIGIN}\n0\n{ROOT_B64}\n").size == 0


def test_checkpoint_constructor_misuse() -> None:
    for args in [(ORIGIN, -1, ROOT), (ORIGIN, 1, ROOT[:31]), (ORIGIN, 1, ROOT, ("",))]:
        with pytest.raises(ValueError):
            Checkpoint(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Checkpoint(ORIGIN, 1, ROOT, ("e",) * 17)
    with pytest.raises(CheckpointError):
        Checkpoint("", 1, ROOT)
    with pytest.raises(TypeError):
        parse_checkpoint(b"bytes")  # type: ignore[arg-type]


def test_open_checkpoint() -> None:
    cp = Checkpoint(ORIGIN, 5, ROOT)
    data = cp.sign([LOG])
    opened = open_checkpoint(data, ORIGIN, [LOG.verifier()])
    assert opened == cp
    assert opened.note is not None and opened.note.signatures[0].name == ORIGIN
    with pytest.raises(CheckpointError, match="another origin"):
        open_checkpoint(data, "other.example", [LOG.verifier()])
    with pytest.raises(NoteError):
        open_checkpoint(data, ORIGIN, [Ed25519Signer(ORIGIN, key(2)).verifier()])
    with pytest.raises(CheckpointError):
        open_checkpoint(sign_note("not a checkpoint\n", [LOG]), ORIGIN, [LOG.verifier()])


def test_empty_tree_checkpoint_needs_empty_root() -> None:
    ok = Checkpoint(ORIGIN, 0, EMPTY_ROOT).sign([LOG])
    assert open_checkpoint(ok, ORIGIN, [LOG.verifier()]).size == 0
    bad = Checkpoint(ORIGIN, 0, ROOT).sign([LOG])
    with pytest.raises(CheckpointError, match="empty"):
        open_checkpoint(bad, ORIGIN, [LOG.verifier()])


@given(st.text(max_size=200))
def test_parse_checkpoint_random_text(text: str) -> None:
    try:
        cp = parse_checkpoint(text)
    except CheckpointError:
        return
    assert cp.text() == text


@given(
    st.text(min_size=1, max_size=40).filter(lambda s: all(ord(c) >= 0x20 for c in s)),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.binary(min_size=32, max_size=32),
)
def test_checkpoint_round_trip(origin: str, size: int, root: bytes) -> None:
    cp = Checkpoint(origin, size, root)
    assert parse_checkpoint(cp.text()) == cp


@given(st.binary(max_size=300))
def test_open_checkpoint_random_bytes(data: bytes) -> None:
    with pytest.raises((NoteError, CheckpointError)):
        open_checkpoint(data, ORIGIN, [LOG.verifier()])


# --- cosignature/v1 -------------------------------------------------------------


def test_cosigned_message_format() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert cosigned_message(text, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + text.encode()
    )
    with pytest.raises(ValueError):
        cosigned_message(text, -1)
    with pytest.raises(ValueError):
        cosigned_message(text, 2**63)


def test_cosignature_key_id_uses_type_0x04() -> None:
    w = cosigner(1)
    pk = key(11).public_key()
    want = hashlib.sha256(b"w1.example\n\x04" + pk).digest()[:4]
    assert w.key_id == int.from_bytes(want, "big")
    vkey = w.verifier().verifier_key()
    assert vkey == format_verifier_key("w1.example", 0x04, pk)
    assert parse_cosigner_key(vkey) == w.verifier()
    with pytest.raises(NoteError, match="not cosignature"):
        parse_cosigner_key(LOG.verifier().verifier_key())


def test_cosign_and_verify() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    sig = cosigner(1).cosign(cp, 1_700_000_000)
    assert len(sig.signature) == 72
    assert sig.signature[:8] == (1_700_000_000).to_bytes(8, "big")
    verifier = cosigner(1).verifier()
    text = cp.text().encode()
    assert verifier.verify_timestamped(text, sig.signature) == 1_700_000_000
    # The signature is a plain Ed25519 signature over the cosigned message.
    Ed25519PublicKey.from_public_bytes(verifier.public_key).verify(
        sig.signature[8:], cosigned_message(cp.text(), 1_700_000_000)
    )
    # Changing the timestamp, the text or the length breaks it.
    forged_time = (1_700_000_001).to_bytes(8, "big") + sig.signature[8:]
    for text_, sig_ in [
        (text, forged_time),
        (text.replace(b"7", b"8"), sig.signature),
        (text, sig.signature[:-1]),
        (text, (2**63).to_bytes(8, "big") + sig.signature[8:]),
        (b"\xff\n", sig.signature),
    ]:
        with pytest.raises(SignatureError):
            verifier.verify(text_, sig_)


def test_cosigned_note_opens_with_cosigner_as_note_verifier() -> None:
    cp = Checkpoint(ORIGIN, 7, ROOT)
    data = cp.sign([LOG]) + cosigner(1).cosign(cp, 5).line().encode()
    note = open_note(data, [cosigner(1).verifier()])
    assert [s.name for s in note.signatures] == ["w1.example"]


def _cosigned(cp: Checkpoint, signers: list[CosignatureSigner]) -> bytes:
    return (
        cp.sign([LOG])
        + "".join(s.cosign(cp, 100 + i).line() for i, s in enumerate(signers)).encode()
    )


def test_policy_k_of_n() -> None:
    cp = Checkpoint(ORIGIN, 9, ROOT)
    ws = [cosigner(i) for i in range(3)]
    policy = CosignerPolicy(2, [w.verifier() for w in ws])
    opened = open_checkpoint(_cosigned(cp, [ws[0], ws[2]]), ORIGIN, [LOG.verifier()])
    got = policy.verify_checkpoint(opened)
    assert [(c.name, c.timestamp) for c in got] == [("w0.example", 100), ("w2.example", 101)]
    one = open_checkpoint(_cosigned(cp, [ws[1]]), ORIGIN, [LOG.verifier()])
    with pytest.raises(CosignerPolicyError, match="1 of the required 2"):
        policy.verify_checkpoint(one)
    # An unconfigured cosigner does not count.
    stranger = open_checkpoint(_cosigned(cp, [ws[0], cosigner(7)]), ORIGIN, [LOG.verifier()])
    with pytest.raises(CosignerPolicyError):
        policy.verify_checkpoint(stranger)
    assert CosignerPolicy(0, []).verify_checkpoint(one) == []


def test_policy_rejects_cosignature_over_other_checkpoint() -> None:
    cp = Checkpoint(ORIGIN, 9, ROOT)
    other = Checkpoint(ORIGIN, 10, ROOT)
    w = cosigner(0)
    data = cp.sign([LOG]) + w.cosign(other, 5).line().encode()
    opened = open_checkpoint(data, ORIGIN, [LOG.verifier()])
    with pytest.raises(NoteError, match="does not verify"):
        CosignerPolicy(1, [w.verifier()]).verify_checkpoint(opened)


def test_policy_duplicate_cosignature_lines_rejected() -> None:
    cp = Checkpoint(ORIGIN, 9, ROOT)
    w = cosigner(0)
    line = w.cosign(cp, 5).line()
    with pytest.raises(NoteError, match="same key"):
        open_checkpoint(cp.sign([LOG]) + (line * 2).encode(), ORIGIN, [LOG.verifier()])


def test_policy_misuse() -> None:
    v = cosigner(0).verifier()
    with pytest.raises(ValueError):
        CosignerPolicy(2, [v])
    with pytest.raises(ValueError):
        CosignerPolicy(-1, [v])
    with pytest.raises(ValueError):
        CosignerPolicy(1, [v, v])
    with pytest.raises(ValueError):
        # Same key under two names counts once, so the policy refuses it.
        CosignerPolicy(1, [v, CosignatureVerifier("alias.example", v.public_key)])
    with pytest.raises(ValueError):
        CosignerPolicy(1, [cosigner(i).verifier() for i in range(cosignature.MAX_COSIGNERS + 1)])
    with pytest.raises(ValueError):
        CosignerPolicy(0, []).verify_checkpoint(Checkpoint(ORIGIN, 1, ROOT))


def test_cosigner_repr_has_no_secret() -> None:
    w = cosigner(0)
    assert "CosignatureSigner" in repr(w)
    assert NoteSignature("a", 1, b"x").line().startswith("— a ")
