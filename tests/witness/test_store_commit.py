"""A failed COMMIT leaves no open transaction; a failed ROLLBACK closes the store for good."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from witness_helpers import NS, Clock, db_dump, running_server, submission

from bkv.errors import StorageError
from bkv.keystore import SoftwareSigner
from bkv.protocol import witness_api
from bkv.witness.service import WitnessService


def deny(*statements: str) -> Callable[..., int]:
    def authorizer(action: int, arg1: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and arg1 in statements:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorizer


def test_failed_commit_rolls_back_and_store_stays_usable(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    service.submit(submission(operator, 1, clock))
    before = db_dump(db_path)
    conn = service.store._conn
    # The denied COMMIT stands in for an I/O error or a full disk.
    conn.set_authorizer(deny("COMMIT"))
    with pytest.raises(StorageError, match="commit failed"):
        service.submit(submission(operator, 2, clock))
    conn.set_authorizer(None)
    assert not conn.in_transaction
    # Nothing uncommitted is served on this connection, and nothing reached the file.
    assert service.store.signed_epoch(NS, 2) is None
    latest = service.store.latest_checkpoint()
    assert latest is not None and latest[0] == 1
    assert db_dump(db_path) == before
    # The next submission works (epoch 2 was never signed).
    assert service.submit(submission(operator, 2, clock)).log_index == 1


def test_failed_rollback_closes_the_store(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    service.submit(submission(operator, 1, clock))
    before = db_dump(db_path)
    service.store._conn.set_authorizer(deny("COMMIT", "ROLLBACK"))
    with pytest.raises(StorageError, match="commit failed"):
        service.submit(submission(operator, 2, clock))
    # The store refuses reads and writes rather than serve an uncommitted epoch.
    with pytest.raises(StorageError, match="closed"):
        service.store.signed_epoch(NS, 2)
    with pytest.raises(StorageError, match="closed"):
        service.submit(submission(operator, 2, clock))
    assert db_dump(db_path) == before


def test_log_size_is_max_index_plus_one(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    for epoch in (1, 2, 3):
        service.submit(submission(operator, epoch, clock))
    with service.store.reading_log() as log:
        assert log.size == 3
        assert log.store.size() == 3


def test_failed_commit_over_http_is_503_and_changes_nothing(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    before = db_dump(db_path)
    body = witness_api.submission_to_json(submission(operator, 1, clock))
    with running_server(service) as url:
        service.store._conn.set_authorizer(deny("COMMIT"))
        try:
            response = httpx.post(f"{url}/namespaces/{NS}/submissions", json=body, timeout=10)
        finally:
            service.store._conn.set_authorizer(None)
        assert (response.status_code, response.json()["error"]) == (503, "StorageError")
        assert httpx.get(f"{url}/namespaces/{NS}/audits/1", timeout=10).status_code == 404
    assert db_dump(db_path) == before
