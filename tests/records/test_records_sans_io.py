"""The bkv.records core imports no I/O modules (only the storage adapters may)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bkv.records

PACKAGE = Path(bkv.records.__file__).resolve().parent
FORBIDDEN = {
    "asyncio",
    "datetime",
    "http",
    "httpx",
    "io",
    "os",
    "pathlib",
    "pkcs11",
    "psycopg",
    "random",
    "secrets",
    "socket",
    "sqlite3",
    "starlette",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "urllib",
    "uvicorn",
}
ADAPTERS = {"store_sqlite.py", "store_postgres.py", "engines.py"}
CORE = sorted(p for p in PACKAGE.glob("*.py") if p.name not in ADAPTERS)


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_modules_found() -> None:
    assert {p.name for p in CORE} >= {"tree.py", "nodes.py", "proof.py", "store_memory.py"}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    assert imported_roots(path) & FORBIDDEN == set()


def test_the_checker_sees_the_adapter_io() -> None:
    # The same check flags the adapters, so it is not vacuous.
    assert "sqlite3" in imported_roots(PACKAGE / "store_sqlite.py")
    assert "psycopg" in imported_roots(PACKAGE / "store_postgres.py")
