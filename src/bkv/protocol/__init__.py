"""The formats the roles exchange, in one place so that each role reads the same definition.

- :mod:`bkv.protocol.messages`    the HSM message API (every byte that crosses the host)
- :mod:`bkv.protocol.release`     sealing of released secrets under the OPAQUE session key
- :mod:`bkv.protocol.artifact`    the fleet-key artifact (canonical JSON)
- :mod:`bkv.protocol.plexi`       Cloudflare Plexi ``SignatureMessage``: sign and verify
- :mod:`bkv.protocol.countersign` the operator's counter-signature of a witness signature
- :mod:`bkv.protocol.keycheck`    pinned Ed25519 keys must be prime-order points
- :mod:`bkv.protocol.submission`  the operator's submission and the witness's audit-log entry
- :mod:`bkv.protocol.bundle`      the validation bundle a client checks
- :mod:`bkv.protocol.witness_api` the witness's JSON shapes and their strict parsing

Everything here is sans-IO (docs/architecture.md#layers); importing this package
imports none of its modules.
"""
