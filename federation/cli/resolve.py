"""`meshfed resolve`: one DNS query, printed readably, for operators checking federated names."""

from __future__ import annotations

import argparse
import ipaddress
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename

from federation.dns.settings import split_hostport

EXIT_ANSWER = 0
"""The server answered records of the asked type (for ANY: any record)."""
EXIT_NO_ANSWER = 1
"""The server replied without such records: NXDOMAIN, NODATA (no records of that type), SERVFAIL, REFUSED..."""
EXIT_USAGE = 2
"""Bad arguments: an unparsable name, type or --server."""
EXIT_NO_REPLY = 9
"""No reply from the server (timeout, refused connection): dig's code for the same."""

EPILOG = """\
exit status (for scripts: `meshfed resolve NAME && ...` means NAME has records of that type):
  0  answered with records of the asked type
  1  no such records: NXDOMAIN, NODATA (NOERROR without records of the type), or any other rcode
  2  bad arguments
  9  no reply from the server (as dig)
"""


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `resolve`."""
    p = sub.add_parser("resolve", help="ask a DNS server (default: the local agent) for one name",
                       description="Ask a DNS server for one name and print the answer readably.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="a name (e.g. web.shop.svc.clusterset.local) or an IP address for PTR")
    p.add_argument("--type", default=None, help="record type: A, AAAA, SRV, TXT, PTR, SOA, ANY ... (default A)")
    p.add_argument("--server", default="127.0.0.1:53", help="IP[:port] of the server (default 127.0.0.1:53)")
    p.add_argument("--tcp", action="store_true", help="ask over TCP from the start")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    p.set_defaults(handler=cmd_resolve)


def cmd_resolve(args: argparse.Namespace) -> int:
    """Print the answer; the exit status is one of the EXIT_* codes above (see EPILOG)."""
    try:
        host, port = split_hostport(args.server)
    except ValueError as exc:
        print(f"meshfed resolve: --server {args.server!r}: {exc}")
        return EXIT_USAGE
    try:
        qname, rdtype = _question(args.name, args.type)
    except (ValueError, dns.exception.DNSException) as exc:
        print(f"meshfed resolve: {exc}")
        return EXIT_USAGE
    query = dns.message.make_query(qname, rdtype, use_edns=0, payload=1232)
    started = time.perf_counter()
    transport = "tcp" if args.tcp else "udp"
    try:
        if args.tcp:
            resp = dns.query.tcp(query, host, timeout=args.timeout, port=port)
        else:
            resp = dns.query.udp(query, host, timeout=args.timeout, port=port)
            if resp.flags & dns.flags.TC:
                transport = "udp, truncated, then tcp"
                resp = dns.query.tcp(query, host, timeout=args.timeout, port=port)
    except (dns.exception.DNSException, OSError) as exc:
        print(f";; no reply from {host}:{port}: {exc}")
        return EXIT_NO_REPLY
    print(format_response(resp, f"{host}:{port}", transport, time.perf_counter() - started))
    if resp.rcode() != dns.rcode.NOERROR:
        return EXIT_NO_ANSWER
    if not has_records(resp, rdtype):
        print(f";; NODATA: {qname} exists but has no {dns.rdatatype.to_text(rdtype)} records")
        return EXIT_NO_ANSWER
    return EXIT_ANSWER


def has_records(resp: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> bool:
    """True if the answer section holds records of `rdtype` (any record for ANY); a CNAME alone is NODATA."""
    if rdtype == dns.rdatatype.ANY:
        return any(len(rrset) for rrset in resp.answer)
    return any(rrset.rdtype == rdtype and len(rrset) for rrset in resp.answer)


def format_response(resp: dns.message.Message, server: str, transport: str, seconds: float) -> str:
    """A short, aligned rendering of a response for people."""
    q = resp.question[0] if resp.question else None
    asked = f"{q.name} {dns.rdatatype.to_text(q.rdtype)}" if q is not None else "(no question)"
    flags = dns.flags.to_text(resp.flags).lower()
    lines = [
        f";; {asked} from {server} over {transport}: {dns.rcode.to_text(resp.rcode())} ({flags}), "
        f"{sum(len(r) for r in resp.answer)} answers in {seconds * 1000:.1f} ms"
    ]
    for title, section in (("answer", resp.answer), ("authority", resp.authority), ("additional", resp.additional)):
        rows = [
            (str(rrset.name), str(rrset.ttl), dns.rdatatype.to_text(rrset.rdtype), rd.to_text())
            for rrset in section
            for rd in rrset
        ]
        if not rows:
            continue
        lines.append(f";; {title}")
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines += [f"{n:<{widths[0]}}  {t:>{widths[1]}}  {ty:<{widths[2]}}  {d}" for n, t, ty, d in rows]
    return "\n".join(lines)


def _question(name: str, rdtype: str | None) -> tuple[dns.name.Name, dns.rdatatype.RdataType]:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return dns.name.from_text(name), dns.rdatatype.from_text(rdtype or "A")
    return dns.reversename.from_address(name), dns.rdatatype.from_text(rdtype or "PTR")


def ask_a(name: str, host: str, port: int, timeout: float = 3.0) -> tuple[list[str], str]:
    """The A records a DNS server answers for `name` (sorted) and the rcode's name; OSError (dnspython's
    errors wrapped: this module is the CLI's DNS client) when no reply comes."""
    try:
        reply = dns.query.udp(dns.message.make_query(name, dns.rdatatype.A), host, port=port, timeout=timeout)
    except dns.exception.DNSException as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    got = sorted(r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset)
    return got, dns.rcode.to_text(reply.rcode())
