"""Each section of a TrafficPolicy spec: read (validated, defaults filled in) and written back in full. Pure.

Readers take the JSON/YAML value and its path (`spec.retries`) and raise PolicyError naming the field;
unknown fields are refused, so a typo never silently means "default".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from federation.core.errors import PolicyError
from federation.core.policy import model as m
from federation.core.policy.fields import (
    MAX_LIST,
    Section,
    boolean,
    choice,
    duration,
    integer,
    items,
    label_map,
    label_pair,
    limit,
    nonzero,
    optional,
    percent,
    site_name,
    topology_value,
)
from federation.core.policy.units import format_duration, format_number

_WEIGHT_SLACK = 0.01
_NO_SITES: tuple[str, ...] = ()


# ---------------------------------------------------------------- sections


def read_locality(value: Any, path: str) -> m.LocalityPolicy:
    s, d = Section(value, path), m.LocalityPolicy()
    prio = s.take("failoverPriority", _priority, d.failover_priority)
    failover = s.take("failover", _failover_rules, d.failover)
    if failover and m.REGION not in prio:
        raise PolicyError(s.at("failover"), "needs `region` in failoverPriority (failover rules are between regions)")
    out = m.LocalityPolicy(prio, failover, s.take("distribute", _distribute, d.distribute),
                           s.take("spill", choice(m.Spill), d.spill))
    s.done()
    return out


def write_locality(p: m.LocalityPolicy) -> dict[str, Any]:
    return {
        "failoverPriority": list(p.failover_priority),
        "failover": [{"from": r.from_region, "to": r.to_region} for r in p.failover],
        "distribute": [{"from": r.from_pattern, "to": {k: format_number(w) for k, w in r.to}} for r in p.distribute],
        "spill": p.spill.value,
    }


def read_outlier(value: Any, path: str) -> m.OutlierDetection:
    s, d = Section(value, path), m.OutlierDetection()
    out = m.OutlierDetection(
        enabled=s.take("enabled", boolean, d.enabled),
        consecutive_connect_failures=s.take("consecutiveConnectFailures", integer(1, 1000),
                                            d.consecutive_connect_failures),
        consecutive_gateway_errors=s.take("consecutiveGatewayErrors", integer(1, 1000), d.consecutive_gateway_errors),
        base_ejection_time=s.take("baseEjectionTime", duration(0.001, 86400), d.base_ejection_time),
        max_ejection_time=s.take("maxEjectionTime", duration(0.001, 86400), d.max_ejection_time),
        max_ejection_percent=s.take("maxEjectionPercent", percent(), d.max_ejection_percent),
        panic_threshold=s.take("panicThreshold", percent(), d.panic_threshold),
    )
    if out.max_ejection_time < out.base_ejection_time:
        raise PolicyError(s.at("maxEjectionTime"), f"{format_duration(out.max_ejection_time)} is shorter than "
                          f"baseEjectionTime {format_duration(out.base_ejection_time)}")
    if out.max_ejection_percent == 0:
        raise PolicyError(s.at("maxEjectionPercent"), "0 would eject nothing; use enabled: false to turn ejection off")
    s.done()
    return out


def write_outlier(p: m.OutlierDetection) -> dict[str, Any]:
    return {
        "enabled": p.enabled,
        "consecutiveConnectFailures": p.consecutive_connect_failures,
        "consecutiveGatewayErrors": p.consecutive_gateway_errors,
        "baseEjectionTime": format_duration(p.base_ejection_time),
        "maxEjectionTime": format_duration(p.max_ejection_time),
        "maxEjectionPercent": format_number(p.max_ejection_percent),
        "panicThreshold": format_number(p.panic_threshold),
    }


def read_active_health(value: Any, path: str) -> m.ActiveHealth:
    s, d = Section(value, path), m.ActiveHealth()
    out = m.ActiveHealth(
        enabled=s.take("enabled", boolean, d.enabled),
        interval=s.take("interval", duration(0.1, 3600), d.interval),
        timeout=s.take("timeout", duration(0.01, 3600), d.timeout),
        unhealthy_threshold=s.take("unhealthyThreshold", integer(1, 100), d.unhealthy_threshold),
        healthy_threshold=s.take("healthyThreshold", integer(1, 100), d.healthy_threshold),
    )
    if out.timeout > out.interval:
        raise PolicyError(s.at("timeout"), f"{format_duration(out.timeout)} is longer than the interval "
                          f"{format_duration(out.interval)}")
    s.done()
    return out


def write_active_health(p: m.ActiveHealth) -> dict[str, Any]:
    return {"enabled": p.enabled, "interval": format_duration(p.interval), "timeout": format_duration(p.timeout),
            "unhealthyThreshold": p.unhealthy_threshold, "healthyThreshold": p.healthy_threshold}


def read_split(value: Any, path: str) -> tuple[m.SplitTarget, ...]:
    out: list[m.SplitTarget] = []
    for i, raw in enumerate(items(path, value)):
        s = Section(raw, f"{path}[{i}]")
        target = m.SplitTarget(weight=s.require("weight", percent()), site=s.take("site", site_name, None),
                               labels=s.take("labels", label_map, ()))
        if target.site is None and not target.labels:
            raise PolicyError(s.path, "needs a site, labels, or both, to say which endpoints get this share")
        if len(",".join(f"{k}={v}" for k, v in target.labels)) > 255:
            raise PolicyError(f"{s.path}.labels", "are over 255 bytes as k=v,k2=v2 (a stream request carries "
                              "them to the remote gateway): select with fewer or shorter labels")
        if any(t.site == target.site and t.labels == target.labels for t in out):
            raise PolicyError(s.path, "selects the same endpoints as an earlier entry")
        s.done()
        out.append(target)
    if out:
        _sums_to_100(path, [t.weight for t in out])
    return tuple(out)


def write_split(targets: tuple[m.SplitTarget, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in targets:
        entry: dict[str, Any] = {"weight": format_number(t.weight)}
        if t.site is not None:
            entry["site"] = t.site
        if t.labels:
            entry["labels"] = dict(t.labels)
        out.append(entry)
    return out


def read_timeouts(value: Any, path: str) -> m.Timeouts:
    s, d = Section(value, path), m.Timeouts()
    connect = s.take("connect", duration(0.001, 3600), d.connect)
    per_try = s.take("connectPerTry", duration(0.001, 3600), min(d.connect_per_try, connect))
    if per_try > connect:
        raise PolicyError(s.at("connectPerTry"), f"{format_duration(per_try)} is longer than connect "
                          f"{format_duration(connect)} (the total across tries)")
    idle = s.take("idle", nonzero(duration(0.0)), d.idle)
    lifetime = s.take("maxConnectionDuration", optional(duration(1.0)), d.max_connection_duration)
    s.done()
    return m.Timeouts(connect, per_try, idle, lifetime)


def write_timeouts(p: m.Timeouts) -> dict[str, Any]:
    return {"connect": format_duration(p.connect), "connectPerTry": format_duration(p.connect_per_try),
            "idle": format_duration(p.idle),
            "maxConnectionDuration": None if p.max_connection_duration is None
            else format_duration(p.max_connection_duration)}


def read_retries(value: Any, path: str) -> m.Retries:
    s, d = Section(value, path), m.Retries()
    attempts = s.take("attempts", integer(1, 10), d.attempts)
    b = Section(s.take("backoff", lambda _p, v: v, None), s.at("backoff"))
    base = b.take("base", duration(0.001, 10), d.backoff.base)
    cap = b.take("max", duration(0.001, 60), max(d.backoff.max, base))
    if cap < base:
        raise PolicyError(b.at("max"), f"{format_duration(cap)} is shorter than base {format_duration(base)}")
    b.done()
    g = Section(s.take("budget", lambda _p, v: v, None), s.at("budget"))
    budget = m.RetryBudget(g.take("percent", percent(), d.budget.percent),
                           g.take("minRetries", integer(0, 100_000), d.budget.min_retries))
    g.done()
    h = Section(s.take("hedge", lambda _p, v: v, None), s.at("hedge"))
    hedge = m.Hedge(h.take("enabled", boolean, d.hedge.enabled),
                    h.take("minDelay", duration(0.01, 60), d.hedge.min_delay))
    h.done()
    s.done()
    return m.Retries(attempts, m.Backoff(base, cap), budget, hedge)


def write_retries(p: m.Retries) -> dict[str, Any]:
    return {"attempts": p.attempts,
            "backoff": {"base": format_duration(p.backoff.base), "max": format_duration(p.backoff.max)},
            "budget": {"percent": format_number(p.budget.percent), "minRetries": p.budget.min_retries},
            "hedge": {"enabled": p.hedge.enabled, "minDelay": format_duration(p.hedge.min_delay)}}


def read_circuit_breaker(value: Any, path: str) -> m.CircuitBreaker:
    s, d = Section(value, path), m.CircuitBreaker()
    service = m.Limits(s.take("maxConnections", limit, d.service.max_connections),
                       s.take("maxPendingConnects", limit, d.service.max_pending_connects))
    p = Section(s.take("perSite", lambda _p, v: v, None), s.at("perSite"))
    per_site = m.Limits(p.take("maxConnections", limit, d.per_site.max_connections),
                        p.take("maxPendingConnects", limit, d.per_site.max_pending_connects))
    p.done()
    s.done()
    return m.CircuitBreaker(service, per_site)


def write_circuit_breaker(p: m.CircuitBreaker) -> dict[str, Any]:
    return {"maxConnections": p.service.max_connections, "maxPendingConnects": p.service.max_pending_connects,
            "perSite": {"maxConnections": p.per_site.max_connections,
                        "maxPendingConnects": p.per_site.max_pending_connects}}


def read_faults(value: Any, path: str) -> tuple[m.FaultRule, ...]:
    out: list[m.FaultRule] = []
    for i, raw in enumerate(items(path, value, 16)):
        s = Section(raw, f"{path}[{i}]")
        sites = s.take("sourceSites", _sites, _NO_SITES)
        dests = s.take("destinationSites", _sites, _NO_SITES)
        delay = s.take("delay", _delay, None)
        abort = s.take("abort", _abort, None)
        if delay is None and abort is None:
            raise PolicyError(s.path, "needs a delay, an abort, or both")
        s.done()
        out.append(m.FaultRule(sites, dests, delay, abort))
    return tuple(out)


def write_faults(rules: tuple[m.FaultRule, ...]) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        entry: dict[str, Any] = {"sourceSites": list(r.source_sites), "destinationSites": list(r.destination_sites)}
        if r.delay is not None:
            entry["delay"] = {"fixed": format_duration(r.delay.fixed), "percent": format_number(r.delay.percent)}
        if r.abort is not None:
            entry["abort"] = {"kind": r.abort.kind.value, "percent": format_number(r.abort.percent)}
        out.append(entry)
    return out


def read_partition(value: Any, path: str) -> m.Partition:
    s, d = Section(value, path), m.Partition()
    mode = s.take("mode", choice(m.PartitionMode), d.mode)
    after = s.take("after", optional(duration(1.0)), None)
    if mode is m.PartitionMode.STOP_AFTER and after is None:
        raise PolicyError(s.at("after"), "is required with mode StopAfter (how long to keep serving)")
    if mode is not m.PartitionMode.STOP_AFTER and after is not None:
        raise PolicyError(s.at("after"), f"applies to mode StopAfter only, not {mode.value}")
    s.done()
    return m.Partition(mode, after)


def write_partition(p: m.Partition) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": p.mode.value}
    if p.after is not None:
        out["after"] = format_duration(p.after)
    return out


# ---------------------------------------------------------------- private


def _priority(path: str, value: Any) -> tuple[str, ...]:
    out: list[str] = []
    for i, entry in enumerate(items(path, value, 8)):
        where = f"{path}[{i}]"
        if not isinstance(entry, str):
            raise PolicyError(where, f"{entry!r} is not a string")
        if "=" in entry:
            key, _, val = entry.partition("=")
            label_pair(where, key, val)
        elif entry not in m.TOPOLOGY_KEYS:
            raise PolicyError(where, f"{entry!r} is not one of {', '.join(m.TOPOLOGY_KEYS)} or a label key=value")
        if entry in out:
            raise PolicyError(where, f"{entry!r} is listed twice")
        out.append(entry)
    return tuple(out)


def _failover_rules(path: str, value: Any) -> tuple[m.FailoverRule, ...]:
    out: list[m.FailoverRule] = []
    for i, raw in enumerate(items(path, value)):
        s = Section(raw, f"{path}[{i}]")
        rule = m.FailoverRule(s.require("from", topology_value), s.require("to", topology_value))
        s.done()
        if rule.from_region == rule.to_region:
            raise PolicyError(s.path, f"fails over from {rule.from_region!r} to itself")
        if rule in out:
            raise PolicyError(s.path, "is listed twice")
        out.append(rule)
    return tuple(out)


def _distribute(path: str, value: Any) -> tuple[m.DistributeRule, ...]:
    out: list[m.DistributeRule] = []
    for i, raw in enumerate(items(path, value)):
        s = Section(raw, f"{path}[{i}]")
        source = s.require("from", _pattern)
        to_raw = s.require("to", lambda p, v: v)
        if not isinstance(to_raw, Mapping) or not to_raw:
            raise PolicyError(s.at("to"), "must be a non-empty mapping of locality (region/zone) to weight")
        if len(to_raw) > MAX_LIST:
            raise PolicyError(s.at("to"), f"has {len(to_raw)} entries; at most {MAX_LIST} are allowed")
        to = tuple((_pattern(f"{s.at('to')}.{k}", k), percent()(f"{s.at('to')}.{k}", w)) for k, w in to_raw.items())
        _sums_to_100(s.at("to"), [w for _, w in to])
        s.done()
        if any(r.from_pattern == source for r in out):
            raise PolicyError(s.at("from"), f"{source!r} is listed twice")
        out.append(m.DistributeRule(source, to))
    return tuple(out)


def _pattern(path: str, value: Any) -> str:
    """`region`, `region/zone`, with `*` for any: how distribute names localities."""
    if not isinstance(value, str) or not value or value.count("/") > 1:
        raise PolicyError(path, f"{value!r} is not a locality like eu-west, eu-west/* or eu-west/eu-west-1a")
    for part in value.split("/"):
        if part != "*":
            topology_value(path, part)
    return value


def _sums_to_100(path: str, weights: list[float]) -> None:
    total = sum(weights)
    if abs(total - 100.0) > _WEIGHT_SLACK:
        raise PolicyError(path, f"weights sum to {total:g}, not 100")


def _sites(path: str, value: Any) -> tuple[str, ...]:
    out = tuple(site_name(f"{path}[{i}]", v) for i, v in enumerate(items(path, value, 256)))
    if len(set(out)) != len(out):
        raise PolicyError(path, "lists a site twice")
    return out


def _delay(path: str, value: Any) -> m.Delay:
    s = Section(value, path)
    out = m.Delay(s.require("fixed", duration(0.001, 300)), s.require("percent", percent()))
    s.done()
    return out


def _abort(path: str, value: Any) -> m.Abort:
    s = Section(value, path)
    out = m.Abort(s.require("kind", choice(m.AbortKind)), s.require("percent", percent()))
    s.done()
    return out
