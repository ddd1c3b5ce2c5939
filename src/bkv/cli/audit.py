"""``bkv audit log``: re-verify every epoch a witness signed for a namespace.

Usage::

    bkv audit log --witness http://127.0.0.1:8470 --namespace bkv.fleet_keys.v1 \\
        --witness-key <64 hex>[@<not_before_ms>] --operator-key <64 hex> \\
        --log-key <C2SP vkey> --origin <log origin> \\
        [--cosigner VKEY ... [--cosigners-required K]] \\
        [--bundles DIR] [--require-countersignatures] [--state FILE [--init-state]]
        [--trust-on-first-use]

Operator counter-signatures are read from the witness (it serves the one the
operator posted with each epoch); ``--bundles DIR`` adds the operator's
published bundles as a second source, each validated as a client would.

Every key must be pinned on the command line: an audit that trusts the audited
party proves nothing, so a missing pin is an error (exit 1, ``ConfigError``).
Only with ``--trust-on-first-use`` are missing keys taken from the witness
itself (``/info``, ``/namespaces/{ns}``), and the output says so: that checks
the record's internal consistency only.

``--cosigner VKEY`` (repeatable) with ``--cosigners-required K`` (default: all)
requires K of those cosigners (C2SP tlog-cosignature) on the checkpoint. Without
a cosigner policy the witness's log key alone vouches for the checkpoint, and
the output notes that a split view (the witness showing clients another log
than the one audited) is not excluded.

``--state FILE`` remembers the newest epoch and checkpoint across runs; the file
must exist (a deleted state file would silently forget what was audited and let
a rolled-back or forked log pass), except on the first run, which says so with
``--init-state``. Exit status 0 when every check passed; 1 with
``bkv: <ErrorClass>: <what failed>`` on stderr otherwise; 2 on usage errors.

Deployment evidence (docs/audit.md §7)::

    bkv audit measure [--source DIR] [--manifest]
        # the code measurement of DIR/bkv (default: the running bkv's source), i.e.
        # cd DIR && find bkv -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum | sha256sum

    bkv audit verify-deployment EVIDENCE_FILE_OR_URL --vendor-root ROOT_CERT \
        [--source DIR | --measurement HEX] [--artifact FILE] \
        [--witness URL --namespace NS <the pins of bkv audit log>] [--json]

``verify-deployment`` reports three steps (get the evidence, verify its
cryptography, confirm the fleet public keys; :mod:`bkv.audit.deployment`), as
text or, with ``--json``, as one JSON object; any failure names the check and
its error class and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from bkv.audit.delta import render_report
from bkv.audit.deployment import (
    ExpectedMeasurement,
    PublishedArtifact,
    PublishedSource,
    published_from_audit,
    render_text,
    verify_deployment,
)
from bkv.audit.evidence_source import fetch_evidence, read_artifact_file, read_vendor_root
from bkv.audit.http_source import HttpWitnessSource
from bkv.audit.source_tree import default_source_dir, measure_source, source_manifest
from bkv.audit.verify import AuditPins, audit_namespace
from bkv.client.store_json import JsonFileStateStore
from bkv.errors import AuditError, ConfigError, NoteError
from bkv.protocol.artifact import parse_artifact
from bkv.protocol.bundle import MAX_BUNDLE_SIZE
from bkv.protocol.evidence import VerifiedEvidence
from bkv.protocol.plexi import WitnessKey
from bkv.tlog.cosignature import CosignerPolicy, parse_cosigner_key
from bkv.wire.strict_json import parse_hex, parse_uint64

_HEX_KEY: Final = re.compile(r"[0-9a-f]{64}")
_WITNESS_KEY: Final = re.compile(r"([0-9a-f]{64})(?:@([0-9]{1,19}))?")
#: Most bundle files read from --bundles.
MAX_BUNDLE_FILES: Final = 10_000


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="audit the witness's public record")
    commands = parser.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    log = commands.add_parser("log", help="re-verify every epoch of a namespace")
    log.add_argument("--witness", required=True, help="witness base URL")
    log.add_argument("--namespace", required=True)
    log.add_argument(
        "--witness-key",
        action="append",
        default=[],
        help="pinned witness key: 64 hex [@not_before_ms] (repeatable)",
    )
    log.add_argument(
        "--operator-key", action="append", default=[], help="pinned operator key, 64 hex"
    )
    log.add_argument("--log-key", help="pinned C2SP verifier key of the witness log")
    log.add_argument("--origin", help="pinned origin of the witness log")
    log.add_argument("--bundles", type=Path, help="directory of operator bundles (*.bundle)")
    log.add_argument(
        "--require-countersignatures",
        action="store_true",
        help=(
            "fail unless every epoch has an operator counter-signature, served by the "
            "witness or in a bundle from --bundles"
        ),
    )
    log.add_argument(
        "--state",
        type=Path,
        help="file remembering the last audited epoch and checkpoint (must exist)",
    )
    log.add_argument(
        "--init-state",
        action="store_true",
        help="first run: create the --state file if it does not exist yet",
    )
    log.add_argument(
        "--cosigner",
        action="append",
        default=[],
        metavar="VKEY",
        help="cosigner (cosignature/v1 vkey) of the witness log's checkpoint (repeatable)",
    )
    log.add_argument(
        "--cosigners-required",
        type=int,
        metavar="K",
        help="how many --cosigner keys must have cosigned the checkpoint (default: all)",
    )
    log.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help=(
            "take keys that are not pinned from the witness itself (checks internal "
            "consistency only: an audit that trusts the audited party proves nothing)"
        ),
    )
    log.set_defaults(handler=run_audit_log)
    _add_deployment_commands(commands)


def _cosigner_policy(args: argparse.Namespace) -> CosignerPolicy | None:
    if not args.cosigner:
        if args.cosigners_required is not None:
            raise ConfigError("--cosigners-required needs --cosigner keys")
        return None
    try:
        cosigners = [parse_cosigner_key(v) for v in args.cosigner]
    except NoteError as exc:
        raise ConfigError(f"--cosigner is not a cosignature/v1 verifier key: {exc}") from None
    required = len(cosigners) if args.cosigners_required is None else args.cosigners_required
    if not 1 <= required <= len(cosigners):
        raise ConfigError(f"--cosigners-required must be 1..{len(cosigners)}")
    try:
        return CosignerPolicy(required=required, cosigners=cosigners)
    except ValueError as exc:
        raise ConfigError(f"bad --cosigner keys: {exc}") from None


def _witness_keys(values: Sequence[str]) -> tuple[WitnessKey, ...]:
    keys = []
    for value in values:
        match = _WITNESS_KEY.fullmatch(value)
        if match is None:
            raise ConfigError("--witness-key must be 64 lowercase hex [@not_before_ms]")
        try:
            keys.append(WitnessKey(bytes.fromhex(match[1]), int(match[2] or 0)))
        except ValueError as exc:
            raise ConfigError(f"--witness-key {value[:16]}...: {exc}") from None
    return tuple(keys)


def _operator_keys(values: Sequence[str]) -> tuple[bytes, ...]:
    for value in values:
        if _HEX_KEY.fullmatch(value) is None:
            raise ConfigError("--operator-key must be 64 lowercase hex")
    return tuple(bytes.fromhex(v) for v in values)


def _read_bundles(directory: Path | None) -> tuple[bytes, ...]:
    if directory is None:
        return ()
    if not directory.is_dir():
        raise ConfigError(f"--bundles {directory} is not a directory")
    paths = sorted(directory.glob("*.bundle"))
    if len(paths) > MAX_BUNDLE_FILES:
        raise ConfigError(f"more than {MAX_BUNDLE_FILES} bundle files")
    bundles = []
    for path in paths:
        with path.open("rb") as handle:
            data = handle.read(MAX_BUNDLE_SIZE + 1)
        if len(data) > MAX_BUNDLE_SIZE:
            raise ConfigError(f"{path.name} is larger than a bundle can be")
        bundles.append(data)
    return tuple(bundles)


def _from_witness(
    source: HttpWitnessSource, args: argparse.Namespace
) -> tuple[AuditPins, list[str]]:
    """Pins from the command line, filling gaps from the witness (reported as unpinned)."""
    unpinned: list[str] = []
    witness_keys = _witness_keys(args.witness_key)
    operator_keys = _operator_keys(args.operator_key)
    log_key: str | None = args.log_key
    origin: str | None = args.origin
    info: Mapping[str, Any] = {}
    missing = [
        flag
        for flag, given in (
            ("--witness-key", witness_keys),
            ("--operator-key", operator_keys),
            ("--log-key", log_key),
            ("--origin", origin),
        )
        if not given
    ]
    if missing and not args.trust_on_first_use:
        raise ConfigError(
            f"not pinned: {', '.join(missing)}; an audit against the witness's own keys "
            "proves nothing (pass --trust-on-first-use to check internal consistency only)"
        )
    if not witness_keys or log_key is None or origin is None:
        fetched = source.get_json("/info")
        if not isinstance(fetched, Mapping):
            raise AuditError("/info is not a JSON object")
        info = fetched
    if not witness_keys:
        unpinned.append("witness keys")
        witness_keys = tuple(_info_key(k) for k in _list(info.get("keys"), "keys"))
    if log_key is None:
        unpinned.append("log key")
        log_key = _text(info.get("log_public_key"), "log_public_key")
    if origin is None:
        unpinned.append("log origin")
        origin = _text(info.get("origin"), "origin")
    if not operator_keys:
        unpinned.append("operator key")
        ns = source.get_json(f"/namespaces/{args.namespace}")
        key = ns.get("operator_public_key") if isinstance(ns, Mapping) else None
        operator_keys = _operator_keys([_text(key, "operator_public_key")])
    try:
        pins = AuditPins(
            witness_keys=witness_keys,
            operator_keys=operator_keys,
            log_origin=origin,
            log_verifier_key=log_key,
            bundles=_read_bundles(args.bundles),
            require_countersignatures=args.require_countersignatures,
            cosigner_policy=_cosigner_policy(args),
        )
    except ValueError as exc:
        raise ConfigError(f"unusable pins: {exc}") from None
    return pins, unpinned


def _info_key(value: object) -> WitnessKey:
    if not isinstance(value, Mapping):
        raise AuditError("/info keys[] is not a JSON object")
    public_key = parse_hex(value.get("public_key"), "public_key", max_bytes=32, exact=32)
    try:
        return WitnessKey(public_key, parse_uint64(value.get("not_before"), "not_before"))
    except ValueError as exc:
        raise AuditError(f"/info lists an unusable witness key: {exc}") from None


def _list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise AuditError(f"/info field {name} is not a non-empty list")
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise AuditError(f"witness field {name} is not a non-empty string")
    return value


def run_audit_log(args: argparse.Namespace) -> int:
    """Handler of ``bkv audit log``: raises a BkvError naming the failed check."""
    if args.init_state and args.state is None:
        raise ConfigError("--init-state needs --state FILE")
    store = (
        None
        if args.state is None
        else JsonFileStateStore(args.state, must_exist=not args.init_state)
    )
    with HttpWitnessSource(args.witness) as source:
        pins, unpinned = _from_witness(source, args)
        if store is not None:
            pins = dataclasses.replace(pins, previous=store.load())
        report = audit_namespace(source, args.namespace, pins)
    if store is not None:
        store.save(report.state())
    if unpinned:
        print(f"WARNING: not pinned, taken from the witness itself: {', '.join(unpinned)}")
    if pins.cosigner_policy is None:
        print(
            "NOTE: no cosigner policy: the witness's log key alone vouches for the "
            "checkpoint (a split view, another log shown to clients, is not excluded)"
        )
    sys.stdout.write(render_report(report))
    print("OK")
    return 0


# --- deployment evidence (docs/audit.md §7) ----------------------------------------------


def _add_deployment_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    measure = commands.add_parser(
        "measure", help="print the code measurement of a source tree (deployment evidence)"
    )
    measure.add_argument(
        "--source",
        type=Path,
        help="directory holding the bkv package (default: the running bkv's, e.g. src)",
    )
    measure.add_argument(
        "--manifest",
        action="store_true",
        help="print the sha256sum listing the measurement hashes, not the measurement",
    )
    measure.set_defaults(handler=run_audit_measure)

    verify = commands.add_parser(
        "verify-deployment", help="verify a fleet's deployment evidence, step by step"
    )
    verify.add_argument("evidence", metavar="EVIDENCE_FILE_OR_URL")
    verify.add_argument(
        "--vendor-root", type=Path, required=True, help="pinned HSM vendor root certificate"
    )
    expected = verify.add_mutually_exclusive_group()
    expected.add_argument(
        "--source", type=Path, help="rebuild the expected code measurement from DIR/bkv"
    )
    expected.add_argument("--measurement", help="the expected code measurement, 64 hex")
    verify.add_argument(
        "--artifact", type=Path, help="a fleet-key artifact file that must publish these keys"
    )
    verify.add_argument(
        "--witness", help="witness base URL: its logged artifact must publish these keys"
    )
    verify.add_argument("--namespace", help="the witness namespace (with --witness)")
    verify.add_argument("--witness-key", action="append", default=[], help="as bkv audit log")
    verify.add_argument("--operator-key", action="append", default=[], help="as bkv audit log")
    verify.add_argument("--log-key", help="as bkv audit log")
    verify.add_argument("--origin", help="as bkv audit log")
    verify.add_argument("--cosigner", action="append", default=[], metavar="VKEY")
    verify.add_argument("--cosigners-required", type=int, metavar="K")
    verify.add_argument(
        "--trust-on-first-use",
        action="store_true",
        help="take unpinned witness keys from the witness (internal consistency only)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(
        handler=run_verify_deployment, bundles=None, require_countersignatures=False
    )


def run_audit_measure(args: argparse.Namespace) -> int:
    """Handler of ``bkv audit measure``."""
    source = default_source_dir() if args.source is None else args.source
    if args.manifest:
        sys.stdout.write(source_manifest(source).decode("ascii"))
        return 0
    measurement, count = measure_source(source)
    print(measurement.hex())
    print(f"{count} files under {source}", file=sys.stderr)
    return 0


def _expected_measurement(args: argparse.Namespace) -> ExpectedMeasurement | None:
    if args.source is not None:
        value, count = measure_source(args.source)
        return ExpectedMeasurement(value, f"rebuilt from {args.source} ({count} files)")
    if args.measurement is not None:
        if _HEX_KEY.fullmatch(args.measurement) is None:
            raise ConfigError("--measurement must be 64 lowercase hex digits")
        return ExpectedMeasurement(bytes.fromhex(args.measurement), "given with --measurement")
    return None


def _artifact_source(path: Path) -> PublishedSource:
    data = read_artifact_file(path)

    def load(_: VerifiedEvidence) -> PublishedArtifact:
        return PublishedArtifact(f"artifact file {path}", parse_artifact(data))

    return load


def _witness_source(
    source: HttpWitnessSource, args: argparse.Namespace, pins: AuditPins
) -> PublishedSource:
    def load(evidence: VerifiedEvidence) -> PublishedArtifact:
        report = audit_namespace(source, args.namespace, pins)
        return published_from_audit(report, evidence.fleet_id, f"witness {args.witness}")

    return load


def run_verify_deployment(args: argparse.Namespace) -> int:
    """Handler of ``bkv audit verify-deployment``: prints the report, raises its failure."""
    if (args.witness is None) != (args.namespace is None):
        raise ConfigError("--witness and --namespace go together")
    vendor_root = read_vendor_root(args.vendor_root)
    expected = _expected_measurement(args)
    published: list[PublishedSource] = []
    if args.artifact is not None:
        published.append(_artifact_source(args.artifact))
    warnings: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.witness is not None:
            source = stack.enter_context(HttpWitnessSource(args.witness))
            pins, unpinned = _from_witness(source, args)
            if unpinned:
                warnings.append(f"not pinned, taken from the witness itself: {', '.join(unpinned)}")
            published.append(_witness_source(source, args, pins))
        report = verify_deployment(
            args.evidence,
            lambda: fetch_evidence(args.evidence),
            vendor_root,
            now_ms=time.time_ns() // 1_000_000,
            expected_measurement=expected,
            published=published,
        )
    if args.json:
        print(json.dumps({**report.to_json_value(), "warnings": warnings}, indent=2))
    else:
        for warning in warnings:
            print(f"WARNING: {warning}")
        sys.stdout.write(render_text(report))
    if report.failure is not None:
        raise report.failure
    return 0
