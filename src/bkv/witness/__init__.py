"""The independent witness: Plexi-format statements over fleet-key artifacts.

Modules:

- :mod:`bkv.protocol.plexi` -- Cloudflare Plexi ``SignatureMessage`` codec, sign and
  verify (sans-IO). Clients and the bundle verifier use this.
- :mod:`bkv.witness.core` -- the witness state machine: namespace rules, epoch and
  digest uniqueness, audit-log entries (sans-IO, storage behind a protocol).
- :mod:`bkv.witness.store` -- the SQLite adapter and witness key handling.
- :mod:`bkv.witness.http` -- the Plexi auditor HTTP API, tlog-tiles and tlog-witness.
"""

from __future__ import annotations
