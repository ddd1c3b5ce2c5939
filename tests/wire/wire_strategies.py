"""Hypothesis strategies for wire messages, drawn from their declared schemas.

It lives with the tests, not in ``bkv.wire``: hypothesis imports I/O modules that
the sans-IO core must not pull in (tests/test_architecture.py). Usage::

    from hypothesis import given
    from bkv.wire import decode, encode
    from wire_strategies import messages

    @given(messages(StoreRequest))
    def test_store_request_round_trip(msg: StoreRequest) -> None:
        data = encode(msg)
        assert decode(StoreRequest, data) == msg
        assert encode(decode(StoreRequest, data)) == data

Strategies follow the declared field kinds and limits. A class whose
``__post_init__`` rejects some values needs its own strategy (or ``.filter``).
"""

from __future__ import annotations

import unicodedata
from typing import Any, TypeVar

from hypothesis import strategies as st

from bkv.wire._fields import (
    Bool,
    Bytes,
    EnumOf,
    Fixed,
    ListOf,
    OptionalOf,
    Spec,
    Text,
    UInt,
)
from bkv.wire._message import Nested, OneOf, schema_of

T = TypeVar("T")

#: Lists are drawn with at most this many items (or max_count if smaller), to keep tests fast.
MAX_DRAWN_ITEMS = 4
#: Byte strings and text are drawn up to this many bytes (or max_len if smaller).
MAX_DRAWN_BYTES = 512


def _fit_bytes(text: str, max_len: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form has at most ``max_len`` bytes."""
    return text.encode("utf-8")[:max_len].decode("utf-8", "ignore")


def _text(spec: Text) -> st.SearchStrategy[str]:
    chars = st.characters(codec="utf-8")
    most = max(spec.min_len, min(spec.max_len, MAX_DRAWN_BYTES))
    strategy = st.text(chars, min_size=spec.min_len, max_size=most)
    # Cut to the byte limit instead of filtering: far fewer rejected draws.
    strategy = strategy.map(lambda s: _fit_bytes(s, spec.max_len))
    if spec.nfc:
        strategy = strategy.map(lambda s: unicodedata.normalize("NFC", s))
    return strategy.filter(lambda s: spec.min_len <= len(s.encode("utf-8")) <= spec.max_len)


def values(spec: Spec) -> st.SearchStrategy[Any]:
    """Values that the field kind ``spec`` can encode."""
    if isinstance(spec, UInt):
        return st.integers(0, (1 << (8 * spec.width)) - 1)
    if isinstance(spec, Fixed):
        return st.binary(min_size=spec.length, max_size=spec.length)
    if isinstance(spec, Bytes):
        most = max(spec.min_len, min(spec.max_len, MAX_DRAWN_BYTES))
        return st.binary(min_size=spec.min_len, max_size=most)
    if isinstance(spec, Text):
        return _text(spec)
    if isinstance(spec, Bool):
        return st.booleans()
    if isinstance(spec, EnumOf):
        return st.sampled_from(list(spec.enum_type))
    if isinstance(spec, ListOf) and spec.element is not None:
        most = max(spec.min_count, min(spec.max_count, MAX_DRAWN_ITEMS))
        items = st.lists(values(spec.element), min_size=spec.min_count, max_size=most)
        return items.map(tuple)
    if isinstance(spec, OptionalOf):
        return st.none() | values(spec.inner)
    if isinstance(spec, Nested):
        return messages(spec.message_type)
    if isinstance(spec, OneOf):
        return st.one_of([messages(cls) for cls in spec.message_types])
    raise TypeError(f"no strategy for field kind {spec!r}")


def messages(cls: type[T]) -> st.SearchStrategy[T]:
    """Instances of the message class ``cls`` with every field drawn within its limits."""
    schema = schema_of(cls)
    return st.builds(cls, *[values(spec) for _, spec in schema.fields])
