"""A sample HTTP service for the demo: answers every GET with which service and site served it.

    python -m federation.devkit.sample --listen 198.18.1.11:8080 --service web --site east
"""

from __future__ import annotations

import argparse
import http.server
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="IP:port")
    parser.add_argument("--service", required=True)
    parser.add_argument("--site", required=True)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    body = b""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    body = f"{args.service} served by {args.site} ({host}:{server.server_address[1]})\n".encode()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"sample {args.service} of site {args.site} on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
