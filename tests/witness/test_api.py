"""Strict JSON parsing of submissions: random input never escapes the typed errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from witness_helpers import NS, Clock, artifact_for, fixed_signer

from bkv.errors import CodecError, SubmissionSignatureError
from bkv.protocol import submission as submission_format
from bkv.protocol import witness_api

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_hexes = st.binary(max_size=80).map(bytes.hex)


def _good() -> dict[str, Any]:
    sub = submission_format.sign_submission(
        fixed_signer(0x0A), NS, 1, artifact_for(1), submitted_at_ms=Clock().now
    )
    return witness_api.submission_to_json(sub)


def test_round_trip() -> None:
    good = _good()
    parsed = witness_api.submission_from_json(NS, json.dumps(good).encode())
    assert witness_api.submission_to_json(parsed) == good


@given(st.binary(max_size=600))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        witness_api.submission_from_json(NS, data)
    except CodecError:
        return


@given(
    st.sampled_from(sorted(_good())),
    _json_values | _hexes,
)
def test_any_field_value_is_parsed_or_refused_with_a_typed_error(field: str, value: object) -> None:
    good = _good()
    body = good | {field: value}
    try:
        submission = witness_api.submission_from_json(NS, json.dumps(body).encode())
    except CodecError:
        return
    operator_key = fixed_signer(0x0A).public_key()
    if witness_api.submission_to_json(submission) == good or field == "artifact":
        # The same submission, or another artifact: the artifact is signed through its
        # digest, which the witness checks separately (DigestMismatchError).
        submission_format.verify_submission_signature(submission, operator_key)
        return
    # Any other change is to a signed field: the operator's signature no longer holds.
    with pytest.raises(SubmissionSignatureError):
        submission_format.verify_submission_signature(submission, operator_key)
