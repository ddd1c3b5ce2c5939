"""Opens the record store a URL names (docs/operations.md, "Record storage: SQLite or PostgreSQL").

- ``sqlite:///absolute/path`` or ``sqlite:relative/path`` (the path as written,
  no query): :class:`bkv.records.store_sqlite.SqliteTreeStore`;
- ``postgresql://...`` or ``postgres://...`` (a libpq connection URI,
  https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS):
  :class:`bkv.records.store_postgres.PostgresTreeStore`. A ``schema=name``
  query parameter (or the ``schema`` keyword) picks the schema and is removed
  before libpq sees the URL; every other parameter (``sslmode``, ...) is
  libpq's.

Errors never echo the URL (it may hold a password): a ValueError names at
most the scheme, a StorageError the operation.
"""

from __future__ import annotations

import re

from bkv.records.store_sqlite import SqliteTreeStore
from bkv.records.tree import TreeStore

SQLITE_SCHEME = "sqlite"
POSTGRES_SCHEMES = ("postgresql", "postgres")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def open_tree_store(url: str, *, schema: str | None = None) -> TreeStore:
    """Open (creating its tables if needed) the store ``url`` names; close it when done.

    ``schema`` is for PostgreSQL only (default ``bkv``). ValueError for a URL
    this function does not take; StorageError if the store cannot be opened.
    """
    if not isinstance(url, str):
        raise TypeError("a record store URL is a string")
    scheme, colon, rest = url.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise ValueError("a record store URL starts with sqlite: or postgresql:")
    scheme = scheme.lower()
    if scheme == SQLITE_SCHEME:
        if schema is not None:
            raise ValueError("a schema is for PostgreSQL record stores")
        return SqliteTreeStore(_sqlite_path(rest))
    if scheme in POSTGRES_SCHEMES:
        # Imported here: psycopg loads libpq, which an SQLite deployment never needs.
        from bkv.records.store_postgres import DEFAULT_SCHEMA, PostgresTreeStore  # noqa: PLC0415

        conninfo, from_url = _split_schema(url)
        if from_url is not None and schema is not None:
            raise ValueError("the schema is given both in the URL and as an argument")
        chosen = from_url if from_url is not None else schema
        return PostgresTreeStore(conninfo, schema=DEFAULT_SCHEMA if chosen is None else chosen)
    raise ValueError(f"unsupported record store URL scheme {scheme!r}")


def _sqlite_path(rest: str) -> str:
    if rest.startswith("//"):
        if not rest.startswith("///"):
            raise ValueError("a sqlite: URL names no host: sqlite:///absolute/path")
        rest = rest[2:]
    if not rest:
        raise ValueError("a sqlite: URL names a file: sqlite:///absolute/path")
    if "?" in rest or "#" in rest:
        raise ValueError("a sqlite: URL takes no query or fragment")
    return rest


def _split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its ``schema=`` query parameter, and that parameter's value."""
    base, question, query = url.partition("?")
    if not question:
        return url, None
    kept, schemas = [], []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if name == "schema":
            schemas.append(value)
        else:
            kept.append(part)
    if len(schemas) > 1:
        raise ValueError("the record store URL gives schema= twice")
    conninfo = base + ("?" + "&".join(kept) if kept else "")
    return conninfo, schemas[0] if schemas else None
