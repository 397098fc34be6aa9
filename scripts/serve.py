#!/usr/bin/env python3
"""A small static file server for the demo and the tests (Python standard library only).

    python3 scripts/serve.py --port 8080 --mount /=www --mount /pkg=pkg

Sends correct MIME types (application/wasm for .wasm, text/javascript for modules), answers
single-range requests (`Range: bytes=a-b`, `a-`, `-n`) with 206 and Content-Range, unsatisfiable
ones with 416, and never serves a path outside its mounts. Where the root mount's index.html
declares a Content-Security-Policy in a <meta> tag, every answer carries it as a header (the one
form workers obey), so the policy is written once, in the page.
"""

import argparse
import html
import os
import posixpath
import re
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from http_range import Unsatisfiable, content_range, parse_range, send_file_bytes

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
    ".ts": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}


def page_policy(index):
    """The Content-Security-Policy an index.html's <meta http-equiv> declares, or None."""
    if not index.is_file():
        return None
    found = re.search(r'<meta\s+http-equiv="Content-Security-Policy"\s+content="([^"]*)"', index.read_text(encoding="utf-8"))
    return html.unescape(found.group(1)) if found else None


class Handler(BaseHTTPRequestHandler):
    mounts = []  # (url prefix, directory), longest prefix first
    policy = None  # the page's Content-Security-Policy, sent with every answer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if os.environ.get("IMVAR_SERVE_QUIET") != "1":
            sys.stderr.write("serve: " + fmt % args + "\n")

    def resolve(self):
        path = posixpath.normpath(self.path.split("?", 1)[0].split("#", 1)[0])
        for prefix, root in self.mounts:
            if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/") or prefix == "/":
                rel = path[len(prefix.rstrip("/")):].lstrip("/")
                target = (root / rel).resolve()
                if target != root and root not in target.parents:
                    return None
                if target.is_dir():
                    target = target / "index.html"
                return target if target.is_file() else None
        return None

    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def serve(self, head):
        target = self.resolve()
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = target.stat().st_size
        try:
            byte_range = parse_range(self.headers.get("Range"), size)
        except Unsatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", content_range(size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = byte_range or (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if byte_range else HTTPStatus.OK)
        if byte_range:
            self.send_header("Content-Range", content_range(size, byte_range))
        self.send_header("Content-Type", MIME.get(target.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-cache")
        if self.policy:
            self.send_header("Content-Security-Policy", self.policy)
        self.end_headers()
        if not head:
            try:
                send_file_bytes(target, start, end - start + 1, self.wfile)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away mid-answer (a reload); nothing to tell it


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--mount", action="append", default=[], metavar="URL=DIR",
                        help="serve DIR under the URL prefix (repeatable)")
    args = parser.parse_args()
    mounts = []
    for spec in args.mount or ["/=."]:
        prefix, _, directory = spec.partition("=")
        mounts.append(("/" + prefix.strip("/"), Path(directory).resolve()))
    Handler.mounts = sorted(mounts, key=lambda m: -len(m[0]))
    Handler.policy = next((page_policy(d / "index.html") for p, d in mounts if p == "/"), None)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving on http://{args.host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
