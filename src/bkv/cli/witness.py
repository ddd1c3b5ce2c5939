"""``bkv witness``: set up and run the independent witness.

- ``bkv witness init --dir DIR --name NAME`` -- create DIR/witness.json, the SQLite
  database and three Ed25519 keys (software seed files, mode 0600), or, with
  ``--pkcs11-config FILE --pin-env VAR``, keys generated inside a PKCS#11 token.
- ``bkv witness serve [--config FILE] [--listen 127.0.0.1:PORT] [--header-timeout-seconds S]
  [--body-timeout-seconds S]`` -- serve the HTTP API (:mod:`bkv.serving`).
- ``bkv witness add-namespace NS --operator-key HEX [--config FILE]`` -- register an
  operator's namespace (e.g. ``bkv.fleet_keys.v1``) and its Ed25519 key.
- ``bkv witness add-log ORIGIN --vkey VKEY [--vkey ...] [--config FILE]`` -- cosign
  another log's checkpoints (C2SP tlog-witness).
- ``bkv witness info [--config FILE]`` -- print the keys clients and logs pin.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

from bkv.errors import ConfigError
from bkv.serving.listen import parse_listen
from bkv.serving.timeouts import DEFAULT_BODY_SECONDS, DEFAULT_HEADER_SECONDS, Timeouts
from bkv.witness.keys import KEY_ROLES, KeySpec, create_seed_file
from bkv.witness.service import WitnessConfig, WitnessService, check_origin
from bkv.witness.store import WitnessStore

DEFAULT_CONFIG = "witness.json"
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("witness", help="run the independent witness")
    commands = parser.add_subparsers(dest="witness_command", metavar="SUBCOMMAND", required=True)

    init = commands.add_parser("init", help="create the config, database and keys")
    init.add_argument("--dir", type=Path, required=True, help="directory to create files in")
    init.add_argument("--name", required=True, help="witness name; origin is bkv-witness/NAME")
    init.add_argument("--pkcs11-config", type=Path, help="keep the keys in this PKCS#11 token")
    init.add_argument("--pin-env", default="BKV_WITNESS_PIN", help="env var with the user PIN")
    init.set_defaults(handler=_init)

    serve = commands.add_parser("serve", help="serve the witness HTTP API")
    serve.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG))
    serve.add_argument("--listen", default="127.0.0.1:8470", help="HOST:PORT (0 = any port)")
    serve.add_argument(
        "--header-timeout-seconds",
        type=float,
        default=DEFAULT_HEADER_SECONDS,
        help="close a connection whose request head is not complete within this",
    )
    serve.add_argument(
        "--body-timeout-seconds",
        type=float,
        default=DEFAULT_BODY_SECONDS,
        help="answer 408 to a request whose body is not complete within this",
    )
    serve.set_defaults(handler=_serve)

    add_ns = commands.add_parser("add-namespace", help="register an operator namespace")
    add_ns.add_argument("namespace")
    add_ns.add_argument("--operator-key", required=True, help="Ed25519 public key, 64 hex")
    add_ns.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG))
    add_ns.set_defaults(handler=_add_namespace)

    add_log = commands.add_parser("add-log", help="cosign another log (tlog-witness)")
    add_log.add_argument("origin")
    add_log.add_argument("--vkey", action="append", required=True, help="the log's note vkey")
    add_log.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG))
    add_log.set_defaults(handler=_add_log)

    info = commands.add_parser("info", help="print the witness's public keys")
    info.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG))
    info.add_argument(
        "--pins",
        action="store_true",
        help="print them as the pin arguments of `bkv operator` and `bkv audit log`",
    )
    info.set_defaults(handler=_info)


def _init(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    origin = check_origin(f"bkv-witness/{args.name}")
    config_path = directory / DEFAULT_CONFIG
    if config_path.exists():
        raise ConfigError(f"{config_path} already exists")
    directory.mkdir(parents=True, exist_ok=True)
    specs: dict[str, KeySpec] = {}
    if args.pkcs11_config is None:
        key_dir = directory / "keys"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        for role in KEY_ROLES:
            create_seed_file(key_dir / f"{role}.seed")
            specs[role] = KeySpec("software", seed_file=key_dir / f"{role}.seed")
    else:
        pin = os.environ.get(args.pin_env)
        if not pin:
            raise ConfigError(f"environment variable {args.pin_env} (user PIN) is not set")
        from bkv.keystore import pkcs11  # noqa: PLC0415  (loads the PKCS#11 library)

        token = pkcs11.Pkcs11Config.load(args.pkcs11_config, pin)
        for role in KEY_ROLES:
            label = f"bkv-witness-{args.name}-{role}"
            pkcs11.generate_signing_key(token, label).close()
            specs[role] = KeySpec(
                "pkcs11",
                pkcs11_config=args.pkcs11_config.resolve(),
                label=label,
                pin_env=args.pin_env,
            )
    config = WitnessConfig(name=args.name, origin=origin, db=directory / "witness.db", keys=specs)
    WitnessStore(config.db).close()
    config.save(config_path)
    service = WitnessService.from_config(WitnessConfig.load(config_path))
    try:
        _print_info(service)
    finally:
        service.close()
    return 0


def _load(config: Path) -> WitnessService:
    return WitnessService.from_config(WitnessConfig.load(config))


def _serve(args: argparse.Namespace) -> int:
    from bkv.witness.http import serve  # noqa: PLC0415 - Starlette only where a server runs

    address = parse_listen(args.listen, "--listen")
    try:
        timeouts = Timeouts(args.header_timeout_seconds, args.body_timeout_seconds)
    except ValueError as exc:
        raise ConfigError(f"--header/--body-timeout-seconds: {exc}") from None
    service = _load(args.config)
    try:
        serve(service, address, timeouts)
    finally:
        service.close()
    return 0


def _add_namespace(args: argparse.Namespace) -> int:
    key_hex: str = args.operator_key
    if not _HEX_KEY.fullmatch(key_hex):
        raise ConfigError("--operator-key must be 64 lowercase hex digits (Ed25519 public key)")
    service = _load(args.config)
    try:
        record = service.register_namespace(args.namespace, bytes.fromhex(key_hex))
    except ValueError as exc:  # e.g. a small-order key (bkv.protocol.keycheck)
        raise ConfigError(f"cannot register {args.namespace}: {exc}") from None
    finally:
        service.close()
    print(f"registered namespace {record.name}")
    return 0


def _add_log(args: argparse.Namespace) -> int:
    service = _load(args.config)
    try:
        service.add_cosigned_log(args.origin, args.vkey)
    finally:
        service.close()
    print(f"cosigning log {args.origin}")
    return 0


def _print_info(service: WitnessService, *, as_pins: bool = False) -> None:
    keys = service.store.witness_keys()
    if as_pins:
        # What the witness's operator hands out of band to operators and auditors.
        pins: list[str] = []
        for public_key, not_before in keys:
            pins += ["--witness-key", f"{public_key.hex()}@{not_before}"]
        pins += ["--log-key", service.log_verifier_key, "--origin", service.origin]
        print(shlex.join(pins))
        return
    info = {
        "origin": service.origin,
        "statement_keys": [{"public_key": pk.hex(), "not_before": nb} for pk, nb in keys],
        "log_public_key": service.log_verifier_key,
        "cosigner_public_key": service.cosigner_verifier_key,
    }
    print(json.dumps(info, indent=2))


def _info(args: argparse.Namespace) -> int:
    service = _load(args.config)
    try:
        _print_info(service, as_pins=args.pins)
    finally:
        service.close()
    return 0
