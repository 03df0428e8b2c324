"""The capture rules as nft text, and reading back what `nft -j list table` says (pure parts)."""

from __future__ import annotations

from typing import Any

from federation.sources.vm.nftables import Installed, parse_table, ruleset


def test_ruleset_replaces_the_table_and_redirects_each_range_in_both_nat_hooks() -> None:
    text = ruleset(["240.240.0.0/16", "fd6d:6573:6866:6564::/64"], 40001)
    lines = [line.strip() for line in text.splitlines()]
    # One transaction replaces whatever a previous run left: create if missing, delete, define.
    assert lines[:3] == ["add table inet meshfed", "delete table inet meshfed", "table inet meshfed {"]
    assert lines.count("ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :40001") == 2
    assert lines.count("ip6 daddr fd6d:6573:6866:6564::/64 meta l4proto tcp redirect to :40001") == 2
    assert "type nat hook output priority -100; policy accept;" in lines
    assert "type nat hook prerouting priority dstnat; policy accept;" in lines
    assert "tcp dport 40001 ct status dnat accept" in lines
    assert "tcp dport 40001 reject with tcp reset" in lines


def test_ruleset_normalises_ranges_and_names_the_table() -> None:
    text = ruleset(["240.240.7.1/16"], 1, table="mftest")
    assert "ip daddr 240.240.0.0/16 meta l4proto tcp redirect to :1" in text
    assert "table inet mftest {" in text


def _rule(chain: str, family: str, addr: str, length: int, port: int) -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": "meshfed", "chain": chain, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "daddr"}},
                   "right": {"prefix": {"addr": addr, "len": length}}}},
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"redirect": {"port": port}}]}}


def test_parse_table_as_nft_prints_it() -> None:
    doc = {"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "meshfed"}},
        {"chain": {"family": "inet", "table": "meshfed", "name": "output", "type": "nat", "hook": "output"}},
        {"chain": {"family": "inet", "table": "meshfed", "name": "input", "type": "filter", "hook": "input"}},
        _rule("output", "ip", "240.240.0.0", 16, 4242),
        _rule("output", "ip6", "fd6d::", 64, 4242),
        {"rule": {"chain": "input", "expr": [{"match": {"left": {"payload": {"field": "dport"}}, "right": 4242}},
                                             {"accept": None}]}},
    ]}
    assert parse_table(doc) == Installed(4242, ("240.240.0.0/16", "fd6d::/64"), ("input", "output"), 3)
    assert parse_table({}) == Installed(0, (), (), 0)
