"""The ``bkv`` command: the one entry point of every role's sub-commands.

Each role's module ``bkv.cli.<role>`` adds its sub-commands with
``add_commands(subparsers)``; the work itself lives in the role's package, so
the CLI stays a thin adapter. Run it as ``bkv ...`` or ``python -m bkv.cli.main ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bkv import __version__
from bkv.errors import BkvError

# Sub-command modules, in the order `bkv --help` lists them.
COMMAND_MODULES = (
    "bkv.cli.keystore",
    "bkv.cli.hsm",
    "bkv.cli.host",
    "bkv.cli.witness",
    "bkv.cli.audit",
    "bkv.cli.operator",
    "bkv.cli.backup",
    "bkv.cli.vendor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bkv", description="HSM-based Backup Key Vault")
    parser.add_argument("--version", action="version", version=f"bkv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bkv ARGV``; 0 on success, 1 with one line on stderr for a typed error, 2 on usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args))
    except BkvError as exc:
        # Typed errors carry no secrets by construction (bkv.errors); print the
        # class so that scripts and people can tell failures apart.
        print(f"bkv: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
