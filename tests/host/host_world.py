"""A real fleet for host tests: `bkv hsm serve` and `bkv host serve` subprocesses on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bkv import devnet
from bkv.client.sdk import VaultClient
from bkv.client.trust import FleetKeys, PinnedFleetKeys
from bkv.crypto.ksf import Argon2id
from bkv.host.config import token_digest
from bkv.hsm.store import PUBLIC_KEYS_FILE
from bkv.protocol.artifact import (
    ROLE_CHANNEL,
    ROLE_OPAQUE_AKE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
)

TEST_KSF = Argon2id(memory_kib=256, iterations=1, lanes=1)
"""A real but small Argon2id: the production default costs ~0.2 s per login."""

FLEET = "host-fleet"


@contextlib.contextmanager
def running(*args: str) -> Iterator[str]:
    """Start ``bkv ARGS`` (a ``serve``); yield its base URL; always stop it on exit."""
    with devnet.Processes() as processes:
        yield processes.serve(*args)


def init_hsm(directory: Path) -> Path:
    """Write an HSM config, run `bkv hsm init`; return the config path."""
    return devnet.init_hsm(directory, FLEET)


def public_keys_path(hsm_config: Path) -> Path:
    return hsm_config.parent / "state" / PUBLIC_KEYS_FILE


def pinned(fleet_id: str, channel_key: bytes, opaque_key: bytes) -> FleetKeys:
    """Pinned-mode keys for a one-HSM fleet (the artifact an app would compile in)."""
    artifact = FleetKeyArtifact(
        fleet_id=fleet_id,
        keys=(
            PublicKey(ROLE_CHANNEL, "x25519", channel_key),
            PublicKey(ROLE_OPAQUE_AKE, "ristretto255", opaque_key),
        ),
        members=("hsm-1",),
        policy=FleetPolicy(guess_limit=10, quorum=1),
        not_before_ms=0,
        not_after_ms=2**53 - 1,
    )
    return PinnedFleetKeys.of(artifact).fleet_keys(now_ms=1)


def fleet_keys(hsm_config: Path) -> FleetKeys:
    data = json.loads(public_keys_path(hsm_config).read_text())
    by_role = {key["role"]: bytes.fromhex(key["public_key"]) for key in data["keys"]}
    return pinned(data["fleet_id"], by_role[ROLE_CHANNEL], by_role[ROLE_OPAQUE_AKE])


@dataclass(frozen=True)
class Account:
    account_id: bytes
    token: str


ACCOUNTS = [Account(f"account-{i}".encode(), f"token-{i}-" + "x" * 32) for i in range(12)]


def write_host_config(
    directory: Path,
    hsm_url: str,
    hsm_config: Path,
    *,
    name: str = "host.toml",
    limits: str = "",
) -> Path:
    accounts = "".join(
        f'\n[[accounts]]\naccount_id = "{a.account_id.hex()}"\n'
        f'token_sha256 = "{token_digest(a.token).hex()}"\n'
        for a in ACCOUNTS
    )
    path = directory / name
    path.write_text(
        f'[host]\nfleet_id = "{FLEET}"\nlisten = "127.0.0.1:0"\n'
        f'hsm_url = "{hsm_url}/v1/message"\nhsm_timeout_seconds = 20\n'
        f'hsm_link_key_file = "{devnet.hsm_link_key(hsm_config)}"\n'
        f'public_keys_file = "{public_keys_path(hsm_config)}"\n{accounts}{limits}',
        encoding="utf-8",
    )
    return path


class Recorder(httpx.HTTPTransport):
    """An HTTP transport that keeps every byte sent to and received from the host."""

    def __init__(self) -> None:
        super().__init__()
        self.captured: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.captured.append(request.read())
        response = super().handle_request(request)
        response.read()
        self.captured.append(response.content)
        return response


def client(
    url: str, account: Account, fleet: FleetKeys, transport: httpx.BaseTransport | None = None
) -> VaultClient:
    return VaultClient(
        url, account.token, account.account_id, fleet, ksf=TEST_KSF, transport=transport
    )
