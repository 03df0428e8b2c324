"""Hostile names: a trailing newline or a NUL never passes a name check (`$` would let "abc\\n" through).

Every validator of names, keys, SPIFFE IDs, sites, namespaces, labels, durations and join tokens is fed
the valid name with "\\n" and "\\x00" appended (and a control character inside); each refuses with a
reason naming the field. Hypothesis then checks that no registry key parsed from etcd holds a control
character.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core import records
from federation.core.errors import MeshfedError, PolicyError, RecordError, RemoteProtocolError
from federation.core.keys import Keys
from federation.core.policy import access
from federation.core.policy.units import parse_duration
from federation.core.settings import dns_label, host_port
from federation.core.workloads import is_workload
from federation.pki import issuing, joining
from federation.pki.verifying import PeerRejected, parse_spiffe_id
from gateway.healthquery import decode_query
from gateway.wire import Reader

HOSTILE = ("\n", "\x00", "\r\n", "\t")
KEYS = Keys()


def hostile(name: str) -> list[str]:
    """`name` with each control character appended, and one put inside."""
    return [name + c for c in HOSTILE] + [name[:1] + "\x00" + name[1:]]


def refused(check: Callable[[str], Any], value: str, error: type[BaseException], match: str) -> None:
    with pytest.raises(error, match=match):
        check(value)


@pytest.mark.parametrize("value", hostile("east"))
def test_a_site_name_with_a_control_character_is_refused(value: str) -> None:
    refused(lambda v: records.check_label("site", v), value, RecordError, "site .* is not")
    refused(lambda v: issuing.check_label("site", v), value, issuing.PkiError, "site .* is not a DNS label")
    assert dns_label(value) is not None
    assert "is not a DNS label" in str(dns_label(value))
    refused(KEYS.parse, f"/meshfed/v1/sites/{value}", RecordError, "site")
    assert records.check_label("site", "east") is None  # the name itself is fine


@pytest.mark.parametrize("value", hostile("web"))
def test_a_service_name_and_namespace_with_a_control_character_are_refused(value: str) -> None:
    refused(KEYS.parse, f"/meshfed/v1/sites/east/services/shop/{value}", RecordError, "service name")
    refused(KEYS.parse, f"/meshfed/v1/sites/east/services/{value}/web", RecordError, "namespace")
    refused(KEYS.parse, f"/meshfed/v1/mesh/vips/services/shop/{value}", RecordError, "service name")
    refused(lambda v: access.parse_key(KEYS, f"/meshfed/v1/mesh/policies/access/shop/{v}"), value,
            RecordError, "service name")
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy",
           "metadata": {"namespace": value, "name": "web"}, "spec": {"rules": []}}
    refused(access.from_document, doc, PolicyError, "namespace")  # type: ignore[arg-type]
    assert not is_workload(f"{value}/web")
    assert not is_workload(f"shop/{value}")


@pytest.mark.parametrize("value", ["3\n", "3\x00", "\u0663"])  # U+0663 is a digit to str.isdigit
def test_a_chunk_index_that_is_not_ascii_digits_is_refused(value: str) -> None:
    refused(KEYS.parse, f"/meshfed/v1/sites/east/services/shop/web/endpoints/{value}", RecordError, "chunk index")


@pytest.mark.parametrize("value", hostile("tier"))
def test_a_label_key_and_value_with_a_control_character_are_refused(value: str) -> None:
    refused(lambda v: records.check_label_key("endpoint label", v), value, RecordError, "endpoint label key")
    refused(lambda v: records.check_label_value("endpoint label", v), value, RecordError, "endpoint label value")
    refused(lambda v: records.check_label_key("x", f"example.com/{v}"), value, RecordError, "x key")
    refused(lambda v: records.check_label_key("x", f"exa{v}mple.com/tier"), value, RecordError, "prefix")


@pytest.mark.parametrize("value", ["10.0.0.1\n", "fe80::1%eth0\n", "fe80::1%\x00", "fd00::1%eth0"])
def test_an_address_with_a_control_character_or_a_zone_is_refused(value: str) -> None:
    refused(lambda v: records.check_ip("address", v), value, RecordError, "is not an IP address")
    refused(KEYS.parse, f"/meshfed/v1/mesh/vips/addresses/{value}", RecordError, "is not an IP address")


@pytest.mark.parametrize("uri", [
    "spiffe://mesh.example/site/east/gateway/gw\n",
    "spiffe://mesh.example/site/east/gateway/gw\x00",
    "spiffe://mesh.example/site/east\n/gateway/gw",
])
def test_a_spiffe_id_with_a_control_character_in_its_path_is_refused(uri: str) -> None:
    refused(parse_spiffe_id, uri, PeerRejected, "has an invalid path segment")


@pytest.mark.parametrize("td", hostile("mesh.example"))
def test_a_trust_domain_with_a_control_character_is_refused(td: str) -> None:
    refused(parse_spiffe_id, f"spiffe://{td}/site/east", PeerRejected, "has an invalid trust domain")
    refused(issuing.check_trust_domain, td, issuing.PkiError, "is not a lowercase DNS-like name")


@pytest.mark.parametrize("uri", ["spiffe://mesh.example/site/east/*\n", "spiffe://mesh.example/site/\x00east",
                                 "spiffe://mesh.example/site/east gw"])
def test_a_policy_identity_with_a_control_character_is_refused(uri: str) -> None:
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"namespace": "shop", "name": "web"},
           "spec": {"rules": [{"name": "r", "action": "Allow", "from": {"identities": [uri]}}]}}
    with pytest.raises(PolicyError, match="is not a SPIFFE ID"):
        access.from_document(doc)


@pytest.mark.parametrize("value", ["5s\n", "5s\x00", "\u0665s", "1m\n30s"])  # U+0665 is a digit to \d
def test_a_duration_with_a_control_character_or_a_foreign_digit_is_refused(value: str) -> None:
    refused(lambda v: parse_duration("timeout", v), value, PolicyError, "is not a duration")


@pytest.mark.parametrize("value", ["127.0.0.1:2379\n", "127.0.0.1:\u0662379"])
def test_a_host_port_with_a_control_character_or_a_foreign_digit_is_refused(value: str) -> None:
    assert host_port(value) is not None


# ---------------------------------------------------------------- join tokens


def forged_token(**fields: Any) -> str:
    """A token as `join-token create` prints it, with some fields replaced."""
    obj = {"id": "0123456789abcdef", "secret": "A" * 43, "site": "vm1", "exp": 2e9, "url": "https://127.0.0.1:1",
           "ca": "ab" * 32, **fields}
    return joining.PREFIX + base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def test_the_forged_token_shape_is_valid() -> None:
    assert joining.decode_token(forged_token()).site == "vm1"


@pytest.mark.parametrize(("fields", "reason"), [
    ({"site": "vm1\n"}, "site 'vm1\\\\n' is not a DNS label"),
    ({"site": "vm1\x00"}, "site 'vm1\\\\x00' is not a DNS label"),
    ({"id": "0123456789abcdef\n"}, "is not 16 hex digits"),
    ({"secret": "A" * 43 + "\n"}, "secret is not 43 URL-safe base64 characters"),
    ({"ca": "ab" * 32 + "\n"}, "root fingerprint is not 64 hex digits"),
    ({"url": "https://127.0.0.1:1\n"}, "names no https:// endpoint"),
])
def test_a_join_token_with_a_control_character_is_refused(fields: dict[str, str], reason: str) -> None:
    refused(joining.decode_token, forged_token(**fields), joining.JoinRefused, reason)


@pytest.mark.parametrize(("token_id", "site"), [("0123456789abcdef\n", "vm1"), ("0123456789abcdef", "vm1\n"),
                                                ("0123456789abcdef", "vm1\x00"), ("0123456789abcde\x00", "vm1")])
def test_a_join_request_with_a_control_character_is_refused(token_id: str, site: str) -> None:
    with pytest.raises(joining.JoinRefused, match="is not"):
        joining.check_request(token_id, site)
    joining.check_request("0123456789abcdef", "vm1")


# ---------------------------------------------------------------- remote bytes


@pytest.mark.parametrize("name", [b"web\n", b"web\x00", b"w\neb"])
def test_a_health_query_for_a_name_with_a_control_character_is_refused(name: bytes) -> None:
    body = (7).to_bytes(8, "big") + (1).to_bytes(2, "big") + b"\x04shop" + bytes((len(name),)) + name
    with pytest.raises(RemoteProtocolError, match="is not a valid name"):
        decode_query(Reader(body))


_KEY_TEXT = st.text(st.sampled_from("abz09-./\n\x00\r\t%:\u0663"), max_size=24)


@given(st.sampled_from(["/meshfed/v1/sites/", "/meshfed/v1/sites/east/services/", "/meshfed/v1/mesh/vips/",
                        "/meshfed/v1/sites/east/services/shop/web/endpoints/", "/meshfed/v1/mesh/vips/addresses/"]),
       _KEY_TEXT)
def test_no_key_parsed_from_the_registry_holds_a_control_character(head: str, tail: str) -> None:
    """A raw etcd writer picks any key: it parses to a record key of printable ASCII only, or is refused."""
    try:
        parsed = KEYS.parse(head + tail)
    except MeshfedError:
        return
    if parsed is None:
        return
    for value in (getattr(parsed, f) for f in parsed.__slots__):  # type: ignore[union-attr]
        assert not isinstance(value, str) or (value.isascii() and value.isprintable()), (head + tail, parsed)
