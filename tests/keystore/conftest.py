"""Every keystore test closes the PKCS#11 keys it opened.

python-pkcs11 keeps one library per process and :mod:`bkv.keystore.pkcs11`
refuses to switch token configurations while keys are open, so a leaked key
makes unrelated later tests fail far from the cause. This check fails the
leaking test itself instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bkv.keystore.pkcs11 import open_token_sessions


@pytest.fixture(autouse=True)
def _no_leaked_token_sessions() -> Iterator[None]:
    assert open_token_sessions() == 0, "an earlier test left PKCS#11 keys open"
    yield
    assert open_token_sessions() == 0, "this test left PKCS#11 keys open"
