"""`meshfed demo`: the stage of `federation.devkit.stage`, shown step by step."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from federation.core.errors import MeshfedError
from federation.devkit import owner
from federation.devkit.lab import Lab
from federation.devkit.stage import DEFAULT_STATE, PREFIX, ZONE, Demo


class Stop(BaseException):
    """A stop signal arrived (Ctrl-C, SIGTERM, `meshfed demo --down`, a closed terminal).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_demo(state_dir: Path | None, keep: bool = False, down: bool = False, loopback: bool = False,
             prefix: str = PREFIX) -> int:
    """`meshfed demo`: 0 when every step worked (and, with `keep`, the mesh was stopped by a signal)."""
    state = state_dir or DEFAULT_STATE
    netns = Lab.available() is None and not loopback
    if down:
        return take_down(state, prefix, netns, sys.stdout)
    running = owner.read(state)
    if running is not None and running.alive():
        print(f"a demo is already running as pid {running.pid} with its state in {state}: "
              f"stop it with `{cli_command()} demo --down{_state_flag(state)}` first")
        return 1
    demo = Demo(state, netns, prefix=prefix, wan=0 if prefix == PREFIX else None)
    say = _sayer(demo.out)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stopping or outcome[0] != "running":  # once tearing down, nothing cuts it short
            say(f"({signal.Signals(signum).name}: still tearing down)\n")
            return
        stopping.append(signum)
        raise Stop(signum)

    outcome, kept = ["running"], False
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        code = _show(demo, say)
        if code != 0 or not keep:
            outcome[0] = "done" if code == 0 else "failed"
            return code
        kept = True  # from here a stop signal is the normal end (it may come while the hint prints)
        say(_keep_help(demo))
        while True:  # until a stop signal
            time.sleep(3600)
    except Stop as stop:
        outcome[0] = "stopped"
        say(f"\n{stop}: tearing the demo down\n")
        return 0 if kept else 128 + stop.signum  # a kept demo ends this way; an interrupted one did not finish
    except (RuntimeError, OSError, subprocess.SubprocessError, MeshfedError) as exc:
        outcome[0] = "failed"
        say(f"\ndemo failed: {exc}\nlogs kept in {state}; `{cli_command()} demo --down{_state_flag(state)}` "
            "removes them\n")
        return 1
    finally:
        if outcome[0] == "running":
            outcome[0] = "failed"  # something unexpected went up: keep the logs
        pids = owner.recorded_pids(state)
        demo.down()
        if outcome[0] != "failed":
            shutil.rmtree(state, ignore_errors=True)
        if outcome[0] == "stopped":
            say(_verdict(owner.leftovers(state, prefix, netns, pids), state))
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def take_down(state: Path, prefix: str, netns: bool, out: Any) -> int:
    """`meshfed demo --down`: stop the demo process recorded in `state` (that pid only), remove what is left,
    and say what is true; 1 if anything is still there."""
    say = _sayer(out)
    running = owner.read(state)
    if running is not None:
        prefix, netns = running.prefix, running.netns  # what that demo really built
    pids = owner.recorded_pids(state)
    if running is not None and running.alive():
        say(f"stopping the demo running as pid {running.pid} (it tears its own mesh down) ...\n")
        if running.stop():
            say(f"pid {running.pid} has stopped\n")
        else:
            say(f"pid {running.pid} did not stop within a minute: killed it; removing what it left\n")
        pids.append(running.pid)
    elif running is not None:
        say(f"the demo process (pid {running.pid}) had already exited; removing what it left\n")
    lab = Lab(prefix, state)
    if netns:
        lab.down()
    else:  # a loopback demo made no namespaces: never touch those of a demo running beside it
        lab.kill_all()
    shutil.rmtree(state, ignore_errors=True)
    left = owner.leftovers(state, prefix, netns, pids)
    say(_verdict(left, state))
    return 1 if left else 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, `kill`/`--down`, and a closed terminal: each tears the demo down."""


def cli_command() -> str:
    """How to call this meshfed from any shell: the venv's console script by its full path.

    `./bootstrap.sh` puts .venv/bin on PATH for the demo it starts, not in the user's shell, so a bare
    `meshfed` in a hint would be "command not found"."""
    script = Path(sys.executable).parent / "meshfed"
    return str(script) if script.exists() else f"{sys.executable} -m federation"


def _state_flag(state: Path) -> str:
    return "" if state == DEFAULT_STATE else f" --state-dir {state}"


def _verdict(left: list[str], state: Path) -> str:
    if not left:
        return f"demo torn down: no namespaces, processes or files left ({state} removed)\n"
    return "demo teardown left:\n" + "".join(f"  {item}\n" for item in left)


def _sayer(out: Any) -> Any:
    def say(text: str) -> None:
        try:
            out.write(text)
            out.flush()  # a pipe (tee, a test) sees each step as it happens
        except OSError:
            pass  # the terminal is gone (SIGHUP): the teardown goes on without an audience
    return say


def _show(demo: Demo, say: Any) -> int:
    started = time.monotonic()
    why = Lab.available() or "asked for with --loopback"
    mode = ("network namespaces: net-1 (east, edge) and net-2 (west) cannot reach each other; "
            "only the gateways meet on a wan" if demo.netns else
            f"LOOPBACK MODE ({why}): every site shares 127.0.0.1 on ports of its own; the networks are "
            "separate only in meshfed's eyes, so the direct path cannot be shown to fail")
    say(f"== meshfed demo: 3 sites, 2 networks, one etcd\n   {mode}\n"
        "   east: a Kubernetes-style site (a development API server with Services, EndpointSlices, ServiceExports)\n"
        f"   west, edge: VM sites with health-checked services\n   state in {demo.state}\n")
    demo.up()
    assert demo.etcd is not None
    say(f"== 1. every agent is ready (embedded etcd at {demo.etcd.endpoint}, mesh CA with one intermediate per site)\n")
    demo.wait_for(lambda: len(json.loads(demo.registry_ls("--json").stdout or "{}").get("services", [])) == 3,
                  30, "all exports")
    say("$ meshfed registry ls\n" + _indent(demo.registry_ls().stdout) + "\n")

    say("== 2. the same federated name, asked in each site (VM sites answer the mesh-wide VIP; the Kubernetes\n"
        "      site east answers the ClusterIP of the Service meshfed derived for the import)\n")
    for site, where in demo.sites.items():
        if not demo.netns and not where.kubernetes:  # no VIP interface on loopback: nothing here serves a VIP
            res = demo.resolve(site, f"web.shop.svc.{ZONE}")
            answer = _indent(res.stdout.strip() or "(no address)", 6)
            say(f"  [{site}] $ meshfed resolve web.shop.svc.{ZONE}\n{answer}\n"
                f"      (loopback mode: no VIP interface here, so DNS answers no address; clients use the\n"
                f"       egress listener {demo.url(site, 'web')})\n")
            continue
        # Answers follow the registry within moments (on Kubernetes, once the derived Service has its IP).
        demo.wait_for(lambda site=site: " A " in demo.resolve(site, f"web.shop.svc.{ZONE}").stdout, 15,
                      f"an answer in {site}")
        res = demo.resolve(site, f"web.shop.svc.{ZONE}")
        first = next((ln for ln in res.stdout.splitlines() if " A " in f" {ln} " or "\tA\t" in ln), res.stdout.strip())
        say(f"  [{site}] $ meshfed resolve web.shop.svc.{ZONE}\n{_indent(res.stdout.strip(), 6)}\n")
        if res.returncode != 0 or not first:
            raise RuntimeError(f"resolving in {site} failed: {res.stderr}")

    say("== 3. west -> shop/web: a different network, so through the mTLS gateways\n")
    url = demo.url("west", "web")
    ok, body, secs = demo.wait_curl("west", url)
    say(f"  [west] $ curl {url}\n      {body}   ({secs * 1000:.1f} ms)\n")
    if not ok or "served by east" not in body:
        raise RuntimeError(f"expected east to serve west's request, got: {body}")
    path = _path(demo.status("west"), "shop/web")
    say(f"      path: {path}\n")
    if demo.netns:
        direct = f"http://{demo.sites['east'].address}:{demo.sites['east'].ports['web']}/"
        ok, body, _ = demo.curl("west", direct, timeout=2)
        say(f"  [west] $ curl {direct}     (the endpoint itself, no gateway)\n      "
            f"{'UNEXPECTEDLY REACHED' if ok else 'fails: ' + body}\n")
        if ok:
            raise RuntimeError("west reached east's endpoint directly: the networks are not separate")

    say("== 4. edge -> shop/api: the same network as east, so straight to the endpoint\n")
    url = demo.url("edge", "api")
    ok, body, secs = demo.wait_curl("edge", url)
    say(f"  [edge] $ curl {url}\n      {body}   ({secs * 1000:.1f} ms)\n")
    say(f"      path: {_path(demo.status('edge'), 'shop/api')}\n")
    if not ok or "served by east" not in body:
        raise RuntimeError(f"expected east to serve edge's request, got: {body}")

    say("== 5. failover: east's web endpoint stops; west asks again\n")
    demo.stop_sample("east", "web")
    url = demo.url("west", "web")
    ok, body, secs = demo.curl("west", url)
    say(f"  [west] $ curl {url}\n      {body}   ({secs * 1000:.1f} ms)\n")
    if not ok or "served by edge" not in body:
        raise RuntimeError(f"expected edge to take over shop/web, got: {body}")
    say("      east's gateway got a refused connect and said so in the preamble; west's egress tried edge's\n"
        "      gateway before any byte of the request was sent\n")
    demo.set_endpoint_ready("east", "web", ready=False)
    waited = demo.wait_for(lambda: _ready(demo.status("west"), "shop/web", "east") == 0, 15, "east's slice update")
    say(f"      east's EndpointSlice marks the endpoint not ready; west's view shows it {waited:.1f}s later\n")
    demo.start_sample("east", "web")
    demo.set_endpoint_ready("east", "web", ready=True)
    demo.wait_for(lambda: _ready(demo.status("west"), "shop/web", "east") == 1, 15, "east to come back")
    ok, body, _ = demo.curl("west", url)
    say(f"      east's endpoint is back: {body}\n")

    _kubectl_step(demo, say)
    say(f"== demo done in {time.monotonic() - started:.1f}s\n")
    return 0


def _kubectl_step(demo: Demo, say: Any) -> None:
    """== 6: the Kubernetes site as kubectl sees it (the development API server speaks kubectl's protocol)."""
    if shutil.which("kubectl") is None:
        say("== 6. (kubectl is not installed: the step that shows east through kubectl is skipped)\n")
        return
    say("== 6. east is a Kubernetes site: kubectl shows what meshfed wrote there (MCS ServiceExport status,\n"
        "      ServiceImports of what the other sites export)\n")
    demo.wait_for(lambda: "cart" in demo.kubectl("east", "get", "serviceimports", "-n", "shop").stdout, 15,
                  "the ServiceImport of shop/cart in east")
    for args in (("get", "serviceexports", "-n", "shop"), ("get", "serviceimports", "-n", "shop"),
                 ("get", "serviceimport", "cart", "-n", "shop", "-o", "yaml")):
        res = demo.kubectl("east", *args)
        shown = " ".join(demo.kubectl_argv("east", *args))  # whole, so that it can be pasted into a shell
        say(f"  $ {shown}\n{_indent(res.stdout.strip() or res.stderr.strip(), 6)}\n")
        if res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {res.stderr}")


def _keep_help(demo: Demo) -> str:
    west_cfg = demo.state / "west.yaml"
    mf = cli_command()
    down = f"{mf} demo --down{_state_flag(demo.state)}"
    if demo.lab.prefix != PREFIX:
        down += f" --prefix {demo.lab.prefix}"
    if demo.netns:
        west, east = demo.lab.ns("west"), demo.lab.ns("east")
        return (
            "\n-- left running. Try:\n"
            f"   ip netns exec {west} {mf} status --config {west_cfg}\n"
            f"   ip netns exec {west} {mf} resolve web.shop.svc.{ZONE}\n"
            f"   ip netns exec {west} curl http://web.shop.svc.{ZONE}/\n"
            f"   ip netns exec {east} dig +short @127.0.0.1 cart.shop.svc.{ZONE}\n"
            f"   {' '.join(demo.kubectl_argv('east', 'get', 'serviceimports', '-n', 'shop', '-o', 'yaml'))}\n"
            f"   {mf} registry ls --endpoints {demo.etcd.endpoint if demo.etcd else ''}\n"
            f"   Ctrl-C (or `{down}` from another shell) removes everything\n"
        )
    return (
        "\n-- left running. Try:\n"
        f"   {mf} status --config {west_cfg}\n"
        f"   curl {demo.url('west', 'web')}\n"
        f"   {' '.join(demo.kubectl_argv('east', 'get', 'serviceimports', '-n', 'shop', '-o', 'yaml'))}\n"
        f"   {mf} registry ls --endpoints {demo.etcd.endpoint if demo.etcd else ''}\n"
        f"   Ctrl-C (or `{down}` from another shell) removes everything\n"
    )


def _path(status: dict[str, Any], service: str) -> str:
    for imp in status["imports"]:
        if imp["service"] == service:
            listen = imp["listeners"].get("http", "?")
            hops = [f"{s['site']} via {s['via']}" for s in imp["sites"] if s["ready"]]
            vip = f"VIP {imp['vips'][0]}, " if imp["vips"] and listen.startswith(imp["vips"][0] + ":") else ""
            return f"{status['site']} egress ({vip}listener {listen}) -> " + " | then ".join(hops)
    return "unknown"


def _ready(status: dict[str, Any], service: str, site: str) -> int:
    for imp in status["imports"]:
        if imp["service"] == service:
            return sum(s["ready"] for s in imp["sites"] if s["site"] == site)
    return -1


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line if line else line for line in text.rstrip().splitlines())
