"""Fixtures of the record tree tests: every test that stores runs on every store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from records_world import STORE_KINDS, FreshStore, open_store, postgres_url_for

from bkv.records.tree import TreeStore


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fresh_store(store_kind: str, request: pytest.FixtureRequest) -> FreshStore:
    """Opens another fresh store of this test's kind (PostgreSQL: a schema of its own)."""
    url = postgres_url_for(store_kind, request)
    return lambda: open_store(store_kind, url)


@pytest.fixture
def store(fresh_store: FreshStore) -> Iterator[TreeStore]:
    """A fresh store of each kind (PostgreSQL: a schema of its own, dropped after)."""
    with fresh_store() as opened:
        yield opened
