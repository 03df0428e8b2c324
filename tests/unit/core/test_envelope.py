"""The signature envelope: cutting the `sig` field out gives back exactly the canonical JSON that was signed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core import envelope
from federation.core.codec import dump_json
from federation.core.errors import RecordError

SIG = envelope.Signature("ES256", 1_700_000_000_123, "0123456789abcdef0123456789abcdef", b"\x30" * 71)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8).filter(lambda k: k != "sig"),
                                                                 inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("obj", [
    {},
    {"a": 1},
    {"zzz": [1, 2], "a": {"b": "c"}},
    {"schema": 1, "kind": "Site", "name": "east", "signers": ["x"]},
    {"sih": 1, "sif": 2},  # keys on both sides of "sig"
])
def test_split_gives_back_the_signed_body_wherever_sig_sorts(obj: dict[str, Any]) -> None:
    sealed = envelope.seal(dump_json(obj), SIG)
    split = envelope.split(sealed)
    assert split.body == dump_json(obj)
    assert split.signature == SIG


@given(st.dictionaries(st.text(max_size=10).filter(lambda k: k != "sig"), json_values, max_size=6))
def test_split_inverts_seal_for_any_record(obj: dict[str, Any]) -> None:
    split = envelope.split(envelope.seal(dump_json(obj), SIG))
    assert split.body == dump_json(obj)
    assert split.signature == SIG


def test_an_unsigned_record_comes_back_as_it_is() -> None:
    raw = dump_json({"schema": 1, "labels": {"tier": "sig"}, "note": '"sig":{'})
    split = envelope.split(raw)
    assert split.signature is None
    assert split.body == raw


def test_a_malformed_or_doubled_signature_is_refused() -> None:
    sealed = envelope.seal(b'{"a":1}', SIG)
    with pytest.raises(RecordError, match="malformed"):
        envelope.split(sealed.replace(b'"alg":"ES256"', b'"alg":"none!"'))
    doubled = sealed[:-1] + b',"x":' + sealed[sealed.index(b'{"alg"') - 7:]
    with pytest.raises(RecordError, match="more than one"):
        envelope.split(doubled)


def test_the_payload_binds_key_time_and_signer() -> None:
    body = b'{"a":1}'
    base = envelope.payload("/k", "ES256", 1, "00" * 16, body)
    assert base != envelope.payload("/k2", "ES256", 1, "00" * 16, body)
    assert base != envelope.payload("/k", "ES256", 2, "00" * 16, body)
    assert base != envelope.payload("/k", "ES256", 1, "11" * 16, body)


def test_a_record_cannot_be_sealed_twice() -> None:
    with pytest.raises(ValueError, match="already"):
        envelope.seal(envelope.seal(b"{}", SIG), SIG)
