"""An independent verifier of Plexi-format witness signatures, over HTTP.

Written from Plexi's published definitions only, without importing any bkv module:

- ``plexi_core/src/proto/specs/types.proto`` (cloudflare/plexi): proto2
  ``SignatureMessage { required uint32 ciphersuite = 1; required string namespace = 2;
  required uint64 timestamp = 3; required Epoch epoch = 4; required bytes digest = 5; }``
  and ``Epoch { required uint64 inner = 1; }``;
- the Protocol Buffers encoding guide: tag = field_number << 3 | wire_type, base-128
  varints, length-delimited strings/bytes/messages, fields in field-number order
  (as prost emits them), required fields always written;
- Plexi's auditor API: ``GET /info`` -> ``{"keys": [{"public_key", "not_before"}]}``,
  ``GET /namespaces/{ns}/audits/{epoch}`` -> ``SignatureResponse`` JSON with hex
  ``digest`` and ``signature`` and an integer ``key_id`` (last byte of the key).

Usage: ``python independent_plexi_verifier.py BASE_URL NAMESPACE EPOCH [EPOCH ...]``.
Exit status 0 when every signature verifies.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PROTOBUF_ED25519 = 1


class VerificationFailedError(Exception):
    """The witness statement did not verify."""


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3 | 0) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def signature_message(
    ciphersuite: int, namespace: str, timestamp: int, epoch: int, digest: bytes
) -> bytes:
    epoch_message = field_varint(1, epoch)
    return (
        field_varint(1, ciphersuite)
        + field_bytes(2, namespace.encode("utf-8"))
        + field_varint(3, timestamp)
        + field_bytes(4, epoch_message)
        + field_bytes(5, digest)
    )


def fetch_json(url: str) -> Any:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("this test tool only talks to loopback")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def verify_response(info: dict[str, Any], audit: dict[str, Any]) -> None:
    """Verify one SignatureResponse against the keys of /info; raise VerificationFailedError."""
    suite = audit.get("ciphersuite", audit.get("version"))
    if suite != PROTOBUF_ED25519:
        raise VerificationFailedError(f"unsupported ciphersuite {suite}")
    message = signature_message(
        suite,
        audit["namespace"],
        audit["timestamp"],
        audit["epoch"],
        bytes.fromhex(audit["digest"]),
    )
    served = audit.get("serialized_message")
    if served is not None and bytes.fromhex(served) != message:
        raise VerificationFailedError("serialized_message differs from the independent encoding")
    signature = bytes.fromhex(audit["signature"])
    candidates = [
        key
        for key in info["keys"]
        if bytes.fromhex(key["public_key"])[-1] == audit["key_id"]
        and key["not_before"] <= audit["timestamp"]
    ]
    if not candidates:
        raise VerificationFailedError(f"no valid key with key id {audit['key_id']}")
    for key in candidates:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["public_key"]))
        try:
            public.verify(signature, message)
        except InvalidSignature:
            continue
        return
    raise VerificationFailedError("signature does not verify under the witness key")


def verify_epoch(base_url: str, namespace: str, epoch: int) -> dict[str, Any]:
    info = fetch_json(f"{base_url}/info")
    audit = fetch_json(f"{base_url}/namespaces/{namespace}/audits/{epoch}")
    if audit["namespace"] != namespace or audit["epoch"] != epoch:
        raise VerificationFailedError("the audit is for another namespace or epoch")
    verify_response(info, audit)
    result: dict[str, Any] = audit
    return result


def main(argv: list[str]) -> int:
    base_url, namespace, *epochs = argv
    for epoch in epochs:
        verify_epoch(base_url, namespace, int(epoch))
        print(f"epoch {epoch}: witness signature OK")
    loaded = sorted(name for name in sys.modules if name == "bkv" or name.startswith("bkv."))
    print(f"bkv modules loaded: {loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
