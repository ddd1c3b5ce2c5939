"""docs/audit.md §7 "Without bkv": the shell and Python recipes, run as printed.

Each recipe is the fenced block after its ``<!-- tested: ... -->`` marker; it
runs in a directory holding ``evidence.json`` and ``vendor-root.pem`` of an
in-process world, and must pass on good evidence and catch tampered evidence.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from evidence_world import World, make_vendor, make_world, tamper

AUDIT_MD = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def recipe(name: str) -> str:
    text = AUDIT_MD.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- tested: {re.escape(name)} [^>]*-->\n```[a-z]+\n(.*?)\n```", text, re.DOTALL
    )
    assert match is not None, f"docs/audit.md has no recipe {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def world() -> World:
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=1)
    return make_world(not_before=start, now_ms=time.time_ns() // 1_000_000)


def setup(directory: Path, world: World, evidence: bytes) -> Path:
    directory.mkdir()
    (directory / "evidence.json").write_bytes(evidence)
    (directory / "vendor-root.pem").write_bytes(world.vendor.certificate.public_bytes(Encoding.PEM))
    return directory


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("bash", "jq", "openssl", "xxd", "base64")),
    reason="needs bash, jq, openssl, xxd and base64",
)
def test_shell_recipe(world: World, tmp_path: Path) -> None:
    script = recipe("deployment-shell")
    good = setup(tmp_path / "good", world, world.evidence())
    result = run(["bash", "-c", "set -o pipefail; " + script], good)
    assert result.returncode == 0, result.stderr
    for name in world.names:
        assert f"{name}.pem: OK" in result.stdout
        assert f"{name}: device key = attestation key" in result.stdout
    assert "2.25.331529014180074305023769272801962631975" in result.stdout
    assert "MISMATCH" not in result.stdout

    # Another vendor's root: OpenSSL refuses every chain.
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    other = make_world(vendor=make_vendor("other vendor", not_before=start), not_before=start)
    bad = setup(tmp_path / "bad", world, other.evidence())
    result = run(["bash", "-c", script], bad)
    assert ".pem: OK" not in result.stdout

    # Swapped attestation keys: the key comparison catches them.
    def swap(value: dict[str, object]) -> None:
        members = value["members"]
        assert isinstance(members, list)
        one, two = members[0]["attestation_key"], members[1]["attestation_key"]
        members[0]["attestation_key"], members[1]["attestation_key"] = two, one

    swapped = setup(tmp_path / "swapped", world, tamper(world.evidence(), swap))
    assert "KEY MISMATCH" in run(["bash", "-c", script], swapped).stdout


def test_python_recipe(world: World, tmp_path: Path) -> None:
    script = recipe("deployment-python")
    good = setup(tmp_path / "good", world, world.evidence(["hsm-1", "hsm-2", "hsm-5"]))
    result = run([sys.executable, "-c", script], good)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 of 5 members signed fleet fleet-a\n"

    cases = {
        "signature": lambda v: v["statements"][0].update(signature="00" * 64),
        "binding": lambda v: v.update(transcript_digest="00" * 32),
        "majority": lambda v: v.update(statements=v["statements"][:2]),
    }
    for case, mutate in cases.items():
        directory = setup(tmp_path / case, world, tamper(world.evidence(), mutate))
        result = run([sys.executable, "-c", script], directory)
        assert result.returncode == 1, case
    spaced = setup(tmp_path / "spaced", world, world.evidence() + b"\n")
    assert "not canonical" in run([sys.executable, "-c", script], spaced).stderr
