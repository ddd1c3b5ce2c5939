"""``bkv host``: run the host front end, and make account tokens.

Sub-commands::

    bkv host serve --config FILE     # run until killed; prints the bound address
    bkv host new-token               # print a fresh bearer token and its SHA-256

``new-token`` prints two lines: the token (give it to the account's client)
and its SHA-256 in hex (put it in the config's ``[[accounts]]`` entry).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from bkv.host.config import HostConfig, token_digest

TOKEN_BYTES = 32


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bkv host`` and its sub-commands."""
    parser = subparsers.add_parser("host", help="the operator's HTTP front end")
    commands = parser.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    serve = commands.add_parser("serve", help="relay client requests to the HSM")
    serve.add_argument("--config", type=Path, required=True, help="host TOML configuration")
    serve.set_defaults(handler=_serve)
    token = commands.add_parser("new-token", help="make a bearer token and its SHA-256")
    token.set_defaults(handler=_new_token)


def _serve(args: argparse.Namespace) -> int:
    from bkv.host.server import serve  # noqa: PLC0415 - uvicorn only on the serving path

    serve(HostConfig.load(args.config))
    return 0


def _new_token(args: argparse.Namespace) -> int:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    print(token)
    print(token_digest(token).hex())
    sys.stdout.flush()
    return 0
