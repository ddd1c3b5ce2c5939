"""``bkv keystore``: create tokens and keys for the Signer and Sealer backends.

Sub-commands::

    bkv keystore init-token      --token-dir DIR --label LABEL
    bkv keystore gen-signing-key (--pkcs11-config FILE --label LABEL | --key-file FILE)
    bkv keystore gen-sealing-key (--pkcs11-config FILE --label LABEL | --key-file FILE)
    bkv keystore public-key      (--pkcs11-config FILE --label LABEL | --key-file FILE)

PINs never appear on bkv's command line: ``init-token`` reads the SO PIN from
``BKV_PKCS11_SO_PIN`` and every command reads the user PIN from
``BKV_PKCS11_PIN``. ``init-token`` writes ``DIR/pkcs11.json`` (module, SoftHSM2
configuration and token label, no PIN) for ``--pkcs11-config``. Public keys are
printed as hex; private keys are never printed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bkv.errors import ConfigError
from bkv.keystore.files import read_key_file, write_key_file
from bkv.keystore.pkcs11 import (
    CONFIG_FILE_NAME,
    Pkcs11Config,
    generate_sealing_key,
    generate_signing_key,
    init_token,
    load_signing_key,
)
from bkv.keystore.software import SoftwareSealer, SoftwareSigner

SO_PIN_ENV = "BKV_PKCS11_SO_PIN"
USER_PIN_ENV = "BKV_PKCS11_PIN"


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bkv keystore`` and its sub-commands."""
    parser = subparsers.add_parser("keystore", help="create PKCS#11 tokens and keys")
    commands = parser.add_subparsers(dest="keystore_command", metavar="COMMAND", required=True)

    init = commands.add_parser("init-token", help="create a SoftHSM2 token in a directory")
    init.add_argument("--token-dir", type=Path, required=True)
    init.add_argument("--label", required=True, help="token label (at most 32 bytes)")
    init.set_defaults(handler=_init_token)

    for name, handler, what in (
        ("gen-signing-key", _gen_signing_key, "generate an Ed25519 signing key"),
        ("gen-sealing-key", _gen_sealing_key, "generate an AES-256 sealing key"),
        ("public-key", _public_key, "print a signing key's public key (hex)"),
    ):
        sub = commands.add_parser(name, help=what)
        backend = sub.add_mutually_exclusive_group(required=True)
        backend.add_argument("--pkcs11-config", type=Path, help="pkcs11.json from init-token")
        backend.add_argument("--key-file", type=Path, help="software key file (hex, mode 0600)")
        sub.add_argument("--label", help="key label in the token (with --pkcs11-config)")
        sub.set_defaults(handler=handler)


def _pin(variable: str) -> str:
    pin = os.environ.get(variable)
    if not pin:
        raise ConfigError(f"set {variable} to the PIN")
    return pin


def _pkcs11_label(args: argparse.Namespace) -> str:
    if not args.label:
        raise ConfigError("--label is required with --pkcs11-config")
    return str(args.label)


def _init_token(args: argparse.Namespace) -> int:

    config = init_token(args.token_dir, args.label, _pin(SO_PIN_ENV), _pin(USER_PIN_ENV))
    path = Path(args.token_dir) / CONFIG_FILE_NAME
    config.save(path)
    print(path)
    return 0


def _gen_signing_key(args: argparse.Namespace) -> int:
    if args.key_file is not None:
        signer = SoftwareSigner.generate()
        write_key_file(args.key_file, signer.seed_bytes())
        print(signer.public_key().hex())
        return 0

    config = Pkcs11Config.load(args.pkcs11_config, _pin(USER_PIN_ENV))
    with generate_signing_key(config, _pkcs11_label(args)) as token_signer:
        print(token_signer.public_key().hex())
    return 0


def _gen_sealing_key(args: argparse.Namespace) -> int:
    if args.key_file is not None:
        write_key_file(args.key_file, SoftwareSealer.generate().key_bytes())
        print(args.key_file)
        return 0

    config = Pkcs11Config.load(args.pkcs11_config, _pin(USER_PIN_ENV))
    with generate_sealing_key(config, _pkcs11_label(args)) as sealer:
        print(sealer.label)
    return 0


def _public_key(args: argparse.Namespace) -> int:
    if args.key_file is not None:
        print(SoftwareSigner(read_key_file(args.key_file)).public_key().hex())
        return 0

    config = Pkcs11Config.load(args.pkcs11_config, _pin(USER_PIN_ENV))
    with load_signing_key(config, _pkcs11_label(args)) as signer:
        print(signer.public_key().hex())
    return 0
