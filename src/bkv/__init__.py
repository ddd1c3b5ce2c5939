"""bkv: an HSM-based Backup Key Vault.

Package map, bottom layer first (one package per role or protocol noun; the
layers and what each may import: docs/architecture.md#layers):

- ``bkv.errors``   the one exception hierarchy
- ``bkv.wire``     the canonical binary codec for every protocol message; strict JSON
- ``bkv.crypto``   ristretto255, OPRF (RFC 9497), OPAQUE-3DH (RFC 9807), KSF, channel
- ``bkv.tlog``     RFC 6962/9162 Merkle log, C2SP signed notes, checkpoints, tiles
- ``bkv.records``  per-record storage under a Merkle tree
- ``bkv.protocol`` the formats the roles exchange (HSM messages, artifact, bundle, ...)
- ``bkv.keystore`` software and PKCS#11 signers, sealers and NV counters
- ``bkv.serving``  how the three servers run HTTP
- ``bkv.hsm``      the HSM application (sans-IO) and its sealed persistence
- ``bkv.witness``  the independent witness (rules, audit log, HTTP API)
- ``bkv.client``   the client SDK and fleet-key validation
- ``bkv.host``     the operator's untrusted HTTP front end
- ``bkv.audit``    what anyone runs to check a fleet and the log
- ``bkv.cli``      the ``bkv`` command
"""

__version__ = "0.1.0"
