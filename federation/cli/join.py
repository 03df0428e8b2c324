"""`meshfed join-token create|ls|serve`, and the VM's side of a join (`meshfed vm install --join TOKEN`).

The CA holder creates tokens (kept hashed in the CA directory, `join-tokens.json`, 0600) and runs the
signing endpoint (`serve`: HTTPS, its certificate issued by the root). A VM sends its CSR and the token's
secret; the endpoint marks the token used before it answers, so a token works once even if the answer
is lost. Why a signing endpoint and not the registry: docs/security.md ("Joining a VM").
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import http.server
import json
import logging
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from federation.core.errors import PolicyError
from federation.core.policy.units import parse_duration
from federation.core.ratelimit import LogLimiter
from federation.pki.issuing import (
    SITE_CERT,
    SITE_KEY,
    TRUST_BUNDLE,
    PkiError,
    cert_pem,
    key_pem,
    load_authority,
    load_certs,
    site_of_ca,
)
from federation.pki.joining import (
    JoinRefused,
    check_issued,
    check_request,
    decode_token,
    endpoint_cert,
    entries_from_json,
    entries_to_json,
    new_key,
    new_token,
    redeem,
    root_fingerprint,
    sign_csr,
    site_csr,
)
from federation.runtime.files import write_private

log = logging.getLogger(__name__)
STORE, LOCK = "join-tokens.json", ".join-tokens.lock"
MAX_REQUEST = 64 * 1024


def add_commands(sub: Any) -> None:
    """Register `join-token create|ls|serve`."""
    jt = sub.add_parser("join-token", help="one-time tokens that let a VM join as a site (run where the root CA is)")
    jsub = jt.add_subparsers(dest="join_command", metavar="COMMAND", required=True)
    create = jsub.add_parser("create", help="print a one-time token for a site")
    create.add_argument("--site", required=True, help="the site the VM joins as")
    create.add_argument("--ttl", default="1h", help="how long the token may be used (default 1h, at most 7d)")
    create.add_argument("--url", required=True, help="where `join-token serve` is reached, https://HOST:PORT")
    create.set_defaults(handler=cmd_create)
    ls = jsub.add_parser("ls", help="list tokens: site, expiry, used or not")
    ls.set_defaults(handler=cmd_ls)
    serve = jsub.add_parser("serve", help="run the signing endpoint VMs send their CSR to")
    serve.add_argument("--listen", default="0.0.0.0:15017", help="HOST:PORT (default 0.0.0.0:15017)")
    serve.add_argument("--host", action="append", default=[],
                       help="name or address VMs dial (repeat; default the listen address)")
    serve.set_defaults(handler=cmd_serve)
    for p in (create, ls, serve):
        p.add_argument("--ca", required=True, type=Path, help="directory made by `meshfed ca init`")


def cmd_create(args: argparse.Namespace) -> int:
    try:
        ttl = dt.timedelta(seconds=parse_duration("--ttl", args.ttl, 1.0, 7 * 86400.0))
        if not args.url.startswith("https://"):
            raise JoinRefused("--url must be https://HOST:PORT (the endpoint of `meshfed join-token serve`)")
        root = load_authority(args.ca)
        token, entry = new_token(args.site, ttl, dt.datetime.now(dt.UTC), args.url.rstrip("/"), root.cert)
        with _locked(args.ca) as entries:
            entries[token.id] = entry
    except (JoinRefused, PkiError, PolicyError, OSError) as exc:
        print(f"meshfed join-token create: {exc}", file=sys.stderr)
        return 1
    expires = dt.datetime.fromtimestamp(token.expires, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    print(token.encode())
    print(f"# one use, for site {token.site}, until {expires}; on the VM: "
          f"meshfed vm install --join TOKEN --network NET --registry HOST:PORT", file=sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    try:
        with _locked(args.ca, write=False) as entries:
            rows = sorted(entries.items(), key=lambda kv: kv[1].created)
    except OSError as exc:
        print(f"meshfed join-token ls: {exc}", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC).timestamp()
    print(f"{'ID':<18}{'SITE':<20}{'EXPIRES':<22}STATE")
    for tid, e in rows:
        state = (f"used {_when(e.used)} by {e.used_by}" if e.used is not None
                 else "expired" if now >= e.expires else "unused")
        print(f"{tid:<18}{e.site:<20}{_when(e.expires):<22}{state}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    try:
        server = JoinServer(args.ca, host or "0.0.0.0", int(port), args.host or [host or "127.0.0.1"])  # noqa: S104
    except (PkiError, OSError, ValueError) as exc:
        print(f"meshfed join-token serve: {exc}", file=sys.stderr)
        return 1
    print(f"signing endpoint on https://{server.address[0]}:{server.address[1]} (root {server.fingerprint[:16]}...)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


class JoinServer:
    """The signing endpoint: GET /v1/root (the root PEM), POST /v1/join (token + CSR -> site certificate)."""

    def __init__(self, ca_dir: Path, host: str, port: int, names: list[str]) -> None:
        self.ca_dir = ca_dir
        self.root = load_authority(ca_dir)
        self.fingerprint = root_fingerprint(self.root.cert)
        issued = endpoint_cert(self.root, names, dt.datetime.now(dt.UTC))
        self._tmp = tempfile.TemporaryDirectory(prefix="meshfed-join-")
        chain, key = Path(self._tmp.name) / "join.crt", Path(self._tmp.name) / "join.key"
        write_private(chain, cert_pem(issued.cert, self.root.cert))
        write_private(key, issued.key_pem())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(chain), str(key))
        self.refusals = LogLimiter(interval=60.0, capacity=1024)
        handler = _handler(self)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("Server", (http.server.ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server_cls((host, port), handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.address = self.httpd.server_address[:2]

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> threading.Thread:
        """Serve in a thread (tests)."""
        thread = threading.Thread(target=self.serve_forever, name="join-server", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._tmp.cleanup()

    def join(self, request: dict[str, Any], peer: str) -> dict[str, str]:
        """Redeem the token (persisted before anything is signed) and sign the CSR; JoinRefused says why."""
        try:
            token_id, secret, site, csr = (str(request[k]) for k in ("id", "secret", "site", "csr"))
        except (KeyError, TypeError):
            raise JoinRefused("a join request names id, secret, site and csr") from None
        check_request(token_id, site)
        now = dt.datetime.now(dt.UTC)
        with _locked(self.ca_dir) as entries:
            entries.update(redeem(entries, token_id, secret, site, now, by=peer))
        cert = sign_csr(self.root, site, csr.encode(), now)
        log.info("join: token %s used by %s: issued the intermediate of site %s", token_id, peer, site)
        return {"siteCert": cert_pem(cert, self.root.cert).decode(), "trustBundle": cert_pem(self.root.cert).decode()}


def join(token_text: str, site: str | None = None, timeout: float = 15.0) -> dict[str, bytes]:
    """The VM's side: make the site key here, send the CSR with the token, check what comes back.

    Returns the site bundle files (site.crt, site.key, trust-bundle.pem) for `meshfed vm install`."""
    token = decode_token(token_text)
    if site is not None and site != token.site:
        raise JoinRefused(f"the token is for site {token.site}, not {site}")
    if dt.datetime.now(dt.UTC).timestamp() >= token.expires:
        raise JoinRefused(f"the join token expired at {_when(token.expires)}; ask for a new one")
    root_pem = _fetch_root(token, timeout)
    root = load_certs(root_pem)[0]
    if root_fingerprint(root) != token.root_sha256:
        raise JoinRefused(f"{token.url} presents another root than the token names: not this mesh's endpoint")
    key = new_key()  # made here; only the CSR leaves the VM
    request = {"id": token.id, "secret": token.secret, "site": token.site, "csr": site_csr(token.site, key).decode()}
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    ctx.check_hostname = False  # the endpoint is pinned by its root, named in the token, not by a host name
    req = urllib.request.Request(f"{token.url}/v1/join", data=json.dumps(request).encode(),  # noqa: S310
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310 - https only
            answer = json.load(resp)
    except urllib.error.HTTPError as exc:
        raise JoinRefused(_error(exc)) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise JoinRefused(f"cannot reach the signing endpoint {token.url}: {exc}") from None
    certs = load_certs(str(answer["siteCert"]).encode())
    check_issued(certs[0], key, token.site, root)
    return {SITE_CERT: str(answer["siteCert"]).encode(), SITE_KEY: key_pem(key),
            TRUST_BUNDLE: str(answer["trustBundle"]).encode()}


def joined_site(directory: Path) -> str | None:
    """The site a directory already holds a valid identity for (a rerun of install, after a reboot)."""
    try:
        auth = load_authority(directory, SITE_CERT, SITE_KEY)
        if auth.cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            return None
        return site_of_ca(auth.cert)
    except PkiError:
        return None


# ---------------------------------------------------------------- private


def _handler(server: JoinServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/v1/root":
                self._send(404, {"error": "not found"})
                return
            body = cert_pem(server.root.cert)
            self.send_response(200)
            self.send_header("Content-Type", "application/pem-certificate-chain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            peer = self.client_address[0]
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/v1/join" or not 0 < length <= MAX_REQUEST:
                self._send(400, {"error": "POST /v1/join with a JSON body of at most 64 KiB"})
                return
            try:
                answer = server.join(json.loads(self.rfile.read(length)), peer)
            except JoinRefused as exc:
                if server.refusals.allow((peer, str(exc)[:40]), time.monotonic()):
                    log.warning("join: refused %s: %s", peer, exc)
                self._send(403, {"error": str(exc)})
                return
            except ValueError:
                self._send(400, {"error": "the body is not JSON"})
                return
            self._send(200, answer)

        def _send(self, status: int, obj: dict[str, str]) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("join endpoint: %s", format % args)

    return Handler


@contextmanager
def _locked(ca_dir: Path, write: bool = True) -> Iterator[dict[str, Any]]:
    """The token store, under an exclusive lock; written back (0600, atomically) when `write`."""
    with open(ca_dir / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = ca_dir / STORE
        entries = entries_from_json(path.read_bytes()) if path.exists() else {}
        yield entries
        if write:
            write_private(path, entries_to_json(entries))


def _fetch_root(token: Any, timeout: float) -> bytes:
    """The root PEM the endpoint offers, fetched without trusting it yet (the token's hash decides)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{token.url}/v1/root", timeout=timeout, context=ctx) as resp:  # noqa: S310
            data: bytes = resp.read(64 * 1024)
    except (urllib.error.URLError, OSError) as exc:
        raise JoinRefused(f"cannot reach the signing endpoint {token.url}: {exc}") from None
    return data


def _error(exc: urllib.error.HTTPError) -> str:
    with exc:
        try:
            return str(json.loads(exc.read()).get("error", exc))
        except ValueError:
            return f"the signing endpoint answered {exc.code}"


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
