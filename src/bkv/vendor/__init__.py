"""The emulated HSM vendor: a root CA that certifies HSM device keys (an adapter).

Real HSMs leave the factory with a device key whose certificate chains to the
vendor's root; deployment evidence (:mod:`bkv.protocol.evidence`) rests on it.
Real HSMs are not available, so this package plays the vendor:

- :mod:`bkv.vendor.ca` -- the root key and certificate, and device certificates
  (``bkv vendor init`` / ``bkv vendor certify``, :mod:`bkv.cli.vendor`).

The vendor is a party of its own, trusted for one thing (certifying genuine
devices): like the other roles it imports no role, and no role and not the
auditor import it (docs/architecture.md#layers; the contracts in pyproject.toml).
"""

from __future__ import annotations
