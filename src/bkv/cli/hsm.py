"""``bkv hsm init`` and ``bkv hsm serve``: the emulated HSM process (see :mod:`bkv.hsm.server`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bkv.errors import BkvError
from bkv.hsm.server import HsmConfig, init_hsm, load_config, serve
from bkv.hsm.store import PUBLIC_KEYS_FILE


def _init(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    with init_hsm(config) as node:
        fleet_id = node.app.fleet_id
    print(
        f"bkv hsm: initialized fleet {fleet_id}: sealed state in {config.state_dir}, "
        f"public keys in {config.state_dir / PUBLIC_KEYS_FILE}, "
        f"sealing key and NV counter in {_device_location(config)}"
    )
    return 0


def _device_location(config: HsmConfig) -> str:
    if config.sealer.backend == "software":
        return f"{config.key_dir} (mode 0700)"
    return f"the PKCS#11 token ({config.sealer.key_label}, {config.sealer.counter_label})"


def _serve(args: argparse.Namespace) -> int:
    serve(load_config(Path(args.config)))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def main(argv: list[str] | None = None) -> int:
    """``python -m bkv.cli.hsm``: the hsm commands alone (same handlers as ``bkv hsm``)."""
    parser = argparse.ArgumentParser(prog="bkv-hsm")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["hsm", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args))
    except BkvError as exc:
        print(f"bkv hsm: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
