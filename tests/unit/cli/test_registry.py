"""`meshfed registry ls`'s count of signed records per site (what carries a signature, not what verifies)."""

from __future__ import annotations

from federation.agent.reporting import format_report, registry_report
from federation.cli.registry import signed_records
from federation.core import envelope
from federation.core.codec import encode_export, encode_site
from federation.core.keys import Keys
from tests.pkihelp import Mesh, export, view

SIG = envelope.Signature(envelope.ALG, 1, "00" * 16, b"not checked here: only counted" * 2)


def test_each_sites_records_are_counted_signed_or_not_and_other_keys_are_left_out() -> None:
    keys, mesh = Keys(), Mesh()
    east, west = mesh.site("east"), mesh.site("west")
    values = {
        keys.site("east"): envelope.seal(encode_site(east), SIG),
        keys.service("east", "ns", "web"): encode_export(export("east", "ns", "web", 80)),  # stripped, say
        keys.site("west"): envelope.seal(encode_site(west), SIG),
        keys.service("west", "ns", "web"): envelope.seal(encode_export(export("west", "ns", "web", 80)), SIG),
        keys.mesh("policies", "access", "ns", "web"): envelope.seal(b'{"kind":"AccessPolicy"}', SIG),
        keys.prefix + "/sites/east/junk": b"{}",  # no record of the layout: not counted
        keys.service("east", "ns", "bad"): b'{"sig":{"alg":1}}',  # a malformed signature: not counted either
    }
    signed = signed_records(keys, values)
    assert signed == {"east": (1, 2), "west": (2, 2)}

    report = registry_report(view([east, west]), {}, source="etcd test", signed=signed)
    assert [s["signedRecords"] for s in report["sites"]] == [[1, 2], [2, 2]]
    rows = {line.split()[0]: line.split()[-1] for line in format_report(report).splitlines()
            if line.strip().startswith(("east ", "west "))}
    assert rows == {"east": "1/2", "west": "2/2"}
    # The agent's own document (its mirror verified every record) has no such column.
    assert "signedRecords" not in registry_report(view([east]), {}, source="agent")["sites"][0]
