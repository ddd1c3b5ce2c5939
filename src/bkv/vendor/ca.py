"""The emulated HSM vendor's root CA and device certificates (an adapter: files and clock).

A vendor directory (mode 0700) holds::

    vendor-root.key      the root's Ed25519 seed, bkv's key-file format (0600, never
                         overwritten; bkv.keystore.files)
    vendor-root.pem      the self-signed root certificate (public: pin it in auditors)
    issued/<serial>.pem  every device certificate issued, one per device serial

The root certificate: X.509 v3, Ed25519 (RFC 8410), subject and issuer
``CN=<name> root, O=<name>``, critical basicConstraints ``cA`` true with path
length 0 (devices only, no intermediate), critical keyUsage ``keyCertSign,
cRLSign``, subjectKeyIdentifier.

A device certificate: X.509 v3 signed by the root, subject ``CN=bkv-hsm-device,
serialNumber=<device serial>, O=<name>``, a random 159-bit certificate serial
number (RFC 5280 §4.1.2.2: unique per CA), critical basicConstraints ``cA``
false, critical keyUsage ``digitalSignature`` only, extended key usage
"bkv-hsm-device" (:data:`bkv.protocol.evidence.DEVICE_EKU_OID`, not critical),
subject and authority key identifiers. The certified key is the device's
Ed25519 attestation key. One certificate per device serial: the vendor refuses
to certify a serial twice (``issued/<serial>.pem`` is created exclusively).

:func:`make_root_certificate` and :func:`make_device_certificate` build the
certificates in memory (tests and in-process fleets use them); :func:`init_vendor`
and :func:`certify_device` are the file-backed commands.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import NameOID

from bkv.crypto.ed25519 import is_strong_ed25519_key
from bkv.errors import ConfigError, KeyExistsError, KeystoreError, StorageError
from bkv.keystore.files import (
    check_private,
    fsync_directory,
    make_private_directory,
    read_key_file,
    read_small_file,
    write_key_file,
)
from bkv.protocol.evidence import DEVICE_EKU_OID

ROOT_KEY_FILE: Final = "vendor-root.key"
ROOT_CERT_FILE: Final = "vendor-root.pem"
ISSUED_DIR: Final = "issued"

#: Default validity of the root certificate, in days (20 years).
DEFAULT_ROOT_DAYS: Final = 20 * 365
#: Default validity of a device certificate, in days (10 years).
DEFAULT_DEVICE_DAYS: Final = 10 * 365
#: Longest validity either may be given, in days.
MAX_VALID_DAYS: Final = 50 * 365
#: Largest certificate or public-key file read.
MAX_PEM_FILE_SIZE: Final = 16 * 1024

DEFAULT_VENDOR_NAME: Final = "bkv emulated HSM vendor"
DEVICE_COMMON_NAME: Final = "bkv-hsm-device"

_SERIAL_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,58}")
_HEX_KEY_RE: Final = re.compile(rb"[0-9a-f]{64}\n?")
_PUBLIC_FILE_MODE: Final = 0o644


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and where it was written."""

    path: Path
    certificate: x509.Certificate

    @property
    def sha256(self) -> str:
        """SHA-256 fingerprint of the DER certificate, lowercase hex."""
        return fingerprint(self.certificate)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex (``openssl x509 -fingerprint -sha256``)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALID_DAYS:
        raise ConfigError(f"validity must be 1..{MAX_VALID_DAYS} days")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise ConfigError(f"vendor name must match {_NAME_RE.pattern}")


def check_device_serial(serial: str) -> str:
    """``serial`` if it is a device serial this vendor issues; :class:`ConfigError` otherwise."""
    if not isinstance(serial, str) or _SERIAL_RE.fullmatch(serial) is None:
        raise ConfigError(f"device serial must match {_SERIAL_RE.pattern}")
    return serial


# --- certificates, in memory ----------------------------------------------------------------


def make_root_certificate(
    key: Ed25519PrivateKey, name: str, *, not_before: datetime.datetime, days: int
) -> x509.Certificate:
    """The vendor's self-signed root certificate (module doc)."""
    _check_name(name)
    _check_days(days)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )


def make_device_certificate(
    root_key: Ed25519PrivateKey,
    root: x509.Certificate,
    device_key: bytes,
    device_serial: str,
    *,
    not_before: datetime.datetime,
    days: int,
) -> x509.Certificate:
    """A device certificate for the Ed25519 key ``device_key`` (raw 32 bytes; module doc)."""
    check_device_serial(device_serial)
    _check_days(days)
    if not isinstance(device_key, bytes) or not is_strong_ed25519_key(device_key):
        raise ConfigError("the device key is not a valid Ed25519 public key")
    organization = root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_COMMON_NAME),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device_serial),
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(a.value)) for a in organization),
        ]
    )
    public = Ed25519PublicKey.from_public_bytes(device_key)
    not_after = min(
        not_before + datetime.timedelta(days=days), root.not_valid_after_utc
    )  # never beyond the root
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(DEVICE_EKU_OID)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, None)
    )


# --- the vendor directory ---------------------------------------------------------------------


def _now() -> datetime.datetime:
    # Whole seconds: certificate times have no fraction (RFC 5280 §4.1.2.5).
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def init_vendor(
    directory: Path, *, name: str = DEFAULT_VENDOR_NAME, days: int = DEFAULT_ROOT_DAYS
) -> IssuedCertificate:
    """Create the vendor directory, its root key (0600) and root certificate.

    Refuses (:class:`KeyExistsError`) a directory that already has a root key.
    """
    _check_name(name)
    _check_days(days)
    directory = Path(directory)
    make_private_directory(directory)
    key = Ed25519PrivateKey.generate()
    write_key_file(directory / ROOT_KEY_FILE, key.private_bytes_raw())
    certificate = make_root_certificate(key, name, not_before=_now(), days=days)
    path = directory / ROOT_CERT_FILE
    _write_new(path, certificate.public_bytes(serialization.Encoding.PEM), _PUBLIC_FILE_MODE)
    return IssuedCertificate(path, certificate)


def certify_device(
    directory: Path,
    device_key: bytes,
    device_serial: str,
    out: Path,
    *,
    days: int = DEFAULT_DEVICE_DAYS,
) -> IssuedCertificate:
    """Issue a device certificate for ``device_key``, record it and write it (PEM) to ``out``.

    Refuses a device serial already certified and an existing ``out``.
    """
    check_device_serial(device_serial)
    directory = Path(directory)
    out = Path(out)
    if os.path.lexists(out):
        raise ConfigError(f"{out} already exists")
    root_key, root = _load_vendor(directory)
    now = _now()
    if now > root.not_valid_after_utc:
        raise ConfigError("the vendor root certificate has expired")
    certificate = make_device_certificate(
        root_key, root, device_key, device_serial, not_before=now, days=days
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    issued = directory / ISSUED_DIR
    make_private_directory(issued)
    try:
        _write_new(issued / f"{device_serial}.pem", pem, _PUBLIC_FILE_MODE)
    except KeyExistsError:
        raise ConfigError(f"device {device_serial} is already certified") from None
    _write_new(out, pem, _PUBLIC_FILE_MODE)
    return IssuedCertificate(out, certificate)


def _load_vendor(directory: Path) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    check_private(directory, "vendor directory", directory=True)
    key_path = directory / ROOT_KEY_FILE
    check_private(key_path, "vendor root key", directory=False)
    key = Ed25519PrivateKey.from_private_bytes(read_key_file(key_path))
    root = read_certificate(directory / ROOT_CERT_FILE)
    root_public = root.public_key()
    if not isinstance(root_public, Ed25519PublicKey) or (
        root_public.public_bytes_raw() != key.public_key().public_bytes_raw()
    ):
        raise KeystoreError(f"{ROOT_CERT_FILE} is not the certificate of {ROOT_KEY_FILE}")
    return key, root


def read_certificate(path: Path) -> x509.Certificate:
    """A certificate file, PEM or DER (:class:`ConfigError` if it is neither)."""
    data = _read_public_file(path, "certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM or DER X.509 certificate") from None


def read_device_public_key(path: Path) -> bytes:
    """The raw Ed25519 key in ``path``: 64 lowercase hex digits (``bkv keystore public-key``)
    or a PEM public key (``openssl pkey -pubout``)."""
    data = _read_public_file(path, "device public key")
    if _HEX_KEY_RE.fullmatch(data):
        return bytes.fromhex(data[:64].decode("ascii"))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is neither 64 hex digits nor a PEM Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key.public_bytes_raw()


def _read_public_file(path: Path, what: str) -> bytes:
    try:
        return read_small_file(Path(path), MAX_PEM_FILE_SIZE)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except (OSError, StorageError) as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``data``, durably; :class:`KeyExistsError` if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise KeyExistsError(f"{path} already exists") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {type(exc).__name__}") from None
    try:
        view = memoryview(data)
        while view:  # bounded: each write makes progress or raises
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    fsync_directory(path.parent)
