"""RFC 9497 Appendix A.1.1 (ristretto255-SHA512, OPRF mode): every vector, every field."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from crypto_vectors import VECTORS_DIR, Section, children, find, parse

from bkv.crypto import oprf, ristretto

SECTIONS = parse(VECTORS_DIR / "rfc9497-appendix-a.txt")
SUITE = find(SECTIONS, "A.1.1")
VECTORS = children(SECTIONS, "A.1.1")


def test_the_oprf_section_is_the_suite_we_implement() -> None:
    assert find(SECTIONS, "A.1").title == "ristretto255-SHA512"
    assert SUITE.title == "OPRF Mode"
    assert len(VECTORS) == 2  # A.1.1.1 and A.1.1.2; a parsing slip must not test nothing


def _key() -> ristretto.Scalar:
    secret, _ = oprf.derive_key_pair(SUITE.hex("Seed"), SUITE.hex("KeyInfo"))
    return secret


def _blind(vector: Section) -> tuple[ristretto.Scalar, ristretto.Element]:
    blind = ristretto.decode_scalar(vector.hex("Blind"))
    return oprf.blind(vector.hex("Input"), blind_scalar=blind)


def _evaluation(vector: Section) -> bytes:
    _, blinded = _blind(vector)
    return oprf.blind_evaluate(_key(), blinded)


def _finalize(vector: Section) -> bytes:
    blind, blinded = _blind(vector)
    return oprf.finalize(vector.hex("Input"), blind, oprf.blind_evaluate(_key(), blinded))


# Field name -> how we compute it. Each field of each vector is checked, plus the
# server-side Evaluate (which must give the same Output without blinding).
COMPUTE: dict[str, Callable[[Section], bytes]] = {
    "BlindedElement": lambda v: _blind(v)[1],
    "EvaluationElement": _evaluation,
    "Output": _finalize,
    "Output(Evaluate)": lambda v: oprf.evaluate(_key(), v.hex("Input")),
}
EXPECTED_FIELD = {"Output(Evaluate)": "Output"}
INPUT_FIELDS = {"Input", "Blind"}

CASES = [
    pytest.param(vector, name, id=f"A.1.1-vector{index}-{name}")
    for index, vector in enumerate(VECTORS, start=1)
    for name in COMPUTE
]


def test_derive_key_pair_gives_skSm() -> None:
    assert _key().hex() == SUITE.fields["skSm"]


def test_every_listed_field_is_checked() -> None:
    for vector in VECTORS:
        listed = set(vector.fields) - INPUT_FIELDS
        assert listed <= set(COMPUTE), listed - set(COMPUTE)


@pytest.mark.parametrize(("vector", "name"), CASES)
def test_vector_field(vector: Section, name: str) -> None:
    expected = vector.fields[EXPECTED_FIELD.get(name, name)]
    assert COMPUTE[name](vector).hex() == expected


def test_a_corrupted_input_fails_the_check() -> None:
    vector = VECTORS[0]
    corrupted = Section(vector.number, vector.title, dict(vector.fields))
    corrupted.fields["Input"] = "01"  # was 00
    assert COMPUTE["Output"](corrupted).hex() != vector.fields["Output"]
    assert COMPUTE["BlindedElement"](corrupted).hex() != vector.fields["BlindedElement"]


def test_a_corrupted_key_info_fails_the_check() -> None:
    secret, _ = oprf.derive_key_pair(SUITE.hex("Seed"), SUITE.hex("KeyInfo") + b"!")
    assert secret.hex() != SUITE.fields["skSm"]
