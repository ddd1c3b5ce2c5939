"""What the layer contracts cannot say (docs/architecture.md#layers).

``lint-imports`` (``make lint``) checks the contracts in pyproject.toml: the
layers, that the auditor shares no code with the parties it audits, and that no
sans-IO core imports an I/O module, directly or through any of our modules. It
reads only our sources, and only the modules it is told about, so it cannot see:

1. a module nobody classified: every module of a package that holds sans-IO
   cores must be either a core listed in the contract or an adapter listed
   here, never both, and every wildcard in the contract must match something
   (a missing module named in full is already an error of ``lint-imports``);
2. whether an adapter is one: an adapter must reach an I/O module (directly
   or through our modules, as the contract would see it), otherwise it is a
   core and belongs in the contract;
3. what third-party and standard-library modules load on a core's behalf when
   it is imported.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "bkv"


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {contract["id"]: contract for contract in config["tool"]["importlinter"]["contracts"]}


SANS_IO = _contracts()["sans-io"]
CORE_EXPRESSIONS: tuple[str, ...] = tuple(SANS_IO["source_modules"])
IO_MODULES = frozenset(SANS_IO["forbidden_modules"])

# Packages that hold sans-IO cores. Each of their modules is a core (listed in
# the "sans-io" contract) or an adapter (listed here with what it adapts).
CORE_PACKAGES = (
    "wire",
    "crypto",
    "protocol",
    "tlog",
    "records",
    "consensus",
    "hsm",
    "witness",
    "client",
    "host",
    "audit",
    "backup",
)

ADAPTERS = {
    "bkv.tlog.store_sqlite": "SQLite storage of log hashes and entries",
    "bkv.hsm.store": "atomic file storage of the public keys",
    "bkv.hsm.runner": "the host's half of the batch protocol: reads and commits the record store",
    "bkv.hsm.committer": "group commit: queues HTTP requests into batches (asyncio)",
    "bkv.hsm.config": "reads the TOML configuration file",
    "bkv.hsm.device": "opens the sealing key and the NV counter (key files or PKCS#11)",
    "bkv.hsm.node": "the persistence loop: store commit, counter advance, then the answers",
    "bkv.hsm.pause": "crash-test pause points (marker files)",
    "bkv.hsm.http": "the HSM's HTTP message endpoint (Starlette)",
    "bkv.hsm.process": "runs the HSM process: device, node and HTTP server",
    "bkv.records.store_sqlite": "SQLite storage of record-tree nodes and sealed records",
    "bkv.records.store_postgres": "PostgreSQL storage of record-tree nodes and sealed records",
    "bkv.records.engines": "opens the record store a URL names (SQLite file or PostgreSQL)",
    "bkv.witness.store": "SQLite storage of namespaces, signed epochs and the log",
    "bkv.witness.keys": "reads key files / opens PKCS#11 keys",
    "bkv.witness.service": "wires the wall clock, key files and the SQLite store to the core",
    "bkv.witness.http": "Starlette HTTP API",
    "bkv.client.sdk": "HTTP transport of the client SDK",
    "bkv.client.store_json": "file storage of the client's trust state",
    "bkv.host.app": "Starlette routes that relay to the HSM over HTTP",
    "bkv.host.link": "the keep-alive HTTP/1.1 link to the HSM (asyncio streams)",
    "bkv.host.bundle": "fetches and caches the served bundle and consistency proofs",
    "bkv.host.config": "reads the TOML configuration file",
    "bkv.host.server": "uvicorn",
    "bkv.audit.http_source": "fetches the witness's public record over HTTP",
    "bkv.audit.evidence_source": "reads deployment evidence (file or HTTP) and certificate files",
    "bkv.audit.source_tree": "reads a source tree for the code measurement",
    "bkv.backup.archive": "files and folders through a tar stream: temporary file, rename",
}

# Modules that do I/O, checked in ``sys.modules`` after the cores are imported.
# The contract's list is wider; these are the ones nothing in the standard
# library loads for its own purposes (ctypes.util, behind libsodium's loader,
# loads subprocess, shutil, tempfile and threading; the interpreter loads os
# and time at start-up).
LOADED_IO_MODULES = (
    "asyncio",
    "datetime",
    "http",
    "httpx",
    "logging",
    "multiprocessing",
    "pkcs11",
    "psycopg",
    "socket",
    "sqlite3",
    "ssl",
    "starlette",
    "urllib",
    "uvicorn",
)


def _dotted(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules_of(package: str) -> list[str]:
    return sorted(_dotted(path) for path in (SRC / package).rglob("*.py"))


def _matches(expression: str, module: str) -> bool:
    """import-linter's module expressions, as the contract uses them (trailing wildcards)."""
    if expression.endswith(".**"):
        return module.startswith(expression[:-2])
    if expression.endswith(".*"):
        prefix = expression[:-1]
        return module.startswith(prefix) and "." not in module[len(prefix) :]
    if "*" in expression:
        raise ValueError(f"unsupported module expression {expression!r}")
    return module == expression


def _is_core(module: str) -> bool:
    return any(_matches(expression, module) for expression in CORE_EXPRESSIONS)


@cache
def _graph() -> grimp.ImportGraph:
    """Our import graph as lint-imports builds it (function-body imports included)."""
    return grimp.build_graph("bkv", include_external_packages=True, cache_dir=None)


def _io_reached_from(module: str) -> list[str]:
    """The I/O modules of the contract that ``module`` imports, directly or through ours."""
    graph = _graph()
    return sorted(
        io
        for io in IO_MODULES
        if io in graph.modules and graph.find_shortest_chain(importer=module, imported=io)
    )


def _io_loaded_by(modules: list[str]) -> list[str]:
    """The I/O modules that importing ``modules`` in a fresh interpreter loads."""
    probe = (
        "import importlib, sys\n"
        "before = set(sys.modules)\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = set(sys.modules) - before\n"
        f"print(' '.join(sorted(loaded & set({LOADED_IO_MODULES!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.split()


PACKAGE_MODULES = [module for package in CORE_PACKAGES for module in _modules_of(package)]
CORE_MODULES = [module for module in PACKAGE_MODULES if _is_core(module)]


def test_there_are_core_modules_to_check() -> None:
    # Guards the tests below against silently checking nothing.
    assert len(CORE_MODULES) >= 50


def test_every_module_of_a_core_package_is_a_core_or_an_adapter() -> None:
    unclassified = [m for m in PACKAGE_MODULES if not _is_core(m) and m not in ADAPTERS]
    assert not unclassified, (
        f"list {unclassified} as sans-IO cores in pyproject.toml or as adapters here"
    )


def test_no_module_is_both_a_core_and_an_adapter() -> None:
    assert not [m for m in ADAPTERS if _is_core(m)]


@pytest.mark.parametrize("expression", [e for e in CORE_EXPRESSIONS if "*" in e])
def test_every_wildcard_of_the_contract_matches_a_module(expression: str) -> None:
    # lint-imports silently checks nothing for a wildcard that matches no module.
    assert any(_matches(expression, m) for m in PACKAGE_MODULES)


@pytest.mark.parametrize("module", sorted(ADAPTERS))
def test_listed_adapter_does_io(module: str) -> None:
    assert module in PACKAGE_MODULES, f"{module} is listed as an adapter but does not exist"
    assert _io_reached_from(module), f"{module} does no I/O: list it as a sans-IO core"


def test_cores_load_no_io_module_at_import_time() -> None:
    loaded = _io_loaded_by(CORE_MODULES)
    assert not loaded, f"importing the sans-IO cores loads {loaded}"


# The checks above, shown to fail.


def test_the_probe_sees_io_loaded_behind_an_import() -> None:
    assert "sqlite3" in _io_loaded_by(["bkv.tlog.store_sqlite"])
    assert {"httpx", "socket"} <= set(_io_loaded_by(["bkv.client.sdk"]))


def test_the_graph_sees_io_directly_and_through_our_modules() -> None:
    assert "sqlite3" in _io_reached_from("bkv.tlog.store_sqlite")  # directly
    assert "socket" in _io_reached_from("bkv.host.server")  # through bkv.serving
    assert _io_reached_from("bkv.host.ratelimit") == []


def test_module_expressions_match_as_import_linter_does() -> None:
    assert _matches("bkv.wire.**", "bkv.wire.strict_json")
    assert _matches("bkv.crypto.**", "bkv.crypto.opaque.ake")
    assert not _matches("bkv.crypto.**", "bkv.crypto")
    assert _matches("bkv.protocol.*", "bkv.protocol.bundle")
    assert not _matches("bkv.crypto.*", "bkv.crypto.opaque.ake")
    assert not _matches("bkv.hsm.app", "bkv.hsm.application")
    with pytest.raises(ValueError, match="unsupported"):
        _matches("bkv.*.app", "bkv.hsm.app")
