"""Fixtures for the witness tests: a real SQLite store, fixed keys, a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from witness_helpers import NS, Clock, fixed_signer, make_service

from bkv.keystore import SoftwareSigner
from bkv.witness.service import WitnessService


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def operator() -> SoftwareSigner:
    return fixed_signer(0x0A)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "witness.db"


@pytest.fixture
def service(db_path: Path, clock: Clock, operator: SoftwareSigner) -> Iterator[WitnessService]:
    svc = make_service(db_path, clock)
    svc.register_namespace(NS, operator.public_key())
    yield svc
    svc.store.close()
