"""The /ui topology page: plain HTML, CSS and one small script shipped in the package (`static/`).

No build step and no CDN: the page loads nothing but these three files and polls the agent's own /status
(what `meshfed status --json` prints; its `topology` part, federation/agent/topology.py) every two seconds,
and /gateways when the agent serves it (active probes: ALIVE and latency per gateway). The admin endpoint
serves them (GET only, on the admin address only) with a Content-Security-Policy that lets the page talk to
nothing but that endpoint.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
"""The page's files, installed as package data (pyproject.toml)."""

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
"""Sent with every file of the page."""

PAGES: dict[str, tuple[bytes, str]] = {
    path: ((STATIC / name).read_bytes(), kind)
    for path, name, kind in (("/ui", "index.html", "text/html"), ("/ui/app.js", "app.js", "text/javascript"),
                             ("/ui/style.css", "style.css", "text/css"))
}
"""URL path -> (body, content type), read once when the agent starts (before its loop runs)."""
