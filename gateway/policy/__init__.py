"""The data plane's traffic-policy decisions, each a pure core: steering (failover priority, distribute),
split (sites and label subsets), outlier (ejection, panic), retrying (backoff, budget), breaker (circuit
limits), faults (injected delay and abort), partition (stale registry).

No IO, no clock, no logging: time and randomness come in as arguments; the egress and gateway shells
(issue 12, phase 2) feed them and act on what they return; plan prepares split and steering once per
view or policy change so that a new connection costs one health pass. Imports federation.core only.
"""
