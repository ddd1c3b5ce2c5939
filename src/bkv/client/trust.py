"""What a client trusts: its explicit roots, and the fleet keys it accepts.

Trust roots are explicit, in the manner of python-tuf's ngclient: nothing is
fetched or trusted implicitly, the caller hands :func:`validate_bundle
<bkv.client.validation.validate_bundle>` a :class:`TrustRoots` value built
from configuration compiled into the app.

Two modes give the same :class:`FleetKeys` value:

- **over the air**: :func:`bkv.client.validation.validate_bundle` returns it
  after every check passed;
- **pinned**: :class:`PinnedFleetKeys` holds the artifact bytes and their
  digest compiled into the app, and :meth:`PinnedFleetKeys.fleet_keys`
  re-checks the digest and the validity window; no witness is involved.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from bkv.errors import DigestMismatchError, NoteError, SignatureError, TimestampError
from bkv.protocol.artifact import (
    DIGEST_SIZE,
    ROLE_CHANNEL,
    ROLE_OPAQUE_AKE,
    FleetKeyArtifact,
    PublicKey,
    artifact_digest,
    parse_artifact,
)
from bkv.protocol.keycheck import check_ed25519_public_key
from bkv.protocol.plexi import WitnessKey
from bkv.tlog.cosignature import CosignerPolicy
from bkv.tlog.note import Ed25519Verifier, parse_verifier_key

#: Clock skew tolerated between the client and the witness / fleet (5 minutes).
DEFAULT_MAX_CLOCK_SKEW_MS: Final = 5 * 60 * 1000
#: Largest number of pinned witness or operator keys.
MAX_PINNED_KEYS: Final = 16


@dataclass(frozen=True)
class TrustRoots:
    """The client's pinned roots for over-the-air validation.

    - ``witness_keys``: the witness's Ed25519 keys with ``not_before_ms`` (rotation:
      a statement timestamped before a key's ``not_before_ms`` is not accepted under it);
    - ``operator_keys``: the operator's Ed25519 keys (any one may sign); each must have
      signed both the logged submission and the counter-signature;
    - ``namespace``: the namespace the statements must name (``bkv.fleet_keys.v1``);
    - ``log_origin`` and ``log_verifier_key``: the witness log's checkpoint origin line
      and its C2SP signed-note verifier key (``name+hash+base64``);
    - ``cosigner_policy``: optional k-of-n cosigner requirement on checkpoints. Without
      one (the default, kept for existing callers) the client trusts the witness's log
      key alone for the log's contents: a witness could show this client a log (a
      split view) that auditors never see. Production roots should set a policy of
      independent cosigners;
    - ``max_clock_skew_ms``: how far in the future a timestamp may be.
    """

    witness_keys: tuple[WitnessKey, ...]
    operator_keys: tuple[bytes, ...]
    namespace: str
    log_origin: str
    log_verifier_key: str
    cosigner_policy: CosignerPolicy | None = None
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    #: ``log_verifier_key`` parsed and checked once, here, not on every validation.
    log_verifier: Ed25519Verifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.witness_keys) <= MAX_PINNED_KEYS:
            raise ValueError(f"pin 1..{MAX_PINNED_KEYS} witness keys")
        if not 1 <= len(self.operator_keys) <= MAX_PINNED_KEYS:
            raise ValueError(f"pin 1..{MAX_PINNED_KEYS} operator keys")
        for key in self.operator_keys:
            if not isinstance(key, bytes) or len(key) != 32:
                raise ValueError("operator keys are 32-byte Ed25519 public keys")
            check_ed25519_public_key(key, "operator key")
        if not self.namespace or not self.log_origin or not self.log_verifier_key:
            raise ValueError("namespace, log_origin and log_verifier_key are required")
        if not 0 <= self.max_clock_skew_ms <= 24 * 3600 * 1000:
            raise ValueError("max_clock_skew_ms must be 0..1 day")
        try:
            log_key = parse_verifier_key(self.log_verifier_key)
        except NoteError as exc:
            raise ValueError(
                f"log_verifier_key is not an Ed25519 note verifier key: {exc}"
            ) from None
        check_strong_note_keys(log_key, self.cosigner_policy)
        object.__setattr__(self, "log_verifier", log_key)


def verify_with_any_key(
    keys: Iterable[bytes],
    verify: Callable[[bytes], None],
    error: type[SignatureError],
    message: str,
) -> None:
    """Return once ``verify(key)`` passes for one of the pinned ``keys``; raise ``error`` else.

    Pinned operator keys rotate, so any one of them may have signed. ``verify`` raises
    ``error`` for a key that did not sign; any other exception propagates. The raised
    error carries ``message`` only (which key failed how is not the caller's concern).
    """
    for key in keys:
        try:
            verify(key)
        except error:
            continue
        return
    raise error(message)


def check_strong_note_keys(log_key: Ed25519Verifier, policy: CosignerPolicy | None) -> None:
    """Refuse small-order log and cosigner keys (:mod:`bkv.protocol.keycheck`; ValueError)."""
    check_ed25519_public_key(log_key.public_key, "log verifier key")
    for cosigner in () if policy is None else policy.cosigners:
        check_ed25519_public_key(cosigner.public_key, f"cosigner key {cosigner.name}")


@dataclass(frozen=True)
class FleetKeys:
    """Fleet keys the client may use, by role; made only after every check passed.

    The one fleet-keys type of the client: :func:`bkv.client.validation.validate_bundle`
    returns it (over the air), :meth:`PinnedFleetKeys.fleet_keys` makes it (pinned), and
    the vault protocol (:mod:`bkv.client.vault`, :class:`bkv.client.sdk.VaultClient`)
    takes it directly and uses the keys by role: ``channel`` seals requests,
    ``opaque_ake`` is the OPAQUE server key a registration must match.

    ``epoch`` is the witnessed epoch (``None`` for pinned keys). ``digest`` is the
    SHA-256 of the exact artifact bytes.
    """

    artifact: FleetKeyArtifact
    digest: bytes
    epoch: int | None
    source: Literal["pinned", "over_the_air"]

    def __post_init__(self) -> None:
        if not isinstance(self.artifact, FleetKeyArtifact):
            raise TypeError("artifact must be a FleetKeyArtifact")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_SIZE:
            raise ValueError("digest must be the 32-byte SHA-256 of the artifact")
        if (self.source == "pinned") != (self.epoch is None):
            raise ValueError("pinned keys have no epoch; over-the-air keys have one")
        if self.epoch is not None and self.epoch < 1:
            raise ValueError("a witnessed epoch is at least 1")

    @property
    def fleet_id(self) -> str:
        return self.artifact.fleet_id

    @property
    def keys_by_role(self) -> Mapping[str, PublicKey]:
        return self.artifact.keys_by_role

    def public_key(self, role: str) -> bytes:
        """The raw public key with this role (:class:`ArtifactError` if absent)."""
        return self.artifact.key(role).key

    @property
    def channel_public_key(self) -> bytes:
        """The fleet's HPKE channel key (role ``channel``, X25519): requests are sealed to it."""
        return self.public_key(ROLE_CHANNEL)

    @property
    def opaque_public_key(self) -> bytes:
        """The fleet's OPAQUE AKE key (role ``opaque_ake``): registrations must match it."""
        return self.public_key(ROLE_OPAQUE_AKE)

    @property
    def guess_limit(self) -> int:
        return self.artifact.policy.guess_limit


def check_validity_window(artifact: FleetKeyArtifact, now_ms: int, skew_ms: int) -> None:
    """Raise :class:`TimestampError` unless ``now_ms`` is inside the artifact's validity."""
    if now_ms + skew_ms < artifact.not_before_ms:
        raise TimestampError("fleet-key artifact is not valid yet (before not_before_ms)")
    if now_ms > artifact.not_after_ms:
        raise TimestampError("fleet-key artifact has expired (after not_after_ms)")


@dataclass(frozen=True)
class PinnedFleetKeys:
    """Pinned mode: artifact bytes and their digest compiled into the app.

    No witness, no log: trust comes from the app update that shipped the bytes.
    The digest is still checked (a corrupted build must not load other keys) and so is
    the validity window.
    """

    artifact_bytes: bytes
    digest: bytes

    @classmethod
    def of(cls, artifact: FleetKeyArtifact) -> PinnedFleetKeys:
        """Pin an artifact built in code (keys by role), e.g. in the app's constants."""
        data = artifact.to_bytes()
        return cls(artifact_bytes=data, digest=artifact_digest(data))

    def fleet_keys(self, now_ms: int, *, skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS) -> FleetKeys:
        actual = artifact_digest(self.artifact_bytes)
        if not hmac.compare_digest(actual, self.digest):
            raise DigestMismatchError("pinned artifact bytes do not match the pinned digest")
        artifact = parse_artifact(self.artifact_bytes)
        check_validity_window(artifact, now_ms, skew_ms)
        return FleetKeys(artifact=artifact, digest=actual, epoch=None, source="pinned")
