"""PostgreSQL only: two writers, settings, schemas, errors that never echo the connection
string, a lost connection, a corrupt table (the shared suite runs on it too)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from records_world import Vault, blob_of, commit_batch, key_of, next_update, sealed_state_of

import postgres_cluster
from bkv.errors import StorageError
from bkv.records.store_postgres import PostgresTreeStore
from bkv.records.tree import read_proof
from postgres_cluster import PASSWORD, drop_schema, unique_schema


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = unique_schema()
    yield name
    drop_schema(postgres_url, name)


@pytest.fixture
def vault(postgres_url: str, schema: str) -> Iterator[Vault]:
    with PostgresTreeStore(postgres_url, schema=schema) as store:
        vault = Vault(store)
        vault.change({key_of(i): blob_of(i) for i in range(10)})
        yield vault


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def test_a_second_writer_with_a_stale_head_is_refused(
    postgres_url: str, schema: str, vault: Vault
) -> None:
    with PostgresTreeStore(postgres_url, schema=schema) as other:
        assert other.head() == vault.head
        stale = next_update(other, vault.head, {key_of(1): blob_of(1, 9)})
        vault.change({key_of(2): blob_of(2, 1)})  # the first writer commits first
        with pytest.raises(StorageError, match="head"):
            other.commit(stale, {key_of(1): blob_of(1, 9)}, b"stale sealed state")
        assert other.head() == vault.head
        assert other.sealed_state() == sealed_state_of(vault.head)
        assert other.read_record(key_of(1)) == blob_of(1)
        # At the current head, the second writer's batch goes through.
        head = commit_batch(other, vault.head, {key_of(1): blob_of(1, 9)})
        assert vault.store.head() == head
        assert vault.store.read_record(key_of(1)) == blob_of(1, 9)


def test_a_writer_waits_for_another_then_gives_up_typed(
    postgres_url: str, schema: str, vault: Vault
) -> None:
    update = next_update(vault.store, vault.head, {key_of(1): blob_of(1, 1)})
    with (
        PostgresTreeStore(postgres_url, schema=schema, lock_timeout_ms=100) as store,
        _admin(postgres_url) as other,
    ):
        with other.transaction():  # another writer holds the schema's writer lock
            other.execute(
                sql.SQL("LOCK TABLE {}.head IN SHARE ROW EXCLUSIVE MODE").format(
                    sql.Identifier(schema)
                )
            )
            assert store.head() == vault.head  # readers are not blocked
            assert store.read_for_key(key_of(1))[1] == blob_of(1)
            started = time.monotonic()
            with pytest.raises(StorageError, match="commit failed: LockNotAvailable"):
                store.commit(update, {key_of(1): blob_of(1, 1)}, b"sealed")
            assert time.monotonic() - started < 5
        assert store.head() == vault.head
        store.commit(update, {key_of(1): blob_of(1, 1)}, b"sealed")
        assert vault.store.head() == update.new_head


def test_settings(vault: Vault) -> None:
    db = vault.store._db  # type: ignore[attr-defined]  # the settings are what this checks
    assert db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    assert db.execute("SHOW fsync").fetchone()[0] == "on"
    assert db.execute("SHOW lock_timeout").fetchone()[0] == "5s"
    assert db.isolation_level == psycopg.IsolationLevel.REPEATABLE_READ


def test_reopen_keeps_everything(postgres_url: str, schema: str, vault: Vault) -> None:
    ids = vault.store.node_ids()  # type: ignore[attr-defined]
    vault.store.close()  # type: ignore[attr-defined]
    with PostgresTreeStore(postgres_url, schema=schema) as reopened:
        assert reopened.head() == vault.head
        assert reopened.sealed_state() == sealed_state_of(vault.head)
        assert reopened.node_ids() == ids
        assert reopened.read_record(key_of(4)) == blob_of(4)


def test_schemas_are_separate_stores(postgres_url: str, vault: Vault) -> None:
    other_schema = unique_schema()
    try:
        with PostgresTreeStore(postgres_url, schema=other_schema) as other:
            assert other.head() is None
            assert other.read_record(key_of(1)) is None
            Vault(other).change({key_of(1): blob_of(1, 5)})
            assert vault.store.read_record(key_of(1)) == blob_of(1)
    finally:
        drop_schema(postgres_url, other_schema)


@pytest.mark.parametrize(
    "name", ["", "Upper", "1st", "with-dash", "with space", 'q"uote', "x" * 64, "pg_own", "é"]
)
def test_a_bad_schema_name_is_refused(postgres_url: str, name: str) -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresTreeStore(postgres_url, schema=name)


def test_the_longest_schema_name_works(postgres_url: str) -> None:
    name = "s" * 63
    try:
        with PostgresTreeStore(postgres_url, schema=name) as store:
            Vault(store)
            assert store.head() is not None
    finally:
        drop_schema(postgres_url, name)


def _secret_free(exc: BaseException) -> None:
    """Neither the error nor anything chained to it shows the password."""
    seen: BaseException | None = exc
    while seen is not None:
        assert PASSWORD not in str(seen)
        assert PASSWORD not in repr(seen)
        seen = seen.__cause__ or seen.__context__


@pytest.mark.parametrize(
    "variant", ["wrong password", "closed port", "bad conninfo", "unknown database"]
)
def test_connect_errors_are_typed_and_never_echo_the_connection_string(
    postgres_url: str, variant: str
) -> None:
    secret = "s3cret-" + PASSWORD
    if variant == "wrong password":
        url = postgres_url.replace(PASSWORD, secret)
    elif variant == "closed port":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"postgresql://bkv:{secret}@127.0.0.1:{port}/x"
    elif variant == "bad conninfo":
        url = f"host=127.0.0.1 password={secret} nonsense"
    else:
        url = postgres_url.rsplit("/", 1)[0].replace(PASSWORD, secret) + "/no_such_db"
    started = time.monotonic()
    with pytest.raises(StorageError, match="connect failed") as caught:
        PostgresTreeStore(url, schema="bkv", connect_timeout_s=3)
    assert time.monotonic() - started < 10
    assert secret not in str(caught.value)
    _secret_free(caught.value)
    assert "s3cret" not in str(caught.value)


def test_the_repr_shows_the_schema_only(vault: Vault) -> None:
    assert repr(vault.store).startswith("PostgresTreeStore(schema='t_")
    assert PASSWORD not in repr(vault.store)


def test_a_lost_connection_is_opened_again(postgres_url: str, vault: Vault) -> None:
    db = vault.store._db  # type: ignore[attr-defined]
    with _admin(postgres_url) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (db.info.backend_pid,))
    with contextlib.suppress(StorageError):  # the first use finds it lost
        vault.store.head()
    assert vault.store.head() == vault.head
    assert read_proof(vault.store, vault.head, key_of(1)) is not None


def test_a_closed_store_fails_typed(vault: Vault) -> None:
    vault.store.close()  # type: ignore[attr-defined]
    with pytest.raises(StorageError, match="closed"):
        vault.store.head()


@pytest.mark.parametrize(
    ("statement", "read", "message"),
    [
        ("UPDATE {}.head SET root = '\\x00'", "head", "head is corrupt"),
        ("UPDATE {}.head SET version = -1", "head", "head is corrupt"),
        ("UPDATE {}.head SET sealed_state = ''", "sealed_state", "sealed state is corrupt"),
        ("UPDATE {}.nodes SET hash = '\\x00'", "node_ids", "hash is corrupt"),
        ("UPDATE {}.nodes SET pos = '\\x0101'", "node_ids", "position is corrupt"),
    ],
)
def test_corrupt_tables_fail_typed(
    postgres_url: str, schema: str, vault: Vault, statement: str, read: str, message: str
) -> None:
    with _admin(postgres_url) as admin:
        admin.execute(sql.SQL(statement).format(sql.Identifier(schema)))
    with pytest.raises(StorageError, match=message):
        getattr(vault.store, read)()


def test_a_role_without_create_uses_existing_tables(
    postgres_url: str, schema: str, vault: Vault
) -> None:
    """Tables made at the first start (by a role with CREATE) need no DDL afterwards."""
    role, password = unique_schema(), "role-password"
    ident = sql.Identifier(role)
    with _admin(postgres_url) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password))
        )
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident)
        )
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), ident
            )
        )
    url = postgres_url.replace(f"bkv:{PASSWORD}@", f"{role}:{password}@")
    try:
        with PostgresTreeStore(url, schema=schema) as store:
            assert store.head() == vault.head
            head = commit_batch(store, vault.head, {key_of(1): blob_of(1, 2)})
            assert vault.store.head() == head
        with pytest.raises(StorageError, match="open failed"):
            PostgresTreeStore(url, schema=unique_schema())  # no CREATE on the database
    finally:
        with _admin(postgres_url) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            admin.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_without_the_server_binaries_the_cluster_says_to_run_make_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_cluster, "BIN_GLOB", str(tmp_path / "*" / "bin"))
    with pytest.raises(postgres_cluster.ClusterUnavailableError, match="run `make setup`"):
        postgres_cluster.find_bindir()


def test_the_newest_server_binaries_are_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for major in ("9", "15", "16", "17"):
        bindir = tmp_path / major / "bin"
        bindir.mkdir(parents=True)
        for program in ("initdb", "pg_ctl") if major != "17" else ("initdb",):
            (bindir / program).touch()
    monkeypatch.setattr(postgres_cluster, "BIN_GLOB", str(tmp_path / "*" / "bin"))
    assert postgres_cluster.find_bindir() == tmp_path / "16" / "bin"
