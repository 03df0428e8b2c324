"""An etcd of our own, run as a child process, for a site with no etcd endpoints configured.

Also what the test suite uses to run a real etcd: same code, same flags.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from federation.core.errors import ConfigError, RegistryUnavailable
from federation.runtime.files import TlsFiles

log = logging.getLogger(__name__)

ENDPOINT_FILE = "etcd.endpoint"


@dataclass(slots=True)
class EtcdProcess:
    """One single-member etcd with its data under `data_dir`, listening on loopback."""

    data_dir: Path
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    tls: TlsFiles | None = None
    binary: str = "etcd"
    extra_args: tuple[str, ...] = ()
    name: str = "meshfed"
    """The member's name (a cluster's members each have their own)."""
    initial_cluster: str = ""
    """name=peer-url,... of every member of a cluster; empty: a single-member etcd of its own."""
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """host:port clients connect to."""
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def peer_url(self) -> str:
        """The URL the other members of a cluster reach this one at."""
        return f"http://{self.host}:{self.peer_port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until it answers /health; ports picked once, then kept across restarts."""
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the etcd process without waiting for it (a cluster's members must all start before any is
        healthy); `wait_ready` waits."""
        exe = shutil.which(self.binary) or (self.binary if os.path.exists(self.binary) else None)
        if exe is None:
            raise ConfigError(
                f"registry.endpoints is empty, so meshfed runs its own etcd, but no {self.binary!r} binary is "
                "on PATH: install Debian's etcd-server, or set registry.endpoints"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.client_port:
            self.client_port = free_port(self.host)
        while not self.peer_port or self.peer_port == self.client_port:  # the kernel may hand the same port twice
            self.peer_port = free_port(self.host)
        scheme = "https" if self.tls else "http"
        client_url = f"{scheme}://{self.host}:{self.client_port}"
        peer_url = self.peer_url
        args = [
            exe,
            "--name", self.name,
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer_url}",
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        if self.tls:
            args += [
                "--client-cert-auth",
                "--trusted-ca-file", str(self.tls.ca),
                "--cert-file", str(self.tls.cert),
                "--key-file", str(self.tls.key),
            ]  # fmt: skip
        logfile = open(self.data_dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                args, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            logfile.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the spawned etcd answers /health (in a cluster: until it has a leader)."""
        self._wait_ready(timeout)
        assert self._proc is not None
        (self.data_dir / ENDPOINT_FILE).write_text(self.endpoint + "\n")
        log.info("etcd %s pid %d serving %s", self.name, self._proc.pid, self.endpoint)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd cleanly (SIGTERM, then SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / ENDPOINT_FILE).unlink()

    def kill(self) -> None:
        """SIGKILL etcd, as a crash or a lost machine would (its data stays for a restart)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze etcd (SIGSTOP): clients see a silent server, as with a network partition."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause`."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.data_dir / "etcd.log").read_text(errors="replace")[-2000:]
                raise RegistryUnavailable(f"etcd exited with {self._proc.returncode}: {tail}")
            if self._port_open():
                return
            time.sleep(0.05)
        self.stop()
        raise RegistryUnavailable(f"etcd did not start listening on {self.endpoint} within {timeout:.0f}s")

    def _port_open(self) -> bool:
        if self.tls is None:
            try:
                with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False
        try:
            with socket.create_connection((self.host, self.client_port), timeout=1):
                return True
        except OSError:
            return False


class EtcdCluster:
    """A real etcd cluster of `size` members on loopback (tests, and trying failover by hand).

    Ports are picked at start and kept, so a killed member restarts on the same ones with its data.
    """

    def __init__(self, data_dir: Path, size: int = 3, host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.members = [
            EtcdProcess(data_dir=data_dir / f"m{i}", host=host, name=f"m{i}", extra_args=extra_args)
            for i in range(size)
        ]

    @property
    def endpoints(self) -> list[str]:
        """Every member's host:port, in member order."""
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and wait until each answers /health (the cluster has a leader)."""
        for m in self.members:
            m.client_port = m.client_port or free_port(m.host)
            m.peer_port = m.peer_port or free_port(m.host)
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial
            m.spawn()
        for m in self.members:
            m.wait_ready(timeout)

    def stop(self) -> None:
        """Stop every member."""
        for m in self.members:
            m.resume()
            m.stop()

    def leader(self, timeout: float = 20.0) -> int:
        """The index of the member that leads now (waits for an election to finish)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.members):
                status = _status(m)
                if status is not None and status[0] == status[1]:
                    return i
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"no etcd member leads after {timeout:.0f}s")
            time.sleep(0.05)

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed or stopped member again, on its ports and with its data."""
        m = self.members[index]
        m.spawn()
        m.wait_ready(timeout)


def _status(member: EtcdProcess) -> tuple[int, int] | None:
    """(this member's id, the leader's id) from the member's HTTP gateway, or None if it cannot say."""
    if member.pid is None:
        return None
    request = urllib.request.Request(f"http://{member.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=1) as resp:  # noqa: S310 - an http:// URL built here
            body = json.load(resp)
        return int(body["header"]["member_id"]), int(body.get("leader", 0))
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out for `host` (bind to 0, read back, release)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
