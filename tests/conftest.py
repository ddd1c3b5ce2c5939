"""Suite-wide pytest configuration.

Hypothesis runs a fixed, derandomized profile so that CI is reproducible; the
"thorough" profile (HYPOTHESIS_PROFILE=thorough) explores more for local runs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
