"""The end-to-end test's deployment: :mod:`bkv.devnet` with this test's names and fleet.

Every process is started through the ``bkv`` command exactly as an operator
runs it (see :mod:`bkv.devnet`); :class:`Processes` stops all of them whatever
happens, and every wait is bounded in time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bkv import devnet
from bkv.crypto.ksf import Argon2id
from bkv.devnet import NAMESPACE, Account, Processes, Witness, install_bundle, run

__all__ = [
    "FLEET",
    "NAMESPACE",
    "TEST_KSF",
    "Account",
    "Processes",
    "Witness",
    "init_hsm",
    "install_bundle",
    "publish",
    "run",
    "start_witness",
    "write_host_config",
]

FLEET = "e2e-fleet"
TEST_KSF = Argon2id(memory_kib=256, iterations=1, lanes=1)
"""A real but small Argon2id (the production default costs ~0.2 s per login)."""


def start_witness(processes: Processes, directory: Path, operator_public_key: str) -> Witness:
    return devnet.start_witness(processes, directory, "e2e", bytes.fromhex(operator_public_key))


def init_hsm(directory: Path) -> Path:
    """``bkv hsm init`` a one-HSM fleet; returns its public-keys.json."""
    return devnet.hsm_public_keys(devnet.init_hsm(directory, FLEET))


def publish(
    witness: Witness, public_keys: Path, operator_key: Path, out: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return devnet.publish(witness, public_keys, operator_key, out, fleet_id=FLEET, check=check)


def write_host_config(
    directory: Path,
    hsm_url: str,
    hsm_config: Path,
    bundle_file: Path,
    witness: Witness,
    account: Account,
) -> Path:
    return devnet.write_host_config(
        directory / "host.toml",
        fleet_id=FLEET,
        hsm_url=hsm_url,
        hsm_link_key_file=devnet.hsm_link_key(hsm_config),
        bundle_file=bundle_file,
        witness_url=witness.url,
        log_verifier_key=witness.log_verifier_key,
        accounts=[account],
    )
