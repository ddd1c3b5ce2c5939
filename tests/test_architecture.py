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

from bkv.protocol import artifact, messages

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

# Packages whose modules are sans-IO cores unless listed as adapters below.
CORE_PACKAGES = ("wire", "crypto", "tlog", "witness", "hsm", "client")

# The adapters at the edge of the core packages, each with what it adapts.
# Everything else in CORE_PACKAGES must be pure.
ADAPTERS = {
    "tlog/store_sqlite.py": "SQLite storage of log hashes and entries",
    "witness/store.py": "SQLite storage of namespaces, signed epochs and the log",
    "witness/keys.py": "reads key files / opens PKCS#11 keys",
    "witness/service.py": "wires the wall clock, key files and the SQLite store to the core",
    "witness/http.py": "Starlette HTTP API",
    "hsm/store.py": "atomic file storage of the sealed state",
    "hsm/server.py": "the HSM process: HTTP message endpoint, persistence loop",
    "client/sdk.py": "HTTP transport of the client SDK",
    "client/store_json.py": "file storage of the client's trust state",
}


def _core_modules() -> list[Path]:
    return [
        path
        for package in CORE_PACKAGES
        for path in sorted((SRC / package).rglob("*.py"))
        if str(path.relative_to(SRC)) not in ADAPTERS
    ]


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


ADAPTER_MODULES = frozenset(
    ("bkv." + name.removesuffix(".py").replace("/", ".")) for name in ADAPTERS
)


def _is_adapter_name(dotted: str) -> bool:
    last = dotted.rsplit(".", maxsplit=1)[-1]
    return dotted in ADAPTER_MODULES or any(m.endswith(f".{last}") for m in ADAPTER_MODULES)


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
    # Guards the tests below against silently checking nothing.
    assert len(CORE_MODULES) >= 20


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_listed_adapter_exists(name: str) -> None:
    # Keeps the adapter list true: a renamed adapter must be listed again.
    assert (SRC / name).is_file()


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
        "from bkv.tlog.store_sqlite import X\nfrom .store import Y\n"
    )
    roots = _imported_roots(sample)
    assert roots & IO_MODULES == {"sqlite3", "http"}
    assert "<adapter bkv.tlog.store_sqlite>" in roots
    assert "<adapter store>" in roots


def test_artifact_and_hsm_agree_on_the_guess_limit_cap() -> None:
    # The witness package must not import the HSM's, so the cap is written twice.
    assert artifact.MAX_GUESS_LIMIT == messages.MAX_GUESS_LIMIT
