"""KSF: Identity, and Argon2id parameters as documented (RFC 9106 section 4, RFC 9807 4.3)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id as PycaArgon2id

from bkv.crypto.ksf import Argon2id, Identity
from bkv.crypto.opaque import Config

TINY = {"memory_kib": 64, "iterations": 1, "lanes": 1}


def test_identity_returns_its_input() -> None:
    assert Identity().stretch(b"\x01" * 64) == b"\x01" * 64


def test_argon2id_default_is_rfc9106_second_recommended_option() -> None:
    ksf = Argon2id()
    assert (ksf.memory_kib, ksf.iterations, ksf.lanes) == (64 * 1024, 3, 4)
    assert ksf.salt == bytes(16)  # RFC 9807 section 4.3: fixed zero salt


def test_argon2id_maps_parameters_onto_pyca_exactly() -> None:
    salt = bytes(range(16))
    ksf = Argon2id(memory_kib=128, iterations=2, lanes=2, salt=salt)
    expected = PycaArgon2id(salt=salt, length=64, iterations=2, lanes=2, memory_cost=128).derive(
        b"oprf output"
    )
    assert ksf.stretch(b"oprf output") == expected


def test_argon2id_output_is_nh_bytes_and_every_parameter_matters() -> None:
    base = Argon2id(**TINY).stretch(b"x")
    assert len(base) == 64
    assert Argon2id(**TINY).stretch(b"x") == base
    variants = [
        Argon2id(**TINY, salt=b"\x01" * 16),
        Argon2id(memory_kib=128, iterations=1, lanes=1),
        Argon2id(memory_kib=64, iterations=2, lanes=1),
        Argon2id(memory_kib=64, iterations=1, lanes=2),
    ]
    for variant in variants:
        assert variant.stretch(b"x") != base
    assert Argon2id(**TINY).stretch(b"y") != base


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory_kib": 7, "iterations": 1, "lanes": 1},
        {"memory_kib": 64, "iterations": 0, "lanes": 1},
        {"memory_kib": 64, "iterations": 1, "lanes": 0},
        {"memory_kib": 64, "iterations": 1, "lanes": 9},  # < 8 KiB per lane
        {"memory_kib": 64, "iterations": 1, "lanes": 1, "salt": b"short"},
        {"memory_kib": 5 * 1024 * 1024, "iterations": 1, "lanes": 1},
    ],
)
def test_argon2id_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Argon2id"):
        Argon2id(**kwargs)  # type: ignore[arg-type]


def test_default_config_stretches_passwords() -> None:
    # A Config made without thinking about the KSF must not leave passwords
    # unstretched: the default is Argon2id with RFC 9106's second recommended option.
    ksf = Config().ksf
    assert isinstance(ksf, Argon2id)
    assert (ksf.memory_kib, ksf.iterations, ksf.lanes) == (64 * 1024, 3, 4)
