"""``bkv operator``: publish the fleet's keys through the witness, make operator keys.

Sub-commands::

    bkv operator keygen --out operator.key
        # a software Ed25519 operator key (bkv.keystore.files: 0600, never overwritten);
        # prints the public key to register with the witness and to pin in clients

    bkv operator countersign --witness URL --namespace NS --epoch N \
        (--operator-key FILE | --pkcs11-config F --label L) [--out epoch-N.bundle] \
        --witness-key HEX[@NOT_BEFORE_MS] --log-key VKEY --origin ORIGIN
        # recovery: post the counter-signature of an epoch the witness already signed
        # (e.g. publish stopped after the submission), and rebuild its bundle from the
        # witness's audit record (with the witness's latest checkpoint)

    bkv operator publish --public-keys hsm-state/public-keys.json --fleet-id ID \\
        --members hsm-1,hsm-2,hsm-3 [--quorum N] --guess-limit 10 [--valid-days 730] \\
        --witness http://WITNESS --namespace bkv.fleet_keys.v1 \\
        (--operator-key FILE | --pkcs11-config pkcs11.json --label LABEL) \\
        --witness-key HEX[@NOT_BEFORE_MS] --log-key VKEY --origin ORIGIN \\
        --out epoch-N.bundle

The witness pins (statement key(s), log verifier key, log origin) are obtained out
of band, like a client's; the witness's own ``/info`` is never trusted for them.

``publish``, in order (docs/operations.md, "Publishing the fleet's keys"):

1. builds the fleet-key artifact (canonical JSON) from the HSMs' public keys and the
   declared metadata (:func:`bkv.client.operator.artifact_from_public_keys`);
2. reads ``GET /namespaces/{ns}/last-verified-epoch`` and submits epoch last + 1
   (``POST /namespaces/{ns}/submissions``, signed by the operator key);
3. checks the receipt against the pins (:func:`bkv.client.operator.verify_receipt`:
   the statement is of this artifact, namespace and epoch, signed by a pinned witness
   key, logged with this submission's operator signature, included under a checkpoint
   of the pinned log key, timestamped after the submission, not in the future and
   inside the artifact's validity) and only then counter-signs the witness's signature;
4. assembles the validation bundle and validates it as a fresh client would (against
   the pins and this operator key); only if that passes does it post the
   counter-signature (``POST /namespaces/{ns}/audits/{epoch}/countersignature``),
   which the witness verifies and serves to auditors, and write the bundle to
   ``--out`` (refusing to overwrite).

The PKCS#11 user PIN comes from ``BKV_PKCS11_PIN`` (never the command line). A
refusal by the witness is raised as the witness's own error class
(``EpochConflictError``, ``SubmissionSignatureError``, ...).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import httpx

from bkv import errors
from bkv.client.operator import artifact_from_public_keys, bundle_from_receipt, next_epoch
from bkv.client.state import ClientState
from bkv.client.trust import TrustRoots
from bkv.client.validation import validate_bundle
from bkv.errors import BkvError, ConfigError, FetchError
from bkv.keystore import Signer
from bkv.keystore.files import read_key_file, write_key_file
from bkv.keystore.software import SoftwareSigner
from bkv.protocol import submission as submission_format
from bkv.protocol import witness_api
from bkv.protocol.bundle import ValidationBundle, encode_bundle
from bkv.protocol.plexi import WitnessKey
from bkv.wire import strict_json

USER_PIN_ENV: Final = "BKV_PKCS11_PIN"
DEFAULT_VALID_DAYS: Final = 730
MAX_VALID_DAYS: Final = 3660
_DAY_MS: Final = 24 * 3600 * 1000
#: Largest JSON answer read from the witness (a receipt carries a hex artifact).
MAX_WITNESS_RESPONSE: Final = 1 << 20
TIMEOUT_SECONDS: Final = 30.0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bkv operator`` and its sub-commands."""
    parser = subparsers.add_parser("operator", help="publish fleet keys through the witness")
    commands = parser.add_subparsers(dest="operator_command", metavar="COMMAND", required=True)

    keygen = commands.add_parser("keygen", help="make a software operator key file")
    keygen.add_argument("--out", type=Path, required=True, help="key file to create (0600)")
    keygen.set_defaults(handler=_keygen)

    publish = commands.add_parser("publish", help="witness, counter-sign and bundle fleet keys")
    publish.add_argument("--public-keys", type=Path, required=True, help="public-keys.json")
    publish.add_argument("--fleet-id", required=True)
    publish.add_argument(
        "--members", required=True, help="HSM ids, comma-separated (e.g. hsm-1,hsm-2,hsm-3)"
    )
    publish.add_argument("--quorum", type=int, help="default: the strict majority")
    publish.add_argument("--guess-limit", type=int, required=True)
    publish.add_argument(
        "--valid-days", type=int, default=DEFAULT_VALID_DAYS, help="validity from now"
    )
    publish.add_argument("--witness", required=True, help="witness base URL")
    publish.add_argument("--namespace", default=submission_format.FLEET_KEYS_NAMESPACE)
    key = publish.add_mutually_exclusive_group(required=True)
    key.add_argument("--operator-key", type=Path, help="software operator key file")
    key.add_argument("--pkcs11-config", type=Path, help="pkcs11.json of the operator's token")
    publish.add_argument("--label", help="operator key label in the token")
    publish.add_argument("--out", type=Path, required=True, help="bundle file to write")
    _add_pins(publish)
    publish.set_defaults(handler=_publish)

    again = commands.add_parser(
        "countersign", help="(re)post the counter-signature of a signed epoch; rebuild its bundle"
    )
    again.add_argument("--witness", required=True, help="witness base URL")
    again.add_argument("--namespace", default=submission_format.FLEET_KEYS_NAMESPACE)
    again.add_argument("--epoch", type=int, required=True)
    key = again.add_mutually_exclusive_group(required=True)
    key.add_argument("--operator-key", type=Path, help="software operator key file")
    key.add_argument("--pkcs11-config", type=Path, help="pkcs11.json of the operator's token")
    again.add_argument("--label", help="operator key label in the token")
    again.add_argument("--out", type=Path, help="also write the epoch's bundle here")
    _add_pins(again)
    again.set_defaults(handler=_countersign)


def _add_pins(parser: argparse.ArgumentParser) -> None:
    """The witness roots the operator pins (out of band, never from the witness's /info)."""
    parser.add_argument(
        "--witness-key",
        action="append",
        required=True,
        metavar="HEX[@NOT_BEFORE_MS]",
        help="the witness's statement key (64 hex), repeatable (rotation)",
    )
    parser.add_argument("--log-key", required=True, help="the witness log's C2SP verifier key")
    parser.add_argument("--origin", required=True, help="the witness log's checkpoint origin")


def parse_witness_key(text: str) -> WitnessKey:
    """``HEX[@NOT_BEFORE_MS]`` -> :class:`WitnessKey` (ConfigError if malformed)."""
    key_hex, _, not_before = text.partition("@")
    try:
        key = strict_json.parse_hex(key_hex, "--witness-key", max_bytes=32, exact=32)
        since = strict_json.parse_uint64(int(not_before), "not_before") if not_before else 0
        if not_before and str(since) != not_before:
            raise ValueError("non-canonical not_before")
        return WitnessKey(key, since)
    except (errors.CodecError, ValueError) as exc:
        raise ConfigError(f"--witness-key must be HEX[@NOT_BEFORE_MS]: {exc}") from None


def pinned_roots(args: argparse.Namespace, operator_key: bytes) -> TrustRoots:
    """The roots ``publish``/``countersign`` check the witness's answers against."""
    try:
        submission_format.check_namespace_name(args.namespace)  # it goes into URL paths
        return TrustRoots(
            witness_keys=tuple(parse_witness_key(k) for k in args.witness_key),
            operator_keys=(operator_key,),
            namespace=args.namespace,
            log_origin=args.origin,
            log_verifier_key=args.log_key,
        )
    except ValueError as exc:
        raise ConfigError(f"bad witness pins: {exc}") from None


def _keygen(args: argparse.Namespace) -> int:
    signer = SoftwareSigner.generate()
    write_key_file(args.out, signer.seed_bytes())
    print(signer.public_key().hex())
    return 0


def _load_signer(args: argparse.Namespace) -> Signer:
    if args.operator_key is not None:
        return SoftwareSigner(read_key_file(args.operator_key))
    if not args.label:
        raise ConfigError("--pkcs11-config needs --label")
    pin = os.environ.get(USER_PIN_ENV)
    if not pin:
        raise ConfigError(f"set {USER_PIN_ENV} to the token's user PIN")
    from bkv.keystore import pkcs11  # noqa: PLC0415 - loads the PKCS#11 library

    return pkcs11.load_signing_key(pkcs11.Pkcs11Config.load(args.pkcs11_config, pin), args.label)


def _members(text: str) -> tuple[str, ...]:
    members = tuple(m for m in text.split(",") if m)
    if not members:
        raise ConfigError("--members needs at least one HSM id")
    return members


class WitnessClient:
    """The few witness calls ``publish`` makes; refusals become the witness's error class."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError("--witness must be an http(s) URL")
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=TIMEOUT_SECONDS, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise FetchError(f"{method} {path}: {type(exc).__name__}") from None
        if len(response.content) > MAX_WITNESS_RESPONSE:
            raise FetchError(f"{method} {path}: answer over {MAX_WITNESS_RESPONSE} bytes")
        try:
            # Strict: no duplicate keys, no NaN (bkv.witness.strict_json.parse_json_object).
            data = strict_json.parse_json_object(response.content, MAX_WITNESS_RESPONSE)
        except errors.CodecError as exc:
            raise FetchError(
                f"{method} {path}: HTTP {response.status_code}, not a strict JSON object: {exc}"
            ) from None
        return response.status_code, data

    def expect(self, method: str, path: str, ok: tuple[int, ...], body: Any = None) -> Any:
        status, data = self.request(method, path, body)
        if status not in ok:
            raise witness_error(method, path, status, data)
        return data


def witness_error(method: str, path: str, status: int, data: Any) -> BkvError:
    """The witness's refusal as the bkv error class it names (FetchError otherwise)."""
    name = data.get("error") if isinstance(data, Mapping) else None
    message = data.get("message") if isinstance(data, Mapping) else None
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    text = f"witness refused {method} {path} (HTTP {status}): {message}"
    if isinstance(cls, type) and issubclass(cls, BkvError):
        return cls(text)
    return FetchError(text)


def _last_verified(witness: WitnessClient, namespace: str) -> Mapping[str, Any] | None:
    status, data = witness.request("GET", f"/namespaces/{namespace}/last-verified-epoch")
    if status == 200 and isinstance(data, Mapping):
        return data
    if status == 404 and isinstance(data, Mapping) and data.get("error") == "NotFound":
        return None  # the namespace is registered but nothing was signed yet
    raise witness_error("GET", f"/namespaces/{namespace}/last-verified-epoch", status, data)


def publish(
    args: argparse.Namespace,
    signer: Signer,
    witness: WitnessClient,
    now_ms: int,
) -> tuple[int, bytes]:
    """Steps 1-4 of the module docstring; returns (epoch, bundle bytes)."""
    if not 1 <= args.valid_days <= MAX_VALID_DAYS:
        raise ConfigError(f"--valid-days must be 1..{MAX_VALID_DAYS}")
    try:
        public_keys = args.public_keys.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.public_keys}: {type(exc).__name__}") from None
    artifact = artifact_from_public_keys(
        public_keys,
        fleet_id=args.fleet_id,
        members=_members(args.members),
        guess_limit=args.guess_limit,
        quorum=args.quorum,
        not_before_ms=now_ms,
        not_after_ms=now_ms + args.valid_days * _DAY_MS,
    ).to_bytes()
    ns = args.namespace
    # Pins first: a bad pin must fail before the witness signs anything.
    roots = pinned_roots(args, signer.public_key())
    epoch = next_epoch(_last_verified(witness, ns))
    submission = submission_format.sign_submission(
        signer, ns, epoch, artifact, submitted_at_ms=now_ms
    )
    receipt = witness.expect(
        "POST", f"/namespaces/{ns}/submissions", (201,), witness_api.submission_to_json(submission)
    )
    if not isinstance(receipt, Mapping):
        raise FetchError("the witness's receipt is not a JSON object")
    # Counter-sign only what was submitted, as signed and logged under the pinned keys.
    bundle = bundle_from_receipt(
        artifact, receipt, signer, roots=roots, epoch=epoch, now_ms=now_ms, submission=submission
    )
    data = _validated(bundle, roots, now_ms)
    _post_countersignature(witness, ns, epoch, bundle)
    return epoch, data


def countersign_epoch(
    roots: TrustRoots, epoch: int, signer: Signer, witness: WitnessClient, now_ms: int
) -> bytes:
    """Counter-sign a signed epoch from its audit record, post it; return its bundle bytes."""
    if epoch < 1:
        raise ConfigError("--epoch must be at least 1")
    namespace = roots.namespace
    audit = witness.expect("GET", f"/namespaces/{namespace}/audits/{epoch}", (200,))
    if not isinstance(audit, Mapping):
        raise FetchError("the witness's audit record is not a JSON object")
    artifact = strict_json.parse_hex(
        audit.get("artifact"), "artifact", max_bytes=submission_format.MAX_ARTIFACT_BYTES
    )
    # The logged entry must carry this operator's own submission signature: the
    # operator counter-signs only an epoch it asked for.
    bundle = bundle_from_receipt(artifact, audit, signer, roots=roots, epoch=epoch, now_ms=now_ms)
    data = _validated(bundle, roots, now_ms)
    _post_countersignature(witness, namespace, epoch, bundle)
    return data


def _validated(bundle: ValidationBundle, roots: TrustRoots, now_ms: int) -> bytes:
    """The bundle's bytes, after every check a fresh client makes (typed error otherwise).

    Run *before* the counter-signature leaves this process: the witness serves a
    posted counter-signature to everyone, so the operator must not endorse a
    statement that any client would refuse (future timestamp, expired artifact, ...).
    """
    data = encode_bundle(bundle)
    validate_bundle(data, roots, ClientState(), now_ms)
    return data


def _post_countersignature(
    witness: WitnessClient, namespace: str, epoch: int, bundle: ValidationBundle
) -> None:
    witness.expect(
        "POST",
        f"/namespaces/{namespace}/audits/{epoch}/countersignature",
        (200, 201),
        witness_api.countersignature_to_json(bundle.counter_signature),
    )


def _countersign(args: argparse.Namespace) -> int:
    if args.out is not None and args.out.exists():
        raise ConfigError(f"{args.out} already exists; bundles are never overwritten")
    signer = _load_signer(args)
    witness = WitnessClient(args.witness)
    try:
        data = countersign_epoch(
            pinned_roots(args, signer.public_key()),
            args.epoch,
            signer,
            witness,
            time.time_ns() // 1_000_000,
        )
    finally:
        witness.close()
        close = getattr(signer, "close", None)
        if callable(close):
            close()
    if args.out is not None:
        _write_new(args.out, data)
    print(f"counter-signed {args.namespace} epoch {args.epoch}")
    return 0


def _write_new(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; bundles are never overwritten") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise ConfigError(f"{args.out} already exists; bundles are never overwritten")
    signer = _load_signer(args)
    witness = WitnessClient(args.witness)
    try:
        epoch, data = publish(args, signer, witness, time.time_ns() // 1_000_000)
    finally:
        witness.close()
        close = getattr(signer, "close", None)
        if callable(close):
            close()
    _write_new(args.out, data)
    print(f"published {args.namespace} epoch {epoch}: {args.out} ({len(data)} bytes)")
    return 0
