"""Helpers the network-namespace tests share: a scratch namespace, addresses on an interface, child stops."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def scratch_netns(prefix: str, loopback_up: bool = False) -> Iterator[str]:
    """A namespace of the test's own (named after `prefix` and the pid), deleted afterwards."""
    name = f"{prefix}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=20)
    try:
        if loopback_up:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=20)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)


def global_addresses(ns: str, ifname: str = "meshfed0") -> list[str]:
    """The global-scope addresses (with prefix length) on `ifname` in `ns`, sorted."""
    out = subprocess.run(["ip", "-n", ns, "-o", "addr", "show", "dev", ifname, "scope", "global"],
                         capture_output=True, text=True, timeout=20, check=False)
    return sorted(line.split()[3] for line in out.stdout.splitlines())


def stop_by_stdin(proc: subprocess.Popen[Any]) -> None:
    """Stop a child that runs until its stdin closes; kill it if it has not gone within 10 s; close its pipes."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
