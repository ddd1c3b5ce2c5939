"""`make demo` keeps working: the whole story runs against real processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_story_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bkv.demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # The story's outcomes, as the narration reports them.
    assert "the phone refuses it: DigestMismatchError" in out
    assert "WrongPasswordError, 7 attempts left" in out
    assert "backup key restored: identical" in out
    assert "9, 8, 7, 6, 5, 4, 3, 2, 1, destroyed" in out
    assert "the right password now: RecordDestroyedError" in out
    assert out.rstrip().endswith("Done: every process has been stopped.")
    assert "\n    OK\n" in out  # the audit's verdict
