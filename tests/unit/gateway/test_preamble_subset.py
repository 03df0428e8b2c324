"""The preamble's subset extension (a split's labels for the remote gateway): round trips, hostile bytes,
old and new peers, the gateway's admission by subset and the egress's answer to an old gateway."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.errors import LocalProtocolError, PolicyError, RemoteProtocolError
from federation.core.policy.codec import from_document
from federation.core.records import Endpoint, EndpointPort, Gateway, ServiceExport, ServicePort, check_labels
from federation.core.view import MeshView
from gateway.admission import admit
from gateway.balancing import ViaGateway
from gateway.preamble import EXT_SUBSET, NEED_DATA, Preamble, Request, Response, Role, Status
from gateway.subsets import SubsetSupport

names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
keys = st.from_regex(r"\A([a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?)?/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?\Z")
values = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?\Z")
subsets = st.dictionaries(keys, values, max_size=6).map(lambda d: tuple(sorted(d.items())))
V1_REQUEST = b"\x01\x01\x00\x0f\x04shop\x03web\x00\x03tcp\x00"
"""shop/web:tcp, any endpoint, as every egress before the extension sent it (and a new one still does)."""


def _decode(data: bytes) -> object:
    p = Preamble(Role.SERVER)
    p.receive_data(data)
    return p.next_event()


@settings(deadline=None, max_examples=40)  # shared CI machines: label keys are slow to generate
@given(names, names, subsets, st.one_of(st.none(), names))
def test_a_request_with_a_subset_round_trips(ns: str, svc: str, subset: tuple[tuple[str, str], ...],
                                             hostname: str | None) -> None:
    req = Request(ns, svc, "tcp", hostname, subset)
    assert _decode(Preamble(Role.CLIENT).send(req)) == req


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.binary(max_size=300), st.sampled_from([EXT_SUBSET, 0, 7, 255]))
def test_hostile_extension_bytes_only_raise_remote_protocol_error(value: bytes, tag: int) -> None:
    body = V1_REQUEST[4:] + bytes((tag, min(len(value), 255))) + value[:255]
    try:
        event = _decode(b"\x01\x01" + len(body).to_bytes(2, "big") + body)
    except RemoteProtocolError:
        return
    assert isinstance(event, Request)
    check_labels("subset", event.subset)  # whatever decodes is a valid selector
    assert event.subset == () or tag == EXT_SUBSET


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.binary(max_size=500))
def test_arbitrary_bytes_after_a_request_only_raise_remote_protocol_error(tail: bytes) -> None:
    body = (V1_REQUEST[4:] + tail)[:512]
    try:
        _decode(b"\x01\x01" + len(body).to_bytes(2, "big") + body)
    except RemoteProtocolError:
        pass


def test_an_old_egress_is_understood_and_a_new_one_sends_old_bytes_without_a_subset() -> None:
    assert _decode(V1_REQUEST) == Request("shop", "web", "tcp")
    assert Preamble(Role.CLIENT).send(Request("shop", "web", "tcp")) == V1_REQUEST
    wire = Preamble(Role.CLIENT).send(Request("shop", "web", "tcp", subset=(("version", "v2"),)))
    assert wire[4:] == V1_REQUEST[4:] + b"\x01\x0aversion=v2"


def test_unknown_extensions_are_skipped_and_a_repeated_one_is_refused() -> None:
    def wire(ext: bytes) -> bytes:
        body = V1_REQUEST[4:] + ext
        return b"\x01\x01" + len(body).to_bytes(2, "big") + body
    assert _decode(wire(b"\x09\x03abc\x01\x04a=b1")) == Request("shop", "web", "tcp", subset=(("a", "b1"),))
    for ext, why in [(b"\x01\x04a=b1\x01\x04a=b1", "twice"), (b"\x01\x00", "not k=v"), (b"\x01\x03a=,", "not k=v"),
                     (b"\x01\x07b=1,a=2", "sorted"), (b"\x01\x03A=\xff", "subset"), (b"\x01\x05a", "ends inside")]:
        with pytest.raises(RemoteProtocolError, match=why):
            _decode(wire(ext))


def test_an_invalid_or_oversized_subset_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError, match="sorted"):
        Preamble(Role.CLIENT).send(Request("shop", "web", "tcp", subset=(("b", "1"), ("a", "2"))))
    long = tuple((f"k{i:02d}.example.com/name-{i:02d}", "v" * 20) for i in range(8))
    with pytest.raises(LocalProtocolError, match="over 255"):
        Preamble(Role.CLIENT).send(Request("shop", "web", "tcp", subset=long))


def _view_with(labels: list[tuple[tuple[str, str], ...]]) -> MeshView:
    eps = tuple(Endpoint(addresses=(f"10.0.0.{i + 1}",), ports=(EndpointPort("tcp", 80),), labels=lb)
                for i, lb in enumerate(labels))
    export = ServiceExport(site="east", namespace="shop", name="web", ports=(ServicePort("tcp", 80),), endpoints=eps)
    return MeshView(sites={}, exports={("east", "shop", "web"): export})


def test_the_gateway_admits_only_endpoints_of_the_subset_and_says_when_there_is_none() -> None:
    v = _view_with([(("version", "v1"),), (("track", "x"), ("version", "v2")), ()])
    got = admit(v, "east", Request("shop", "web", "tcp", subset=(("version", "v2"),)))
    assert got.status is Status.OK
    assert [t.address for t in got.targets] == ["10.0.0.2"]
    assert len(admit(v, "east", Request("shop", "web", "tcp")).targets) == 3
    none = admit(v, "east", Request("shop", "web", "tcp", subset=(("version", "v3"),)))
    assert none.status is Status.NO_HEALTHY_ENDPOINT
    assert none.reason == "shop/web has no ready endpoint of subset version=v3"


def test_an_old_gateways_refusal_makes_the_egress_resend_without_the_subset_and_remember_it() -> None:
    support = SubsetSupport(recheck=60.0)
    route = ViaGateway("east", Gateway("gw", "127.0.0.1", 15443), (("version", "v2"),))
    req = support.request(("shop", "web", "tcp"), route, 0.0)
    assert req.subset == (("version", "v2"),)
    assert support.retry(req, Response(Status.NO_HEALTHY_ENDPOINT), route, 0.0) is None  # a new gateway's answer
    old = Response(Status.BAD_REQUEST, "preamble has 12 bytes after its last field")
    assert support.retry(req, old, route, 1.0) == Request("shop", "web", "tcp")
    assert support.request(("shop", "web", "tcp"), route, 30.0).subset == ()  # no second refusal to pay
    assert support.request(("shop", "web", "tcp"), route, 62.0).subset == (("version", "v2"),)  # upgraded?
    assert support.retry(Request("shop", "web", "tcp"), old, route, 70.0) is None  # a real bad request


def test_need_data_until_the_extension_is_complete() -> None:
    wire = Preamble(Role.CLIENT).send(Request("shop", "web", "tcp", subset=(("version", "v2"),)))
    p = Preamble(Role.SERVER)
    p.receive_data(wire[:-1])
    assert p.next_event() is NEED_DATA
    p.receive_data(wire[-1:])
    assert isinstance(p.next_event(), Request)


def test_a_split_whose_labels_do_not_fit_a_stream_request_is_refused_at_write() -> None:
    labels = {f"k{i:02d}.example.com/name-{i:02d}": "v" * 20 for i in range(8)}
    doc = {"apiVersion": "meshfed.io/v1alpha1", "kind": "TrafficPolicy", "metadata": {"namespace": "shop", "name": "web"},
           "spec": {"split": [{"weight": 50, "labels": labels}, {"weight": 50, "labels": {"version": "v1"}}]}}
    with pytest.raises(PolicyError, match=r"spec\.split\[0\]\.labels.*over 255 bytes"):
        from_document(doc)
