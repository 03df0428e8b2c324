"""What the data plane feeds the VIP allocator: the families this site serves."""

from __future__ import annotations

from federation.agent.serving import served_ranges
from federation.sources.vm.capture import EgressCapture

RANGES = ("240.240.0.0/16", "fd6d:6573:6866:6564::/64")


def test_a_site_without_capture_allocates_ipv4_only() -> None:
    assert served_ranges(RANGES, None) == ("240.240.0.0/16",)
    assert served_ranges(RANGES, EgressCapture("off", RANGES)) == ("240.240.0.0/16",)  # decided off: not active
