"""`meshfed demo`: one machine, nothing set up, a site agent on an embedded etcd exporting a sample service."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml
from aiohttp import web

from federation.config import load_config

_SAMPLE_PAGE = "hello from site {site}\n"


def run_demo(state_dir: Path | None, keep: bool = False) -> int:
    """Run the demo; 0 when every step worked."""
    own_dir = state_dir is None
    root = Path(tempfile.mkdtemp(prefix="meshfed-demo-")) if state_dir is None else state_dir
    try:
        return asyncio.run(_demo(root, keep))
    finally:
        if own_dir and not keep:
            shutil.rmtree(root, ignore_errors=True)


def _say(text: str) -> None:
    print(text, flush=True)


async def _demo(root: Path, keep: bool) -> int:
    from federation.agent import Agent

    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    started = time.monotonic()
    app = web.Application()
    app.router.add_get("/", lambda _r: _page("east"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sample_port = runner.addresses[0][1]
    config_path = root / "east.yaml"
    config_path.write_text(yaml.safe_dump({
        "site": {"name": "east", "network": "net-1", "region": "demo", "zone": "a"},
        "state_dir": str(root / "east"),
        "admin": {"address": "127.0.0.1", "port": 0},
        "exports": [{
            "namespace": "shop", "name": "web",
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"addresses": ["127.0.0.1"], "ports": {"http": sample_port}}],
        }],
    }, sort_keys=False))  # fmt: skip
    _say(f"== meshfed demo (state in {root})")
    _say(f"-- sample service shop/web: http://127.0.0.1:{sample_port}/")
    agent = Agent(load_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="demo-agent")
    try:
        await _until(lambda: agent.mirror is not None and agent.mirror.synced.is_set()
                     and agent.publisher is not None and agent.publisher.published.is_set(), task)
        assert agent.etcd is not None
        assert agent.admin_address is not None
        _say(f"-- agent for site east is ready; embedded etcd at {agent.etcd.endpoint}; "
             f"admin at http://{agent.admin_address[0]}:{agent.admin_address[1]}/")
        await _until(lambda: agent.mirror is not None and len(agent.mirror.view().exports) == 1, task)
        _say(f"$ meshfed registry ls --config {config_path}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "federation", "registry", "ls", "--config", str(config_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        _say(out.decode().rstrip())
        if proc.returncode != 0:
            return 1
        _say(f"== demo done in {time.monotonic() - started:.1f}s")
        if keep:
            _say("-- left running; try:")
            _say(f"   meshfed registry ls --config {config_path}")
            _say(f"   curl http://{agent.admin_address[0]}:{agent.admin_address[1]}/metrics")
            _say("   Ctrl-C stops everything")
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        return 0
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        await runner.cleanup()


async def _page(site: str) -> web.Response:
    return web.Response(text=_SAMPLE_PAGE.format(site=site))


async def _until(check: object, task: asyncio.Task[None], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        if task.done():
            task.result()
            raise RuntimeError("the agent stopped during the demo")
        if time.monotonic() > deadline:
            raise TimeoutError("the demo agent did not get ready in time")
        await asyncio.sleep(0.05)
