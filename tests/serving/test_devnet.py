"""The local deployment script (bkv.devnet) keeps its servers running however much they log.

Each refused request is one stderr line; a server whose stderr nobody reads
must not stop once a pipe's worth of such lines has piled up.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bkv import devnet

pytestmark = pytest.mark.slow

REFUSED = 1200
"""Unauthenticated requests: at ~150 bytes of log line each, about three 64 KiB pipes' worth."""
LONG_PATH = "/" + "x" * 120


def test_a_server_that_logged_a_lot_still_answers(tmp_path: Path) -> None:
    config = devnet.init_hsm(tmp_path / "hsm", "devnet-logs")
    with devnet.Processes() as processes:
        url = processes.serve("hsm", "serve", "--config", str(config))
        with httpx.Client(base_url=url, timeout=10.0) as http:
            for _ in range(REFUSED):  # each one is a refusal line on the HSM's stderr
                assert http.get(LONG_PATH).status_code == 401
            assert http.get("/v1/public-keys").status_code == 401  # still answering
        assert processes.started[0].poll() is None


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    with devnet.Processes() as processes, pytest.raises(RuntimeError) as failed:
        processes.serve("hsm", "serve", "--config", str(tmp_path / "absent.toml"))
    assert "did not start: bkv: ConfigError: cannot read config" in str(failed.value)
