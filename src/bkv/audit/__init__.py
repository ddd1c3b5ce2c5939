"""``bkv audit``: anyone re-checks the witness's public record of the fleet keys and a
fleet's deployment evidence.

- :mod:`bkv.audit.verify` -- the checks (sans-IO over a :class:`WitnessSource`);
- :mod:`bkv.audit.delta` -- what changed between epochs, as a table;
- :mod:`bkv.audit.deployment` -- the three steps of ``verify-deployment`` (sans-IO);
- :mod:`bkv.audit.http_source` -- the HTTP adapter (httpx);
- :mod:`bkv.audit.evidence_source` -- reads evidence from a file or a bounded download;
- :mod:`bkv.audit.source_tree` -- reads a source checkout for ``bkv audit measure``;
- the command line is :mod:`bkv.cli.audit` (``bkv audit log``, ``measure``,
  ``verify-deployment``).
"""

from __future__ import annotations
