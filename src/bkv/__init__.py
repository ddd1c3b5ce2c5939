"""bkv: an HSM-based Backup Key Vault.

Package map (one package per role or protocol noun; see docs/architecture.md):

- ``bkv.errors``  the one exception hierarchy
- ``bkv.wire``    the canonical binary codec for every protocol message
- ``bkv.crypto``  ristretto255, OPRF (RFC 9497), OPAQUE-3DH (RFC 9807), KSF, channel
- ``bkv.tlog``    RFC 6962/9162 Merkle log, C2SP signed notes, checkpoints, tiles
- ``bkv.witness`` the independent witness (Plexi signatures, audit log)
- ``bkv.hsm``     the HSM application (sans-IO) and its sealed persistence
- ``bkv.host``    the operator's untrusted HTTP front end
- ``bkv.client``  the client SDK and fleet-key validation
- ``bkv.audit``   what anyone runs to check a fleet and the log
- ``bkv.cli``     the ``bkv`` command
"""

__version__ = "0.1.0"
