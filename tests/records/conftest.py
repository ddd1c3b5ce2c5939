"""Fixtures of the record tree tests: every test that stores runs on both real stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from records_world import STORE_KINDS, open_store

from bkv.records.tree import TreeStore


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[TreeStore]:
    with open_store(request.param) as opened:
        yield opened
