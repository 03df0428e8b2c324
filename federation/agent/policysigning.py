"""The policy writer of a Kubernetes site: the operator key that signs its synced policies, and the registry side.

The operator mounts an operator key (`meshfed ca operator NAME`) from a Secret into the agent's pod and names its
directory in `kubernetes.operator_key_dir`; the key must not be readable by group or others (defaultMode 0400 or
0600). It is checked at start against the mesh roots, so a wrong or foreign key stops the agent with the reason
instead of producing records every reader refuses. Without one, under `registry.signatures: require`, every
policy object is refused with reason NotSigned (nothing is written); under `accept` the records are unsigned.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from federation.agent.settings import AgentSettings
from federation.core.errors import ConfigError, RecordError
from federation.core.keys import Keys
from federation.core.policy.kinds import SIGNER
from federation.core.verification import Mode
from federation.pki.issuing import PkiError
from federation.pki.records import RecordVerifier
from federation.pki.signing import OPERATOR_KEY, load_signer, verify_operator
from federation.registry.etcd import EtcdClient
from federation.registry.policies import Sign
from federation.registry.policysync import PolicyOwner


def kubernetes_policies(settings: AgentSettings, client: Callable[[], EtcdClient],
                        verifier: RecordVerifier | None) -> PolicyOwner | None:
    """The writer of the site's policy objects, or None where they are not synced; ConfigError for a bad key."""
    k = settings.kubernetes
    if not (k.enabled and k.policies):
        return None
    sign, name = operator_sign(Path(k.operator_key_dir), verifier) if k.operator_key_dir else (None, "")
    return PolicyOwner(client(), Keys(settings.registry.prefix), settings.site.name, sign=sign,
                       read=verifier.mesh_policy if verifier is not None else None,
                       require=settings.registry.signatures is Mode.REQUIRE, signer_name=name)


def operator_sign(directory: Path, verifier: RecordVerifier | None) -> tuple[Sign, str]:
    """What signs with the operator key in `directory`, and the operator's name; ConfigError naming the problem."""
    where = f"kubernetes.operator_key_dir: {directory}"
    try:
        st = (directory / OPERATOR_KEY).stat()
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    mode = st.st_mode & 0o777
    # A Secret mounted with defaultMode 0400 under a pod's fsGroup is 0440 with the agent's own group (the
    # kubelet adds group read): that group is the pod's, so only group access by another group is refused.
    if mode & 0o007 or (mode & 0o070 and st.st_gid != os.getegid()):
        raise ConfigError(f"{where}: {OPERATOR_KEY} is readable by group or others (mode {mode:04o}); "
                          "mount the Secret with defaultMode 0400")
    try:
        signer = load_signer(directory)
    except PkiError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    name = ""
    if verifier is not None:
        try:
            name = verify_operator(signer.cert, verifier.trust.get().roots, dt.datetime.now(dt.UTC))
        except RecordError as exc:
            raise ConfigError(f"{where}: not an operator key of this mesh: {exc}") from None
    pem = signer.cert_pem()

    def sign(key: str, record: dict[str, Any]) -> bytes:
        return signer.sign(key, {**record, SIGNER: pem}, int(dt.datetime.now(dt.UTC).timestamp() * 1000))

    return sign, name or "operator"
