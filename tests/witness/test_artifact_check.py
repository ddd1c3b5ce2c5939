"""The witness signs only strict fleet-key artifacts, naming exactly the submitted evidence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from witness_helpers import (
    NS,
    Clock,
    artifact_for,
    db_dump,
    running_server,
    submission,
)

from bkv.errors import ArtifactError, DigestMismatchError
from bkv.keystore import SoftwareSigner
from bkv.protocol import witness_api
from bkv.wire import canonical_json
from bkv.witness.service import WitnessService


@pytest.fixture
def client(service: WitnessService) -> Iterator[httpx.Client]:
    with running_server(service) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


NOT_ARTIFACTS = [
    b"any bytes at all",
    b'{"epoch":1,"fleet":"test","keys":[]}',  # JSON, but not a fleet-key artifact
    canonical_json.dumps({"type": "bkv.fleet_keys", "version": 2}),  # another version
    artifact_for(1).replace(b'"quorum":1', b'"quorum": 1'),  # non-canonical
]


@pytest.mark.parametrize("data", NOT_ARTIFACTS)
def test_non_artifacts_are_refused_and_change_nothing(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path, data: bytes
) -> None:
    before = db_dump(db_path)
    with pytest.raises(ArtifactError):
        service.submit(submission(operator, 1, clock, artifact=data))
    assert db_dump(db_path) == before
    # The refusal leaves epoch 1 free for a real artifact.
    assert service.submit(submission(operator, 1, clock)).log_index == 0


def test_evidence_must_be_what_the_artifact_names(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    before = db_dump(db_path)
    names_a = artifact_for(1, evidence=b"evidence A")
    with pytest.raises(DigestMismatchError, match="SHA-256 of the submitted evidence"):
        service.submit(submission(operator, 1, clock, artifact=names_a, evidence=b"evidence B"))
    with pytest.raises(DigestMismatchError, match="none was submitted"):
        service.submit(submission(operator, 1, clock, artifact=names_a))
    names_none = artifact_for(1)
    with pytest.raises(DigestMismatchError):
        service.submit(submission(operator, 1, clock, artifact=names_none, evidence=b"evidence"))
    assert db_dump(db_path) == before
    receipt = service.submit(
        submission(operator, 1, clock, artifact=names_a, evidence=b"evidence A")
    )
    assert receipt.log_index == 0


def test_http_answers_422_for_a_non_artifact(
    client: httpx.Client, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    before = db_dump(db_path)
    body = witness_api.submission_to_json(
        submission(operator, 1, clock, artifact=b"not an artifact")
    )
    response = client.post(f"/namespaces/{NS}/submissions", json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "ArtifactError"
    evidence = submission(operator, 1, clock, artifact=artifact_for(1), evidence=b"unnamed")
    response = client.post(
        f"/namespaces/{NS}/submissions", json=witness_api.submission_to_json(evidence)
    )
    assert (response.status_code, response.json()["error"]) == (422, "DigestMismatchError")
    assert db_dump(db_path) == before
