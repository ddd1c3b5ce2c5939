"""``bkv vendor``: the emulated HSM vendor's root CA (bkv.vendor.ca).

Sub-commands::

    bkv vendor init --dir D [--name NAME] [--valid-days N]
        # a private directory with the root key (0600) and D/vendor-root.pem, the
        # root certificate auditors pin (bkv audit verify-deployment --vendor-root)

    bkv vendor certify --dir D --device-key PUBKEY_FILE --serial SERIAL --out CERT \\
        [--valid-days N]
        # a device certificate (PEM) for an HSM's Ed25519 attestation key; the key
        # file holds 64 hex digits (bkv keystore public-key) or a PEM public key

Both print one JSON object: the certificate's path, SHA-256 fingerprint, subject
and serial number. Nothing private is ever printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bkv.vendor.ca import (
    DEFAULT_DEVICE_DAYS,
    DEFAULT_ROOT_DAYS,
    DEFAULT_VENDOR_NAME,
    IssuedCertificate,
    certify_device,
    init_vendor,
    read_device_public_key,
)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bkv vendor`` and its sub-commands."""
    parser = subparsers.add_parser("vendor", help="the emulated HSM vendor's root CA")
    commands = parser.add_subparsers(dest="vendor_command", metavar="COMMAND", required=True)

    init = commands.add_parser("init", help="create the vendor root key and certificate")
    init.add_argument("--dir", type=Path, required=True, help="vendor directory (made 0700)")
    init.add_argument("--name", default=DEFAULT_VENDOR_NAME, help="vendor (organization) name")
    init.add_argument("--valid-days", type=int, default=DEFAULT_ROOT_DAYS)
    init.set_defaults(handler=_init)

    certify = commands.add_parser("certify", help="issue a device certificate")
    certify.add_argument("--dir", type=Path, required=True, help="vendor directory")
    certify.add_argument(
        "--device-key",
        type=Path,
        required=True,
        help="the device's Ed25519 public key: 64 hex digits or PEM",
    )
    certify.add_argument("--serial", required=True, help="the device's serial number")
    certify.add_argument("--out", type=Path, required=True, help="certificate file to write (PEM)")
    certify.add_argument("--valid-days", type=int, default=DEFAULT_DEVICE_DAYS)
    certify.set_defaults(handler=_certify)


def _print(issued: IssuedCertificate) -> None:
    certificate = issued.certificate
    print(
        json.dumps(
            {
                "certificate": str(issued.path),
                "sha256": issued.sha256,
                "subject": certificate.subject.rfc4514_string(),
                "serial_number": format(certificate.serial_number, "x"),
            },
            indent=2,
        )
    )


def _init(args: argparse.Namespace) -> int:
    _print(init_vendor(args.dir, name=args.name, days=args.valid_days))
    return 0


def _certify(args: argparse.Namespace) -> int:
    key = read_device_public_key(args.device_key)
    _print(certify_device(args.dir, key, args.serial, args.out, days=args.valid_days))
    return 0
