"""The code measurement: bkv's Python equals the documented shell pipeline, byte for byte.

The pipeline of docs/audit.md §7 runs for real (``find | LC_ALL=C sort | xargs
sha256sum | sha256sum`` in a subprocess), on a snapshot of bkv's own source and on
a tree made to trip up the ordering and the file selection.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bkv.audit.source_tree import default_source_dir, measure_source, source_files, source_manifest
from bkv.errors import ConfigError
from bkv.protocol.measurement import check_path, is_measured, manifest, measure

SRC = Path(__file__).resolve().parents[2] / "src"
PIPELINE = "find bkv -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum"

needs_coreutils = pytest.mark.skipif(
    shutil.which("sha256sum") is None or shutil.which("xargs") is None,
    reason="needs GNU coreutils and findutils",
)


def shell(source: Path, command: str) -> bytes:
    result = subprocess.run(
        ["sh", "-c", command],
        cwd=source,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def snapshot(tmp_path: Path) -> Path:
    """A copy of bkv's source (others may edit the checkout while the test runs)."""
    target = tmp_path / "src"
    shutil.copytree(SRC / "bkv", target / "bkv", ignore=shutil.ignore_patterns("__pycache__"))
    return target


@needs_coreutils
def test_python_and_shell_agree_on_bkvs_own_source(tmp_path: Path) -> None:
    source = snapshot(tmp_path)
    listing = shell(source, PIPELINE)
    assert source_manifest(source) == listing
    measurement, count = measure_source(source)
    assert count == listing.count(b"\n") > 50
    digest_line = shell(source, PIPELINE + " | sha256sum")
    assert digest_line == f"{measurement.hex()}  -\n".encode()
    assert measurement == hashlib.sha256(listing).digest()


def make_tricky_tree(root: Path) -> Path:
    package = root / "bkv"
    files = {
        "a.py": b"a",
        "a/b.py": b"ab",  # '.' < '/' in C order: a.py before a/b.py
        "B.py": b"B",  # uppercase before lowercase
        "_x.py": b"_",
        "a-b.py": b"-",
        "a_b.py": b"_",
        "Z/z.py": b"Zz",
        ".hidden.py": b"hidden files are found",
        ".d/x.py": b"so are hidden directories",
        "dir.py/in.py": b"a directory named *.py is walked, not measured",
        "notes.txt": b"not python",
        "x.pyc": b"not python",
        "empty.py": b"",
        "deep/er/est.py": b"deep",
    }
    for name, content in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (package / "link.py").symlink_to(package / "a.py")  # find -type f leaves links out
    (package / "linkdir").symlink_to(package / "a")  # and does not follow them
    (root / "outside.py").write_bytes(b"not under bkv")
    return root


@needs_coreutils
def test_python_and_shell_agree_on_a_tricky_tree(tmp_path: Path) -> None:
    source = make_tricky_tree(tmp_path)
    listing = shell(source, PIPELINE)
    assert source_manifest(source) == listing
    paths = [line.split(b"  ", 1)[1] for line in listing.splitlines()]
    assert paths == sorted(paths)
    assert b"bkv/link.py" not in paths and b"bkv/notes.txt" not in paths
    assert b"bkv/.d/x.py" in paths and b"bkv/dir.py/in.py" in paths
    assert paths.index(b"bkv/a.py") < paths.index(b"bkv/a/b.py")
    assert measure_source(source)[0] == hashlib.sha256(listing).digest()


def test_manifest_format() -> None:
    listing = manifest([("bkv/b.py", b"b"), ("bkv/a.py", b"a")])
    assert (
        listing
        == (
            f"{hashlib.sha256(b'a').hexdigest()}  bkv/a.py\n"
            f"{hashlib.sha256(b'b').hexdigest()}  bkv/b.py\n"
        ).encode()
    )
    assert measure([("bkv/b.py", b"b"), ("bkv/a.py", b"a")]) == hashlib.sha256(listing).digest()


def test_the_measurement_changes_with_any_file() -> None:
    files = [("bkv/a.py", b"a"), ("bkv/b.py", b"b")]
    base = measure(files)
    assert measure([("bkv/a.py", b"a "), ("bkv/b.py", b"b")]) != base
    assert measure([("bkv/a.py", b"a"), ("bkv/c.py", b"b")]) != base
    assert measure([*files, ("bkv/c.py", b"")]) != base


@pytest.mark.parametrize(
    "path",
    ["bkv/a b.py", "bkv/a'b.py", 'bkv/a"b.py', "bkv/a\\b.py", "bkv/a\nb.py", "bkv/../x.py",
     "bkv/./x.py", "/bkv/x.py", "bkv//x.py", "bkv/x.py/", "bkv/é.py", ""],
)  # fmt: skip
def test_unreproducible_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="reproducibly"):
        check_path(path)


def test_manifest_refuses_repeats_and_nothing() -> None:
    with pytest.raises(ValueError, match="twice"):
        manifest([("bkv/a.py", b"1"), ("bkv/a.py", b"2")])
    with pytest.raises(ValueError, match="no file"):
        manifest([])


def test_selection() -> None:
    assert is_measured("bkv/a.py") and is_measured("bkv/.x/y.py")
    assert not is_measured("bkv/a.pyc") and not is_measured("other/a.py")
    assert not is_measured("bkv.py")


def test_a_file_the_recipe_cannot_reproduce_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bkv").mkdir()
    (tmp_path / "bkv" / "a b.py").write_bytes(b"x")
    with pytest.raises(ConfigError, match="cannot be measured"):
        measure_source(tmp_path)


def test_a_missing_or_linked_package_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no bkv/"):
        measure_source(tmp_path)
    real = make_tricky_tree(tmp_path / "real")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "bkv").symlink_to(real / "bkv")
    with pytest.raises(ConfigError, match="symbolic links"):
        source_files(tmp_path / "linked")


def test_default_source_is_the_running_bkv() -> None:
    assert (default_source_dir() / "bkv" / "__init__.py").is_file()


def bkv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bkv.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@needs_coreutils
def test_cli_measure_prints_what_the_pipeline_prints(tmp_path: Path) -> None:
    source = make_tricky_tree(tmp_path)
    result = bkv("audit", "measure", "--source", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = shell(source, PIPELINE + " | sha256sum").decode().split()[0]
    assert result.stdout == expected + "\n"
    assert "files under" in result.stderr
    listing = bkv("audit", "measure", "--source", str(source), "--manifest", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.encode() == shell(source, PIPELINE)


def test_cli_measure_fails_with_a_named_error(tmp_path: Path) -> None:
    result = bkv("audit", "measure", "--source", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("bkv: ConfigError:")
