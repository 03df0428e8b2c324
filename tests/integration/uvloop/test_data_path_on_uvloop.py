"""The gateway's hostile-input tests and the egress's transfers again, on uvloop (see conftest.py).

On uvloop the gateway accepts raw sockets and hands them to `connect_accepted_socket`, not to
`start_tls`, so each refusal is checked on that path too.
"""

from __future__ import annotations

import asyncio

from tests.integration.test_eastwest import (  # noqa: F401 - collected here again, on uvloop
    _capture_every_level,
    test_a_tls12_client_is_told_the_protocol_version,
    test_bad_preambles,
    test_certificate_from_another_ca,
    test_certificate_not_yet_valid,
    test_client_without_certificate,
    test_expired_certificate,
    test_openssl_s_client_sees_the_alert,
    test_plaintext_instead_of_a_client_hello,
    test_preamble_that_never_finishes,
    test_site_a_claiming_to_be_site_b,
    test_site_not_in_the_registry,
    test_streams_relay_both_ways_and_the_tunnel_is_reused,
)
from tests.integration.test_egress import (  # noqa: F401
    test_a_client_reaches_a_service_of_another_network,
    test_certificate_rotation_during_a_long_transfer,
)
from tests.integration.test_tunnel_lifetime import (  # noqa: F401
    test_a_site_removed_from_the_registry_loses_its_tunnels_at_once,
    test_no_tunnel_outlives_its_peers_certificate,
)


async def test_this_module_runs_on_uvloop() -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
