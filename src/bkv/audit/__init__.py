"""``bkv audit``: anyone re-checks the witness's public record of the fleet keys.

- :mod:`bkv.audit.verify` -- the checks (sans-IO over a :class:`WitnessSource`);
- :mod:`bkv.audit.delta` -- what changed between epochs, as a table;
- :mod:`bkv.audit.http_source` -- the HTTP adapter (httpx);
- the command line is :mod:`bkv.cli.audit` (``bkv audit log``).
"""

from __future__ import annotations
