"""The listings NamespaceInfo advertises (audits_uri, reports_uri), and u64 epochs in paths."""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from witness_helpers import NS, Clock, artifact_for, fixed_signer, running_server, submission

from bkv.errors import CodecError, StorageError
from bkv.keystore import SoftwareSigner
from bkv.protocol import plexi, witness_api
from bkv.protocol.countersign import countersign
from bkv.protocol.submission import MAX_EVIDENCE_BYTES
from bkv.witness.service import WitnessService

U64_MAX = 2**64 - 1
WITNESS_KEY = plexi.WitnessKey(fixed_signer(0x51).public_key())


@pytest.fixture
def client(service: WitnessService) -> Iterator[httpx.Client]:
    with running_server(service) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


def _signed(service: WitnessService, operator: SoftwareSigner, clock: Clock, count: int) -> None:
    for epoch in range(1, count + 1):
        service.submit(submission(operator, epoch, clock))
        clock.advance(10)


def _all_pages(client: httpx.Client, uri: str, kind: str) -> list[dict[str, Any]]:
    """Follow ``next`` from ``uri`` (bounded: at most 10 pages)."""
    items: list[dict[str, Any]] = []
    pages = 0
    next_uri: str | None = uri
    while next_uri is not None:
        pages += 1
        assert pages <= 10, "the listing never ends"
        response = client.get(next_uri)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["namespace"] == NS
        items += page[kind]
        next_uri = page["next"]
    return items


def test_advertised_audits_uri_lists_every_signed_epoch(
    client: httpx.Client, service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    _signed(service, operator, clock, 5)
    info = client.get(f"/namespaces/{NS}").json()
    first = client.get(info["audits_uri"], params={"limit": 2}).json()
    assert [a["epoch"] for a in first["audits"]] == [1, 2]
    assert first["next"] == f"/namespaces/{NS}/audits?start=3&limit=2"
    audits = _all_pages(client, f"{info['audits_uri']}?limit=2", "audits")
    assert [a["epoch"] for a in audits] == [1, 2, 3, 4, 5]
    for epoch, audit in enumerate(audits, start=1):
        message = plexi.verify_statement(
            bytes.fromhex(audit["serialized_message"]),
            bytes.fromhex(audit["signature"]),
            audit["key_id"],
            [WITNESS_KEY],
        )
        assert (message.namespace, message.epoch) == (NS, epoch)
        assert audit["digest"] == hashlib.sha256(artifact_for(epoch)).hexdigest()
        single = client.get(audit["audit_uri"]).json()
        assert single["serialized_message"] == audit["serialized_message"]
    # One page by default (up to the maximum), and a page from the middle.
    assert [a["epoch"] for a in client.get(info["audits_uri"]).json()["audits"]] == [1, 2, 3, 4, 5]
    middle = client.get(info["audits_uri"], params={"start": 4}).json()
    assert ([a["epoch"] for a in middle["audits"]], middle["next"]) == ([4, 5], None)


def test_advertised_reports_uri_lists_one_report_per_epoch(
    client: httpx.Client, service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    _signed(service, operator, clock, 3)
    info = client.get(f"/namespaces/{NS}").json()
    reports = _all_pages(client, f"{info['reports_uri']}?limit=1", "reports")
    digests = [hashlib.sha256(artifact_for(epoch)).hexdigest() for epoch in (1, 2, 3)]
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    assert [r["end_hash"] for r in reports] == digests
    assert [r["start_hash"] for r in reports] == ["", *digests[:2]]
    # The newest report is the one last-verified-epoch answers.
    assert reports[-1] == client.get(f"/namespaces/{NS}/last-verified-epoch").json()
    assert len({r["job_id"] for r in reports}) == 3


def test_listings_of_a_namespace_without_epochs_are_empty(client: httpx.Client) -> None:
    for kind in ("audits", "reports"):
        page = client.get(f"/namespaces/{NS}/{kind}").json()
        assert (page[kind], page["next"]) == ([], None)


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": str(witness_api.MAX_LISTED_EPOCHS + 1)},
        {"limit": "01"},
        {"start": "0"},
        {"start": "-1"},
        {"start": str(U64_MAX + 1)},
        {"start": "1", "epoch": "2"},
    ],
)
def test_listing_queries_are_bounded_and_canonical(
    client: httpx.Client, query: dict[str, str]
) -> None:
    for kind in ("audits", "reports"):
        response = client.get(f"/namespaces/{NS}/{kind}", params=query)
        assert (response.status_code, response.json()["error"]) == (400, "CodecError"), query


def test_listings_of_an_unknown_namespace_are_404(client: httpx.Client) -> None:
    for kind in ("audits", "reports"):
        response = client.get(f"/namespaces/other.ns/{kind}")
        assert (response.status_code, response.json()["error"]) == (404, "UnknownNamespaceError")


def test_every_u64_epoch_is_an_epoch(
    client: httpx.Client, service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    # Plexi epochs are u64: above 2**63 - 1 an epoch is well-formed, just never signed.
    _signed(service, operator, clock, 1)
    signature = bytes.fromhex(client.get(f"/namespaces/{NS}/audits/1").json()["signature"])
    body = witness_api.countersignature_to_json(countersign(operator, signature))
    for epoch in (2**63, U64_MAX, 2**63 - 1):
        for path in (f"/audits/{epoch}", f"/audits/{epoch}/artifact", f"/audits/{epoch}/evidence"):
            response = client.get(f"/namespaces/{NS}{path}")
            assert (response.status_code, response.json()["error"]) == (404, "NotFound"), path
        posted = client.post(f"/namespaces/{NS}/audits/{epoch}/countersignature", json=body)
        assert (posted.status_code, posted.json()["error"]) == (404, "UnknownEpochError")
    for bad in (str(U64_MAX + 1), "9" * 21, "01", "+1", "\u0661"):
        response = client.get(f"/namespaces/{NS}/audits/{bad}")
        assert (response.status_code, response.json()["error"]) == (400, "CodecError"), bad


def test_a_listing_may_start_at_any_u64_epoch(
    client: httpx.Client, service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    _signed(service, operator, clock, 1)
    for epoch in (2**63 - 1, 2**63, U64_MAX):
        for kind in ("audits", "reports"):
            page = client.get(f"/namespaces/{NS}/{kind}", params={"start": epoch}).json()
            assert (page[kind], page["next"]) == ([], None)


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("1", 1), ("9223372036854775808", 2**63), (str(U64_MAX), U64_MAX)]
)
def test_parse_epoch_accepts_the_u64_range(text: str, value: int) -> None:
    assert witness_api.parse_epoch(text) == value


@pytest.mark.parametrize("text", ["", "-1", "+1", "01", " 1", "1 ", "1.0", "x", "\u0661", "\u00b9"])
def test_parse_epoch_refuses_non_canonical_text(text: str) -> None:
    with pytest.raises(CodecError):
        witness_api.parse_epoch(text)


def test_parse_epoch_refuses_beyond_u64() -> None:
    with pytest.raises(CodecError, match="above"):
        witness_api.parse_epoch(str(U64_MAX + 1))


# --- what one listing request may cost the witness ----------------------------------------


def test_a_listing_does_not_load_artifacts_or_evidence(
    client: httpx.Client, service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    # A page lists statements only; reading each epoch's evidence (up to 1 MiB) along with
    # it would let one anonymous GET make the witness hold limit x 1 MiB in memory.
    for epoch in range(1, 7):
        evidence = bytes([epoch]) * MAX_EVIDENCE_BYTES
        service.submit(submission(operator, epoch, clock, evidence=evidence))
        clock.advance(10)
    for kind in ("audits", "reports"):
        tracemalloc.start()
        try:
            response = client.get(f"/namespaces/{NS}/{kind}", params={"start": 2})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.status_code == 200
        assert [item["epoch"] for item in response.json()[kind]] == [2, 3, 4, 5, 6]
        # Five epochs' evidence alone would be 5 MiB; statements are a few hundred bytes.
        assert peak < 2 * MAX_EVIDENCE_BYTES, (kind, peak)


def test_a_repeated_query_parameter_is_refused(client: httpx.Client) -> None:
    # Which of two values counts differs between parsers (first, last, both): refuse both.
    for kind in ("audits", "reports"):
        for query in ("start=1&start=2", "limit=1&limit=100"):
            response = client.get(f"/namespaces/{NS}/{kind}?{query}")
            assert (response.status_code, response.json()["error"]) == (400, "CodecError")


def test_a_closed_store_answers_listings_with_a_typed_503(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    service.submit(submission(operator, 1, clock))
    with running_server(service) as url:
        service.store._conn.set_authorizer(_deny_commit_and_rollback)
        with pytest.raises(StorageError, match="commit failed"):
            service.submit(submission(operator, 2, clock))
        for path in ("audits", "reports", "last-verified-epoch", "audits/1"):
            response = httpx.get(f"{url}/namespaces/{NS}/{path}", timeout=10)
            assert (response.status_code, response.json()["error"]) == (503, "StorageError")


def _deny_commit_and_rollback(action: int, arg1: str | None, *_: object) -> int:
    """SQLite authorizer: the COMMIT and ROLLBACK fail (a full disk, an I/O error)."""
    if action == sqlite3.SQLITE_TRANSACTION and arg1 in ("COMMIT", "ROLLBACK"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK
