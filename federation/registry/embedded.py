"""An etcd of our own, run as a child process, for a site with no etcd endpoints configured.

Also what the test suite uses to run a real etcd: same code, same flags.
"""

from __future__ import annotations

import contextlib
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
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """host:port clients connect to."""
        return f"{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        """The child's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd and wait until it answers /health; ports picked once, then kept across restarts."""
        exe = shutil.which(self.binary) or (self.binary if os.path.exists(self.binary) else None)
        if exe is None:
            raise ConfigError(
                f"registry.endpoints is empty, so meshfed runs its own etcd, but no {self.binary!r} binary is "
                "on PATH: install Debian's etcd-server, or set registry.endpoints"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.client_port:
            self.client_port = free_port(self.host)
        if not self.peer_port:
            self.peer_port = free_port(self.host)
        scheme = "https" if self.tls else "http"
        client_url = f"{scheme}://{self.host}:{self.client_port}"
        peer_url = f"http://{self.host}:{self.peer_port}"
        args = [
            exe,
            "--name", "meshfed",
            "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"meshfed={peer_url}",
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
        self._wait_ready(timeout)
        (self.data_dir / ENDPOINT_FILE).write_text(self.endpoint + "\n")
        log.info("embedded etcd pid %d serving %s", self._proc.pid, client_url)

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out for `host` (bind to 0, read back, release)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
