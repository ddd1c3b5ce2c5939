"""``bkv hsm init`` and ``bkv hsm serve``: the emulated HSM process (see :mod:`bkv.hsm.process`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bkv.hsm.config import HsmConfig, load_config
from bkv.hsm.store import PUBLIC_KEYS_FILE


def _init(args: argparse.Namespace) -> int:
    from bkv.hsm.process import initialize  # noqa: PLC0415 - uvicorn only where a server runs

    config = load_config(Path(args.config))
    with initialize(config) as node:
        fleet_id = node.app.fleet_id
    print(
        f"bkv hsm: initialized fleet {fleet_id}: sealed state in {config.state_dir}, "
        f"public keys in {config.state_dir / PUBLIC_KEYS_FILE}, "
        f"sealing key and NV counter in {_device_location(config)}, "
        f"host link key in {config.link_key_file} (mode 0600; the host's hsm_link_key_file)"
    )
    return 0


def _device_location(config: HsmConfig) -> str:
    if config.sealer.backend == "software":
        return f"{config.key_dir} (mode 0700)"
    return f"the PKCS#11 token ({config.sealer.key_label}, {config.sealer.counter_label})"


def _serve(args: argparse.Namespace) -> int:
    from bkv.hsm.process import serve  # noqa: PLC0415 - uvicorn only where a server runs

    serve(load_config(Path(args.config)))
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bkv hsm init`` and ``bkv hsm serve``."""
    hsm = subparsers.add_parser("hsm", help="run an emulated HSM of the vault fleet")
    commands = hsm.add_subparsers(dest="hsm_command", metavar="HSM_COMMAND", required=True)
    init = commands.add_parser(
        "init",
        help="generate fleet secrets, sealing key and NV counter; write the sealed state",
    )
    init.add_argument("--config", required=True, help="TOML config file")
    init.set_defaults(handler=_init)
    run = commands.add_parser("serve", help="serve the HSM message API over HTTP")
    run.add_argument("--config", required=True, help="TOML config file")
    run.set_defaults(handler=_serve)
