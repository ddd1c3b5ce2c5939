"""Group commit in the HSM's HTTP front (requests that arrive together share one durable
write), and the HSM node on each record store engine.

The committer (bkv.hsm.committer) is driven on a real HsmNode (software
sealer, file NV counter, SQLite record store in a temporary directory). The
requests are queued before the worker first runs, so which requests share a
batch is deterministic here.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import uuid
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from hsm_world import fleet_keys_of

from bkv.client import vault as client_vault
from bkv.crypto.opaque import client_login_start
from bkv.errors import HsmFailedError, NvCounterConflictError, StateRollbackError
from bkv.hsm.committer import MAX_QUEUED, GroupCommitter, QueueFullError
from bkv.hsm.config import load_config
from bkv.hsm.node import HsmNode, init_hsm, load_hsm
from bkv.hsm.runner import Refused
from bkv.protocol.messages import OUTER_RESPONSES, HsmRejected, HsmResponse, RecoverStart
from bkv.wire import decode_any


def _node(tmp_path: Path) -> HsmNode:
    path = tmp_path / "hsm.toml"
    path.write_text('[hsm]\nfleet_id = "f"\nstate_dir = "state"\n[sealer]\n', encoding="utf-8")
    return init_hsm(load_config(path))


def _ke1_requests(node: HsmNode, count: int) -> list[bytes]:
    fleet = fleet_keys_of(node.app)
    requests = []
    for index in range(count):
        _state, ke1 = client_login_start(b"password")
        inner = RecoverStart(ke1.to_bytes())
        requests.append(client_vault.build_request(fleet, b"acct-%d" % index, inner).request)
    return requests


async def _submit_together(committer: GroupCommitter, bodies: list[bytes]) -> list[object]:
    async with committer.running():
        tasks = [asyncio.ensure_future(committer.submit(body)) for body in bodies]
        return await asyncio.gather(*tasks, return_exceptions=True)


def test_requests_queued_together_share_one_commit(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        before = node.app.version
        bodies = _ke1_requests(node, 12)
        committer = GroupCommitter(node, tick_interval_s=60.0)
        outcomes = asyncio.run(_submit_together(committer, bodies))
        # Twelve KE1s for unknown accounts: each answered (a fake-record KE2),
        # all after one store transaction and one counter advance.
        for outcome in outcomes:
            assert isinstance(outcome, bytes)
            assert isinstance(decode_any(outcome, OUTER_RESPONSES), HsmResponse)
        assert node.app.version == before + 1
        assert node.device.committed.version == before + 1
        stored = node.store.sealed_state()
        assert stored is not None
        assert node.device.committed.digest == hashlib.sha256(stored).digest()


def test_a_lone_request_is_its_own_batch(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        before = node.app.version
        committer = GroupCommitter(node, tick_interval_s=60.0)

        async def one_by_one() -> None:
            async with committer.running():
                for body in _ke1_requests(node, 3):
                    assert isinstance(await committer.submit(body), bytes)

        asyncio.run(one_by_one())
        assert node.app.version == before + 3


def test_a_full_queue_refuses_at_once(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        committer = GroupCommitter(node, tick_interval_s=60.0)

        async def flood() -> None:
            # The worker is not running: nothing leaves the queue.
            waiting = [asyncio.ensure_future(committer.submit(b"x")) for _ in range(MAX_QUEUED)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFullError):
                await committer.submit(b"x")
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

        asyncio.run(flood())


def test_a_failed_commit_fails_every_request_of_the_batch_and_latches(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        before = node.app.version
        # Another writer moves the NV counter: the batch's counter advance (a
        # compare-and-swap) fails after the store committed, so no answer may leave.
        device = node.device
        device.counter.advance(device.committed, device.committed.next(before + 7, bytes(32)))
        committer = GroupCommitter(node, tick_interval_s=60.0)
        outcomes = asyncio.run(_submit_together(committer, _ke1_requests(node, 5)))
        assert all(isinstance(outcome, NvCounterConflictError) for outcome in outcomes)
        assert node.failed and node.app.version == before
        with pytest.raises(HsmFailedError):
            node.handle(_ke1_requests(node, 1)[0], 0)


def test_a_request_whose_read_is_refused_fails_alone(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        requests = _ke1_requests(node, 3)
        # The host plants a blob for acct-1, whose record the tree does not hold.
        planted = node.app.record_id(b"acct-1")
        with sqlite3.connect(tmp_path / "state" / "records.sqlite3") as db:
            db.execute("INSERT INTO records (key, blob) VALUES (?, ?)", (planted, b"\x01" * 80))
        before = node.app.version
        outcomes = node.handle_batch(requests, 1)
        assert isinstance(outcomes[1], Refused) and "RecordMismatchError" in outcomes[1].error
        assert isinstance(outcomes[0], bytes) and isinstance(outcomes[2], bytes)
        assert node.app.version == before + 1 and not node.failed


def test_a_malformed_request_is_rejected_in_the_clear_within_its_batch(tmp_path: Path) -> None:
    with _node(tmp_path) as node:
        good = _ke1_requests(node, 2)
        outcomes = node.handle_batch([good[0], b"\x00garbage", good[1]], 1)
        assert all(isinstance(outcome, bytes) for outcome in outcomes)
        assert isinstance(decode_any(outcomes[1], OUTER_RESPONSES), HsmRejected)


def test_an_hsm_on_postgresql_serves_restarts_and_refuses_a_rollback(
    tmp_path: Path, postgres_url: str
) -> None:
    # The same HSM, with its record store in a real PostgreSQL (its own schema).
    schema = f"hsm_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}schema={schema}"
    path = tmp_path / "hsm.toml"
    path.write_text(
        f'[hsm]\nfleet_id = "f"\nstate_dir = "state"\nrecord_store = "{url}"\n[sealer]\n',
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.record_store == url
    with init_hsm(config) as node:
        outcomes = node.handle_batch(_ke1_requests(node, 4), 1)
        assert all(isinstance(outcome, bytes) for outcome in outcomes)
        version = node.app.version
        old_state = node.store.sealed_state()
        node.handle_batch(_ke1_requests(node, 2), 2)
    assert not (tmp_path / "state" / "records.sqlite3").exists()
    with load_hsm(config) as node:
        assert node.app.version == version + 1
        # The host puts the older sealed state back: the NV counter refuses it.
        with psycopg.connect(postgres_url) as db:
            db.execute(
                psycopg.sql.SQL("UPDATE {}.head SET sealed_state = %s").format(
                    psycopg.sql.Identifier(schema)
                ),
                (old_state,),
            )
    with pytest.raises(StateRollbackError):
        load_hsm(config)


def test_the_record_store_url_is_in_no_repr_of_the_config(tmp_path: Path) -> None:
    # A PostgreSQL URL may carry a password (docs/operations.md says to keep it
    # in ~/.pgpass, but a config that does not must still not print it).
    path = tmp_path / "hsm.toml"
    url = "postgresql://bkv:s3cret-pw@db.internal/bkv?schema=f"
    path.write_text(
        f'[hsm]\nfleet_id = "f"\nstate_dir = "state"\nrecord_store = "{url}"\n[sealer]\n',
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.record_store == url
    assert "s3cret-pw" not in repr(config)
