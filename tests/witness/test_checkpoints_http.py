"""``GET /checkpoints/<size>``: every tree head the witness signed, for auditors."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from witness_helpers import ORIGIN, Clock, fixed_signer, running_server, submission

from bkv.keystore import SoftwareSigner
from bkv.tlog.checkpoint import open_checkpoint
from bkv.tlog.note import Ed25519Verifier
from bkv.witness.service import WitnessService


@pytest.fixture
def client(service: WitnessService) -> Iterator[httpx.Client]:
    with running_server(service) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


def test_historical_checkpoints_are_served(
    client: httpx.Client, service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    receipts = [service.submit(submission(operator, epoch, clock)) for epoch in (1, 2)]
    verifier = Ed25519Verifier(ORIGIN, fixed_signer(0x52).public_key())
    for receipt in receipts:
        response = client.get(f"/checkpoints/{receipt.tree_size}")
        assert response.status_code == 200
        assert response.content == receipt.checkpoint  # the one the receipt carried
        assert "immutable" in response.headers["cache-control"]
        assert open_checkpoint(response.content, ORIGIN, [verifier]).size == receipt.tree_size
    missing = client.get("/checkpoints/3")
    assert (missing.status_code, missing.json()["error"]) == (404, "NotFound")
    for bad in ("01", "x", "-1", "9" * 20):
        assert client.get(f"/checkpoints/{bad}").status_code == 400
