"""meshfed's data plane: the tunnel protocol, the east-west gateway, the egress, load balancing.

Imports `federation.core`, `federation.runtime` and `federation.pki` only; the agent's composition root
(`federation.agent`) builds it and feeds it registry views.
"""
