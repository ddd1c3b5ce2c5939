"""open_tree_store: the URL picks the engine; errors name at most the scheme, never a password."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from records_world import Vault, blob_of, key_of

from bkv.errors import StorageError
from bkv.records.engines import open_tree_store
from bkv.records.store_postgres import PostgresTreeStore
from bkv.records.store_sqlite import SqliteTreeStore
from postgres_cluster import PASSWORD, drop_schema, unique_schema


def test_an_absolute_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "fleet.sqlite"
    with open_tree_store(f"sqlite://{path}") as store:
        assert isinstance(store, SqliteTreeStore)
        Vault(store).change({key_of(1): blob_of(1)})
    assert path.is_file()
    with SqliteTreeStore(path) as again:
        assert again.read_record(key_of(1)) == blob_of(1)


def test_a_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state").mkdir()
    with open_tree_store("sqlite:state/fleet.sqlite") as store:
        assert isinstance(store, SqliteTreeStore)
        Vault(store)
    assert (tmp_path / "state" / "fleet.sqlite").is_file()


def test_a_sqlite_file_that_cannot_be_opened_fails_typed(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="open failed"):
        open_tree_store(f"sqlite://{tmp_path}/no/such/dir/x.sqlite")


def _schemas(url: str) -> set[str]:
    with psycopg.connect(url, connect_timeout=5) as db:
        rows = db.execute("SELECT nspname FROM pg_namespace").fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgres_url_with_a_schema(postgres_url: str, scheme: str) -> None:
    schema = unique_schema()
    base = postgres_url.replace("postgresql:", f"{scheme}:", 1)
    url = f"{base}?application_name=bkv-test&schema={schema}&connect_timeout=7"
    try:
        with open_tree_store(url) as store:
            assert isinstance(store, PostgresTreeStore)
            Vault(store).change({key_of(1): blob_of(1)})
            db = store._db
            assert db is not None
            # The other parameters reached libpq; the schema did not.
            assert db.info.parameter_status("application_name") == "bkv-test"
            # The store's bound on connecting wins over the URL's.
            assert db.info.get_parameters().get("connect_timeout") == "10"
        assert schema in _schemas(postgres_url)
    finally:
        drop_schema(postgres_url, schema)


def test_a_postgres_url_with_the_schema_as_an_argument(postgres_url: str) -> None:
    schema = unique_schema()
    try:
        with open_tree_store(postgres_url, schema=schema) as store:
            assert repr(store) == f"PostgresTreeStore(schema={schema!r})"
    finally:
        drop_schema(postgres_url, schema)


def test_a_postgres_url_without_a_schema_uses_bkv(postgres_url: str) -> None:
    try:
        with open_tree_store(postgres_url) as store:
            assert repr(store) == "PostgresTreeStore(schema='bkv')"
        assert "bkv" in _schemas(postgres_url)
    finally:
        drop_schema(postgres_url, "bkv")


SECRET = "hunter2-secret"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"mysql://root:{SECRET}@db/fleet", "scheme 'mysql'"),
        (f"HTTP://root:{SECRET}@db/fleet", "scheme 'http'"),
        (f"/var/lib/bkv/{SECRET}.sqlite", "starts with sqlite: or postgresql:"),
        (f"{SECRET} user=x", "starts with sqlite: or postgresql:"),
        ("", "starts with sqlite: or postgresql:"),
        (f"sqlite://host/{SECRET}", "no host"),
        ("sqlite:", "names a file"),
        ("sqlite://", "no host"),
        (f"sqlite:///x.sqlite?key={SECRET}", "no query"),
        (f"postgresql://u:{SECRET}@h/db?schema=a&schema=b", "twice"),
        (f"postgresql://u:{SECRET}@h/db?schema=Bad-Name", "schema name"),
    ],
)
def test_urls_that_are_refused_name_the_scheme_only(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        open_tree_store(url)
    assert SECRET not in str(caught.value)


def test_a_schema_given_twice_or_for_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both"):
        open_tree_store(f"postgresql://u:{SECRET}@h/db?schema=a", schema="a")
    with pytest.raises(ValueError, match="PostgreSQL"):
        open_tree_store(f"sqlite://{tmp_path}/x.sqlite", schema="a")
    with pytest.raises(TypeError):
        open_tree_store(b"sqlite:x")  # type: ignore[arg-type]


def test_a_wrong_password_fails_typed_without_the_password(postgres_url: str) -> None:
    url = postgres_url.replace(PASSWORD, SECRET) + "?schema=unused"
    with pytest.raises(StorageError, match="connect failed") as caught:
        open_tree_store(url)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None
