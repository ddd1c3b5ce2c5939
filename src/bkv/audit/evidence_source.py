"""Reads what ``bkv audit verify-deployment`` checks (an adapter: files and HTTP).

- the deployment evidence, from a file or an ``http(s)`` URL (the witness serves
  it at ``/namespaces/{ns}/audits/{epoch}/evidence``), read with the audit's
  bounded HTTP reader (:class:`bkv.audit.http_source.HttpWitnessSource`: a byte cap,
  a timeout, no redirects) and never more than
  :data:`bkv.protocol.evidence.MAX_EVIDENCE_BYTES`;
- the pinned vendor root certificate (PEM or DER);
- a fleet-key artifact file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bkv.audit.http_source import HttpWitnessSource
from bkv.errors import ConfigError, EvidenceFormatError, StorageError
from bkv.keystore.files import read_small_file
from bkv.protocol.artifact import MAX_ARTIFACT_BYTES
from bkv.protocol.evidence import MAX_EVIDENCE_BYTES

#: Largest root certificate file read (the PEM of a large RSA root is under 4 KiB).
MAX_ROOT_CERTIFICATE_FILE: Final = 64 * 1024


def is_url(location: str) -> bool:
    """Whether ``location`` names an HTTP(S) URL rather than a file."""
    return location.startswith(("http://", "https://"))


def fetch_evidence(location: str) -> bytes:
    """The evidence bytes at ``location`` (file or URL), at most ``MAX_EVIDENCE_BYTES``.

    :class:`FetchError` if a URL gives no usable answer, :class:`ConfigError` for
    an unreadable file, :class:`EvidenceFormatError` for a file over the limit.
    """
    if is_url(location):
        parts = urlsplit(location)
        if not parts.netloc:
            raise ConfigError(f"{location} is not a URL with a host")
        base = f"{parts.scheme}://{parts.netloc}"
        path = location[len(base) :] or "/"
        with HttpWitnessSource(base) as source:
            return source.get_bytes(path, MAX_EVIDENCE_BYTES)
    try:
        return read_small_file(Path(location), MAX_EVIDENCE_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"evidence file {location} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read evidence file {location}: {type(exc).__name__}") from None
    except StorageError as exc:
        raise EvidenceFormatError(f"evidence file {location}: {exc}") from None


def read_vendor_root(path: Path) -> bytes:
    """The DER bytes of the vendor root certificate in ``path`` (PEM or DER)."""
    data = _read(path, MAX_ROOT_CERTIFICATE_FILE, "vendor root certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM or DER X.509 certificate") from None


def read_artifact_file(path: Path) -> bytes:
    """The bytes of a fleet-key artifact file (at most ``MAX_ARTIFACT_BYTES``)."""
    return _read(path, MAX_ARTIFACT_BYTES, "artifact")


def _read(path: Path, max_size: int, what: str) -> bytes:
    try:
        return read_small_file(Path(path), max_size)
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {type(exc).__name__}") from None
    except StorageError as exc:
        raise ConfigError(f"{what} file {path}: {exc}") from None
