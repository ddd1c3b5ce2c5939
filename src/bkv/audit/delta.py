"""What changed between epochs: fleet keys by role (added, removed, changed) and fleet metadata.

Pure functions over verified :class:`~bkv.audit.verify.AuditedEpoch` values, and a
plain-text table renderer for ``bkv audit log``. Keys are printed in full (algorithm
and hex) so an auditor can compare them with deployment evidence byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from bkv.audit.verify import AuditedEpoch, AuditReport
from bkv.protocol.artifact import FleetKeyArtifact, PublicKey

Change = Literal["added", "removed", "changed"]

_COLUMNS: Final = ("EPOCH", "FLEET", "ROLE", "CHANGE", "OLD", "NEW")


@dataclass(frozen=True)
class Delta:
    """One row of the delta table: a key role or a metadata field that changed at ``epoch``."""

    epoch: int
    fleet_id: str
    subject: str
    change: Change
    old: str
    new: str


def _key_text(key: PublicKey | None) -> str:
    return "-" if key is None else f"{key.algorithm}:{key.key.hex()}"


def _metadata(artifact: FleetKeyArtifact) -> dict[str, str]:
    return {
        "fleet_id": artifact.fleet_id,
        "members": ",".join(artifact.members),
        "policy": f"guess_limit={artifact.policy.guess_limit},quorum={artifact.policy.quorum}",
        "validity": f"{artifact.not_before_ms}..{artifact.not_after_ms}",
        "evidence_digest": (
            "-" if artifact.evidence_digest is None else artifact.evidence_digest.hex()
        ),
    }


def epoch_deltas(previous: FleetKeyArtifact | None, current: AuditedEpoch) -> list[Delta]:
    """Rows for ``current`` against the artifact of the epoch before (``None`` for epoch 1)."""
    artifact = current.artifact
    old_keys = {} if previous is None else dict(previous.keys_by_role)
    new_keys = dict(artifact.keys_by_role)
    rows: list[Delta] = []
    for role in sorted(old_keys.keys() | new_keys.keys()):
        old, new = old_keys.get(role), new_keys.get(role)
        if old == new:
            continue
        change: Change = "added" if old is None else "removed" if new is None else "changed"
        rows.append(
            Delta(current.epoch, artifact.fleet_id, role, change, _key_text(old), _key_text(new))
        )
    old_meta = {} if previous is None else _metadata(previous)
    for name, value in _metadata(artifact).items():
        before = old_meta.get(name)
        if before is None and value == "-":
            continue  # an absent optional field (no evidence yet) is not news
        if before != value:
            change = "added" if before is None else "changed"
            rows.append(Delta(current.epoch, artifact.fleet_id, name, change, before or "-", value))
    return rows


def all_deltas(epochs: Sequence[AuditedEpoch]) -> list[Delta]:
    """Delta rows for every epoch, in epoch order."""
    rows: list[Delta] = []
    previous: FleetKeyArtifact | None = None
    for epoch in epochs:
        rows += epoch_deltas(previous, epoch)
        previous = epoch.artifact
    return rows


def render_table(rows: Sequence[Delta]) -> str:
    """Fixed-width text table, one row per change."""
    cells = [_COLUMNS] + [
        (str(r.epoch), r.fleet_id, r.subject, r.change, r.old, r.new) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


def render_report(report: AuditReport) -> str:
    """The full ``bkv audit log`` output for a passed audit."""
    n = len(report.epochs)
    countersigned = len(report.countersigned_epochs)
    lines = [
        f"namespace {report.namespace}: {n} epoch(s) verified",
        f"checkpoint: size {report.checkpoint_size}, root {report.checkpoint_root.hex()}",
        "checked: digest, witness signature, operator submission signature, log inclusion "
        "(every entry rehashed against the signed root), no hidden log entries, "
        "each epoch's signed checkpoint is a prefix of the current log",
        f"operator counter-signatures verified: {countersigned} of {n} epoch(s)",
    ]
    for epoch in report.epochs:
        lines.append(
            f"  epoch {epoch.epoch}: timestamp_ms {epoch.timestamp_ms}, log index "
            f"{epoch.log_index}, digest {epoch.digest.hex()}"
            + (", counter-signed" if epoch.countersigned else "")
        )
    lines += ["", render_table(all_deltas(report.epochs))]
    return "\n".join(lines) + "\n"
