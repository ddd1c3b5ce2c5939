"""tests/evidence: the live witness of tests/audit is reused for the end-to-end check."""

from __future__ import annotations

import sys
from pathlib import Path

_AUDIT_TESTS = str(Path(__file__).resolve().parent.parent / "audit")
if _AUDIT_TESTS not in sys.path:
    sys.path.append(_AUDIT_TESTS)
