"""Suite-wide pytest configuration.

Hypothesis runs a fixed, derandomized profile so that CI is reproducible; the
"thorough" profile (HYPOTHESIS_PROFILE=thorough) explores more for local runs.

``postgres_url``: a private PostgreSQL cluster (tests/postgres_cluster.py),
started the first time a test asks for it and stopped at the end of the
session. Without the server binaries the tests that need it fail, saying to
run ``make setup``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of an empty database in a private PostgreSQL cluster (one per session)."""
    from postgres_cluster import ClusterUnavailableError, running_cluster  # noqa: PLC0415

    try:
        with running_cluster() as url:
            yield url
    except ClusterUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
