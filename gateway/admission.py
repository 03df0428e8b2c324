"""What a stream request gets at the east-west gateway: checked against this site's own export. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from federation.core.records import Labels
from federation.core.view import MeshView
from gateway.balancing import Target, endpoint_targets, find_port
from gateway.preamble import Request, Status


@dataclass(frozen=True, slots=True)
class Admission:
    """What a stream request gets: a status, a reason for logs, and the endpoints to try."""

    status: Status
    reason: str
    targets: tuple[Target, ...] = ()
    key: tuple[str, str, str] = ("", "", "")
    cause: str = ""
    """The kind of refusal (`not-exported`, `no-port`, `no-ready-endpoint`, `no-subset-endpoint`), for logs."""
    subset: Labels = ()
    """The request's subset: the endpoint picker keeps a turn per subset."""


def admit(view: MeshView, site: str, req: Request) -> Admission:
    """Check `req` against this site's own export of the service. Pure."""
    export = view.exports.get((site, req.namespace, req.service))
    if export is None:
        return Admission(Status.NO_SUCH_SERVICE, f"{req.namespace}/{req.service} is not exported by {site}",
                         cause="not-exported")
    port = find_port(export.ports, req.port)
    if port is None:
        return Admission(Status.NO_SUCH_SERVICE, f"{req.namespace}/{req.service} has no port {req.port}",
                         cause="no-port")
    targets = endpoint_targets(export, port, req.hostname, req.subset)
    if not targets and req.subset:
        subset = ",".join(f"{k}={v}" for k, v in req.subset)
        return Admission(Status.NO_HEALTHY_ENDPOINT, f"{req.namespace}/{req.service} has no ready endpoint of "
                         f"subset {subset}", cause="no-subset-endpoint")
    if not targets:
        what = f"endpoint {req.hostname}" if req.hostname else "endpoint"
        return Admission(Status.NO_HEALTHY_ENDPOINT, f"{req.namespace}/{req.service} has no ready {what}",
                         cause="no-ready-endpoint")
    return Admission(Status.OK, "", tuple(targets), (req.namespace, req.service, port.name), subset=req.subset)
