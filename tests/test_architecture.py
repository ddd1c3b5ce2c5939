"""Architecture rules that the code must keep (docs/architecture.md).

The sans-IO cores (codec, crypto, log, witness, HSM application, client
verification) must not import anything that does I/O: storage, network,
PKCS#11, subprocesses, threads or the wall clock live in adapters at the edge.
This test parses each core module's source and checks every import, so it also
catches an import inside a function body.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "bkv"

# Modules whose import means the code does I/O or reads the clock by itself.
IO_MODULES = frozenset(
    {
        "asyncio",
        "http",
        "httpx",
        "io",
        "multiprocessing",
        "pkcs11",
        "selectors",
        "shutil",
        "signal",
        "socket",
        "socketserver",
        "sqlite3",
        "ssl",
        "starlette",
        "subprocess",
        "tempfile",
        "threading",
        "time",
        "urllib",
        "uvicorn",
        "pathlib",
        "fcntl",
        "datetime",
    }
)

# Core modules: (package-relative path) -> each must be pure.
CORE_PACKAGES = ("wire", "crypto", "tlog", "witness", "hsm", "client")
# Adapters at the edge of a core package, named for what they adapt.
ADAPTER_NAMES = frozenset({"http.py", "server.py", "store.py", "store_sqlite.py", "sdk.py"})
ADAPTER_PREFIXES = ("store_", "http_", "pkcs11")


def _core_modules() -> list[Path]:
    modules = []
    for package in CORE_PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            name = path.name
            if name in ADAPTER_NAMES or name.startswith(ADAPTER_PREFIXES):
                continue
            modules.append(path)
    return modules


def _imported_roots(path: Path) -> set[str]:
    """Top-level names a module imports, plus markers for imports of our own adapters."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 0:
                roots.add(node.module.split(".")[0])
            if (node.level > 0 or node.module.startswith("bkv.")) and _is_adapter_name(node.module):
                roots.add(f"<adapter {node.module}>")
    return roots


def _is_adapter_name(dotted: str) -> bool:
    last = dotted.rsplit(".", maxsplit=1)[-1]
    return f"{last}.py" in ADAPTER_NAMES or last.startswith(ADAPTER_PREFIXES)


CORE_MODULES = _core_modules()

# What a core must not pull in even transitively. (time, io, subprocess and
# threading are left out here: the standard library and ctypes import them for
# their own purposes; the direct-import check above covers our code.)
TRANSITIVE_IO = (
    "socket",
    "asyncio",
    "sqlite3",
    "http",
    "httpx",
    "starlette",
    "uvicorn",
    "pkcs11",
    "ssl",
    "urllib",
    "multiprocessing",
)


def test_there_are_core_modules_to_check() -> None:
    # Guards the test below against silently checking nothing.
    assert len(CORE_MODULES) >= 5


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_imports_no_io(path: Path) -> None:
    bad = _imported_roots(path) & IO_MODULES
    assert not bad, f"{path.relative_to(SRC)} imports I/O modules {sorted(bad)}"


def _dotted(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_core_modules_pull_in_no_io_transitively() -> None:
    names = [_dotted(p) for p in CORE_MODULES]
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        f"print(' '.join(sorted(loaded & set({TRANSITIVE_IO!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "", f"cores pull in I/O modules: {result.stdout.strip()}"


def test_detector_catches_io_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    import sqlite3\n    from http import client\n"
        "from bkv.tlog.store_sqlite import X\n"
    )
    roots = _imported_roots(sample)
    assert roots & IO_MODULES == {"sqlite3", "http"}
    assert "<adapter bkv.tlog.store_sqlite>" in roots
