"""The VM health check state machine, the exports it yields, and the export merger."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from federation.core.exportset import ExportSet
from federation.core.records import Endpoint, EndpointPort, ServiceExport, ServicePort, validate_export
from federation.sources.vm.checking import Change, CheckState, check_port, convert, observe
from federation.sources.vm.settings import CheckSettings, PortSettings, VmServiceSettings

CHECK = CheckSettings(rise=2, fall=3)


def run(results: list[bool], check: CheckSettings = CHECK) -> list[tuple[bool, Change]]:
    state, out = CheckState(), []
    for t, passed in enumerate(results):
        state, change = observe(state, passed, "", float(t), check)
        out.append((state.ready, change))
    return out


def test_first_result_decides_at_once() -> None:
    assert run([True]) == [(True, Change.UP)]
    assert run([False]) == [(False, Change.NONE)]


def test_fall_threshold_then_rise_threshold() -> None:
    readiness = [ready for ready, _ in run([True, False, False, True, False, False, False, True, True, True])]
    assert readiness == [True, True, True, True, True, True, False, False, True, True]


def test_since_marks_the_change() -> None:
    state, _ = observe(CheckState(), True, "ok", 10.0, CHECK)
    state, _ = observe(state, True, "ok", 15.0, CHECK)
    assert state.since == 10.0
    for t in (20.0, 25.0, 30.0):
        state, change = observe(state, False, "refused", t, CHECK)
    assert (state.ready, change, state.since, state.detail) == (False, Change.DOWN, 30.0, "refused")


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 5), st.integers(1, 5))
def test_ready_only_changes_after_threshold_runs(results: list[bool], rise: int, fall: int) -> None:
    check = CheckSettings(rise=rise, fall=fall)
    out = run(results, check)
    for i in range(1, len(out)):
        if out[i][0] != out[i - 1][0]:
            need = rise if out[i][0] else fall
            window = results[max(0, i - need + 1): i + 1]
            assert len(window) == need
            assert all(r == out[i][0] for r in window)
        assert (out[i][1] is not Change.NONE) == (out[i][0] != out[i - 1][0])


def svc(**kw: object) -> VmServiceSettings:
    base: dict[str, object] = {"namespace": "shop", "name": "web", "ports": (PortSettings("http", 8080),)}
    return VmServiceSettings(**(base | kw))  # type: ignore[arg-type]


def test_convert_uses_state_address_and_target_ports() -> None:
    service = svc(ports=(PortSettings("http", 8080, target_port=18080), PortSettings("admin", 9000)))
    up, _ = observe(CheckState(), True, "", 0.0, CHECK)
    [export] = convert("vm-a", [service], {("shop", "web"): "198.18.0.2"}, {("shop", "web"): up})
    validate_export(export)
    assert export.ports == (ServicePort("http", 8080), ServicePort("admin", 9000))
    assert export.endpoints == (
        Endpoint(addresses=("198.18.0.2",), ports=(EndpointPort("http", 18080),), ready=True),
    )
    [unchecked] = convert("vm-a", [service], {("shop", "web"): "198.18.0.2"}, {})
    assert not unchecked.endpoints[0].ready


def test_check_port_defaults_to_first_target() -> None:
    assert check_port(svc()) == 8080
    assert check_port(svc(ports=(PortSettings("http", 80, target_port=8081),))) == 8081
    assert check_port(svc(check=CheckSettings(port=9))) == 9


def exp(name: str, address: str = "198.18.0.2") -> ServiceExport:
    return ServiceExport("vm-a", "shop", name, (ServicePort("http", 80),), endpoints=(Endpoint((address,)),))


def test_export_set_merges_groups_and_calls_once_per_change() -> None:
    calls: list[tuple[ServiceExport, ...]] = []
    merged = ExportSet(lambda exports: calls.append(tuple(exports)))
    checks, lan = merged.group("checks"), merged.group("lan")
    checks([exp("web")])
    lan([exp("printer"), exp("web", "198.18.0.9")])
    lan([exp("printer"), exp("web", "198.18.0.9")])  # no change: no call
    assert [[e.name for e in c] for c in calls] == [["web"], ["printer", "web"]]
    assert calls[-1][1].endpoints[0].addresses == ("198.18.0.2",)  # the first group wins
    assert [(g, e.name) for g, e in merged.shadowed] == [("lan", "web")]
    checks([])
    assert calls[-1][1].endpoints[0].addresses == ("198.18.0.9",)
