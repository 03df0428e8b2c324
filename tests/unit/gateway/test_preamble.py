"""The tunnel preamble codec and the stream framing: round trips and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.errors import LocalProtocolError, RemoteProtocolError
from gateway.framing import ABORT_FRAME, END_FRAME, MAX_FRAME, Deframer, header
from gateway.preamble import MAX_BODY, NEED_DATA, Preamble, Probe, ProbeAnswer, Request, Response, Role, Status

labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
port_names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?\Z")
service_accounts = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?(\.[a-z0-9]{1,10})?\Z")
workloads = st.one_of(st.none(), st.builds(lambda ns, sa: f"{ns}/{sa}", labels, service_accounts))
requests = st.builds(
    Request, labels, labels, st.one_of(port_names, st.integers(1, 65535)), st.one_of(st.none(), labels),
    workload=workloads
)
responses = st.builds(Response, st.sampled_from(Status), st.text(max_size=40))


def _decode(role: Role, data: bytes, chunk: int) -> object:
    p = Preamble(role)
    for i in range(0, len(data), chunk):
        assert p.next_event() is NEED_DATA
        p.receive_data(data[i:i + chunk])
    return p.next_event()


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(requests, st.integers(1, 8))
def test_request_round_trip_in_any_chunking(req: Request, chunk: int) -> None:
    wire = Preamble(Role.CLIENT).send(req)
    assert _decode(Role.SERVER, wire, chunk) == req


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(responses)
def test_response_round_trip(resp: Response) -> None:
    wire = Preamble(Role.SERVER).send(resp)
    assert _decode(Role.CLIENT, wire, 3) == resp  # status and reason


def test_a_long_reason_is_cut_at_255_bytes_on_a_character_boundary() -> None:
    wire = Preamble(Role.SERVER).send(Response(Status.FORBIDDEN, "\u00e9" * 200))  # 400 bytes of UTF-8
    assert _decode(Role.CLIENT, wire, 7) == Response(Status.FORBIDDEN, "\u00e9" * 127)


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_remote_protocol_error(data: bytes) -> None:
    for role in Role:
        p = Preamble(role)
        p.receive_data(data)
        try:
            p.next_event()
        except RemoteProtocolError:
            pass


def test_bytes_after_the_preamble_are_kept_for_the_stream() -> None:
    p = Preamble(Role.SERVER)
    p.receive_data(Preamble(Role.CLIENT).send(Request("ns", "svc", "http")) + b"GET /")
    assert p.next_event() == Request("ns", "svc", "http")
    assert p.trailing_data == b"GET /"


def test_a_length_over_the_limit_is_refused_before_the_body_arrives() -> None:
    p = Preamble(Role.SERVER)
    p.receive_data(bytes((1, 1)) + (MAX_BODY + 1).to_bytes(2, "big"))
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        p.next_event()


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x16\x03\x01\x02\x00", "version"),
    (b"GET / HTTP/1.1\r\n", "version"),
    (b"\x01\x02\x00\x00", "type"),
    (b"\x01\x01\x00\x03\x02ns", "ends inside"),
    (b"\x01\x01\x00\x0b\x02NS\x03svc\x01\x00\x50\x00", "not a valid name"),
    (b"\x01\x01\x00\x0b\x02ns\x03svc\x07\x00\x50\x00", "port kind"),
    (b"\x01\x01\x00\x0b\x02ns\x03svc\x01\x00\x00\x00", "port 0"),
    (b"\x01\x01\x00\x0c\x02ns\x03svc\x01\x00\x50\x00\x00", "ends inside extension"),
    (b"\x01\x01\x00\x0c\x03ns\n\x03svc\x01\x00\x50\x00", "not a valid name"),  # no newline after a label
    (b"\x01\x01\x00\x13\x02ns\x03svc\x01\x00\x50\x00\x02\x04ns/a\x02\x00", "given twice"),
    (b"\x01\x01\x00\x12\x02ns\x03svc\x01\x00\x50\x00\x02\x05ns/A\n", "not namespace/service-account"),
])
def test_malformed_requests_name_their_fault(data: bytes, reason: str) -> None:
    p = Preamble(Role.SERVER)
    p.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=reason):
        p.next_event()


def test_an_unknown_extension_is_skipped_so_later_fields_are_additive() -> None:
    wire = Preamble(Role.CLIENT).send(Request("ns", "svc", 80, None, workload="shop/web"))
    extra = b"\x09\x03abc"  # a type this gateway does not know, after the workload
    p = Preamble(Role.SERVER)
    p.receive_data(wire[:2] + (len(wire) - 4 + len(extra)).to_bytes(2, "big") + wire[4:] + extra + b"data")
    assert p.next_event() == Request("ns", "svc", 80, None, workload="shop/web")
    assert p.trailing_data == b"data"


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.binary(max_size=255))
def test_any_workload_bytes_decode_to_a_valid_workload_or_are_refused_cleanly(value: bytes) -> None:
    body = b"\x02ns\x03svc\x01\x00\x50\x00\x02" + bytes((len(value),)) + value
    p = Preamble(Role.SERVER)
    p.receive_data(b"\x01\x01" + len(body).to_bytes(2, "big") + body)
    try:
        event = p.next_event()
    except RemoteProtocolError as exc:
        causes = [exc.cause]
    else:
        causes = []
    if causes:
        assert causes == ["bad-workload"]
        return
    assert isinstance(event, Request)
    assert event.workload is not None
    ns, sa = event.workload.split("/")
    assert ns
    assert sa
    assert event.workload.isascii()
    assert event.workload == event.workload.strip().lower()


def test_a_role_sends_only_its_own_messages() -> None:
    with pytest.raises(LocalProtocolError):
        Preamble(Role.SERVER).send(Request("ns", "svc", 80))
    with pytest.raises(LocalProtocolError):
        Preamble(Role.CLIENT).send(Response(Status.OK))
    with pytest.raises(LocalProtocolError):
        Preamble(Role.CLIENT).send(Request("NS", "svc", 80))
    with pytest.raises(LocalProtocolError, match="namespace/service-account"):
        Preamble(Role.CLIENT).send(Request("ns", "svc", 80, None, workload="shop/web/x"))


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.binary(max_size=20), st.integers(1, 50))
def test_frames_round_trip_and_keep_what_follows_the_end(chunks: list[bytes], after: bytes, cut: int) -> None:
    wire = b"".join(header(len(c)) + c for c in chunks) + END_FRAME + after
    d = Deframer()
    got = b""
    rest = b""
    for i in range(0, len(wire), cut):
        got += b"".join(bytes(v) for v in d.feed(wire[i:i + cut]))
        if d.ended:
            rest = d.rest() + wire[i + cut:]
            break
    assert d.ended
    assert got == b"".join(chunks)
    assert rest == after


def test_abort_and_oversized_frames() -> None:
    d = Deframer()
    assert [bytes(v) for v in d.feed(header(2) + b"hi" + ABORT_FRAME)] == [b"hi"]
    assert d.aborted
    with pytest.raises(RemoteProtocolError):
        Deframer().feed(header(MAX_FRAME + 1))


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.binary(max_size=200))
def test_arbitrary_tunnel_bytes_only_raise_remote_protocol_error(data: bytes) -> None:
    try:
        Deframer().feed(data)
    except RemoteProtocolError:
        pass


@settings(deadline=None)  # shared CI machines: a slow example is not a failure
@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), labels, st.integers(1, 8))
def test_probe_and_its_answer_round_trip(nonce: int, time_ms: int, site: str, chunk: int) -> None:
    assert _decode(Role.SERVER, Preamble(Role.CLIENT).send(Probe(nonce)), chunk) == Probe(nonce)
    answer = ProbeAnswer(nonce, time_ms, site)
    assert _decode(Role.CLIENT, Preamble(Role.SERVER).send(answer), chunk) == answer


def test_a_probe_is_sent_by_clients_only_and_answered_by_servers_only() -> None:
    with pytest.raises(LocalProtocolError):
        Preamble(Role.SERVER).send(Probe(1))
    with pytest.raises(LocalProtocolError):
        Preamble(Role.CLIENT).send(ProbeAnswer(1, 2, "east"))
    with pytest.raises(LocalProtocolError):
        Preamble(Role.SERVER).send(ProbeAnswer(1, 2, "Not A Label"))
    # A client does not take a probe from a server, nor a server an answer from a client.
    p = Preamble(Role.CLIENT)
    p.receive_data(b"\x01\x03\x00\x08" + bytes(8))
    with pytest.raises(RemoteProtocolError):
        p.next_event()
    p = Preamble(Role.SERVER)
    p.receive_data(b"\x01\x04\x00\x11" + bytes(16) + b"\x00")
    with pytest.raises(RemoteProtocolError):
        p.next_event()


def test_the_largest_subset_and_workload_fit_one_request_and_round_trip() -> None:
    subset = (("a" * 60, "b" * 60), ("c" * 60, "d" * 60))  # 243 bytes as k=v,k=v
    workload = "n" * 63 + "/" + ".".join(["s" * 63, "t" * 63, "u" * 63])  # 255 bytes
    req = Request("x" * 63, "y" * 63, "z" * 15, "h" * 63, subset, workload)
    assert _decode(Role.SERVER, Preamble(Role.CLIENT).send(req), 64) == req
