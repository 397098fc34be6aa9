#!/usr/bin/env python3
"""A local stand-in for the Hugging Face Hub, for tests (Python standard library only).

    python3 scripts/hub_standin.py --port 0 --repo imvar-tests/tiny=tests/fixtures/tiny-sd-image-variations

Prints `hub-standin http://127.0.0.1:PORT` once listening. It behaves like the Hub where imvar
relies on it:
- `GET|HEAD /{owner}/{name}/resolve/{revision}/{path}`: the revision is one URL-encoded path
  segment (`refs%2Fpr%2F20`) and any revision serves the folder. Each revision has its own
  commit (`X-Repo-Commit`, from the revision, the files and their ETags); a request for a commit
  announced before counts as one for its revision (faults, log). Small files are answered
  directly; `*.safetensors` get a 302 to a CDN on another origin (`localhost` instead of
  `127.0.0.1`) carrying `X-Linked-Size`, `X-Linked-Etag` (the sha256) and `X-Repo-Commit`.
- the CDN answers single ranges with 206 + Content-Range (416 when unsatisfiable), whole files
  with 200; CORS everywhere (preflight included) with the Hub's exposed headers.

For tests: `GET /_log` (JSON list of requests: method, path, revision, pinned (asked for by
commit), range, status, bytes, cdn, cut),
`POST /_reset` (clears the log and all faults), and `POST /_faults` with a JSON object that adds a
fault: `{"revision": R (only requests for it), "path": substring of the file path, "times": N
(answers affected, default 1), "kind": "drop" (close the connection without answering, as a
server that is down) | "cut" (close after `after` body bytes) | "ignore_range"
(200 with the whole body) | "slow" (`delay_ms` before answering) | "error" (`status`, default
503) | "long" (a 206 whose Content-Range and body run on to the end of the file, past the range
asked for) | "endless" (no Content-Length and a body that never ends: 200, or 206 naming the range asked
for) | "etag" (new ETag/sha and commit for matching files, `times` ignored) | "header" (the
answer's header `name` says `value` instead, as a hostile server's would; `times` ignored)}`.
"""

import argparse
import hashlib
import json
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from http_range import Unsatisfiable, content_range, parse_range, send_file_bytes

EXPOSED = ("Content-Range, Content-Length, Accept-Ranges, ETag, X-Linked-Size, X-Linked-Etag, "
           "X-Repo-Commit, X-Error-Code")


class State:
    def __init__(self, repos):
        self.repos = repos  # "owner/name" -> folder
        self.lock = threading.Lock()
        self.log = []
        self.faults = []
        self.sha_cache = {}
        self.commits = {}  # commit announced -> its revision

    def sha256(self, path):
        key = (path, path.stat().st_mtime_ns, path.stat().st_size)
        if key not in self.sha_cache:
            self.sha_cache[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self.sha_cache[key]

    def take_fault(self, revision, path, kinds):
        """The first matching fault of one of `kinds`, its count used up."""
        with self.lock:
            for fault in self.faults:
                if fault.get("kind") not in kinds or fault.get("times", 1) <= 0:
                    continue
                if fault.get("revision", revision) != revision or fault.get("path", "") not in path:
                    continue
                if fault["kind"] != "etag":
                    fault["times"] = fault.get("times", 1) - 1
                return fault
        return None

    def header_faults(self, revision, path):
        """Header name (lower case) -> the value a "header" fault puts there instead."""
        with self.lock:
            return {f["name"].lower(): f["value"] for f in self.faults
                    if f.get("kind") == "header" and f.get("revision", revision) == revision and f.get("path", "") in path}

    def etag(self, revision, file_path, disk_path):
        sha = self.sha256(disk_path)
        fault = self.take_fault(revision, file_path, ("etag",))
        if fault:
            sha = hashlib.sha256((sha + fault.get("salt", "changed")).encode()).hexdigest()
        return sha

    def branch_of(self, asked):
        """(revision, pinned): the revision a commit was announced for, or the one asked."""
        with self.lock:
            return (self.commits[asked], True) if asked in self.commits else (asked, False)

    def commit(self, revision, folder):
        digest = hashlib.sha1(revision.encode())
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            digest.update(rel.encode() + self.etag(revision, rel, path).encode())
        with self.lock:
            self.commits[digest.hexdigest()] = revision
        return digest.hexdigest()


class Handler(BaseHTTPRequestHandler):
    state = None
    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        pass

    def send_header(self, name, value):
        # A "header" fault replaces what the stand-in would say there.
        super().send_header(name, getattr(self, "overrides", {}).get(name.lower(), value))

    def cors(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", EXPOSED)

    def do_OPTIONS(self):
        self.send_response(204)
        self.cors()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST")
        self.send_header("Access-Control-Allow-Headers", "Range, Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = urllib.parse.urlsplit(self.path).path
        with self.state.lock:
            if route == "/_reset":
                self.state.log.clear()
                self.state.faults.clear()
            elif route == "/_faults":
                self.state.faults.append(json.loads(body))
            else:
                return self.answer_text(404, "no such control")
        self.answer_text(200, "ok")

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/_log":
            with self.state.lock:
                return self.answer_text(200, json.dumps(self.state.log), "application/json")
        if url.path.startswith("/_cdn/"):
            return self.cdn(url, head)
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", url.path)
        if not match or match.group(1) not in self.state.repos:
            return self.answer_text(404, "Repository not found", error="RepoNotFound")
        repo = match.group(1)
        asked = urllib.parse.unquote(match.group(2))
        revision, self.pinned = self.state.branch_of(asked)
        file_path = urllib.parse.unquote(match.group(3))
        folder = self.state.repos[repo]
        disk = (folder / file_path).resolve()
        if folder not in disk.parents or not disk.is_file():
            self.record(revision, file_path, 404, 0)
            return self.answer_text(404, "Entry not found", error="EntryNotFound")
        commit = self.state.commit(revision, folder)
        self.overrides = self.state.header_faults(revision, file_path)
        if self.fault_answer(revision, file_path, disk):
            return
        if file_path.endswith(".safetensors"):
            sha = self.state.etag(revision, file_path, disk)
            query = urllib.parse.urlencode({"repo": repo, "revision": asked, "path": file_path})
            host_port = self.headers.get("Host", "127.0.0.1").rsplit(":", 1)
            port = host_port[1] if len(host_port) == 2 else "80"
            other = "localhost" if host_port[0] != "localhost" else "127.0.0.1"
            self.record(revision, file_path, 302, 0)
            self.send_response(302)
            self.cors()
            self.send_header("Location", f"http://{other}:{port}/_cdn/{sha}?{query}")
            self.send_header("X-Linked-Size", str(disk.stat().st_size))
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = disk.read_bytes()
        self.record(revision, file_path, 200, len(data))
        self.send_response(200)
        self.cors()
        self.send_header("Content-Type", "application/json" if file_path.endswith(".json") else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"%s"' % hashlib.sha1(data).hexdigest())
        self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def cdn(self, url, head):
        query = dict(urllib.parse.parse_qsl(url.query))
        folder = self.state.repos.get(query.get("repo", ""))
        file_path = query.get("path", "")
        revision, self.pinned = self.state.branch_of(query.get("revision", ""))
        disk = (folder / file_path).resolve() if folder else None
        if disk is None or folder not in disk.parents or not disk.is_file():
            return self.answer_text(404, "no such blob")
        self.overrides = self.state.header_faults(revision, file_path)
        if self.fault_answer(revision, file_path, disk):
            return
        sha = self.state.etag(revision, file_path, disk)
        size = disk.stat().st_size
        wanted = self.headers.get("Range")
        ignore = self.state.take_fault(revision, file_path, ("ignore_range",))
        try:
            # The stand-in honours `bytes=a-` and `bytes=a-b` only: a suffix range gets the whole body.
            byte_range = None if ignore else parse_range(wanted, size, suffix=False)
        except Unsatisfiable:
            self.record(revision, file_path, 416, 0, wanted)
            return self.answer_text(416, "range not satisfiable", extra={"Content-Range": content_range(size)})
        if byte_range and self.state.take_fault(revision, file_path, ("long",)):
            byte_range = (byte_range[0], size - 1)
        start, end = byte_range or (0, size - 1)
        status = 206 if byte_range else 200
        length = end - start + 1
        cut = self.state.take_fault(revision, file_path, ("cut",))
        sent = length if not cut else min(length, int(cut.get("after", 0)))
        self.record(revision, file_path, status, 0 if head else sent, wanted, cut=bool(cut))
        self.send_response(status)
        self.cors()
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{sha}"')
        if byte_range:
            self.send_header("Content-Range", content_range(size, byte_range))
        self.end_headers()
        if head:
            return
        send_file_bytes(disk, start, sent, self.wfile)
        if cut:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)

    def fault_answer(self, revision, file_path, disk):
        """Applies a drop, slow or error fault; True when that was the answer."""
        if self.state.take_fault(revision, file_path, ("drop",)):
            self.record(revision, file_path, 0, 0, self.headers.get("Range"))
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        slow = self.state.take_fault(revision, file_path, ("slow",))
        if slow:
            time.sleep(slow.get("delay_ms", 1000) / 1000)
        if self.state.take_fault(revision, file_path, ("endless",)):
            wanted = self.headers.get("Range")
            status = 206 if wanted else 200
            self.record(revision, file_path, status, 0, wanted)
            self.send_response(status)
            self.cors()
            if wanted:
                size = disk.stat().st_size
                self.send_header("Content-Range", content_range(size, parse_range(wanted, size, suffix=False)))
            self.end_headers()
            self.close_connection = True
            try:
                while True:
                    self.wfile.write(b"\0" * 65536)
            except (ConnectionError, BrokenPipeError):
                pass
            return True
        error = self.state.take_fault(revision, file_path, ("error",))
        if error:
            self.record(revision, file_path, error.get("status", 503), 0, self.headers.get("Range"))
            self.answer_text(error.get("status", 503), "injected failure")
            return True
        return False

    def record(self, revision, file_path, status, sent, wanted=None, cut=False):
        entry = {"method": self.command, "path": file_path, "revision": revision, "pinned": getattr(self, "pinned", False),
                 "range": wanted or self.headers.get("Range"), "status": status, "bytes": sent,
                 "cdn": self.path.startswith("/_cdn/"), "cut": cut}
        with self.state.lock:
            self.state.log.append(entry)

    def answer_text(self, status, text, content_type="text/plain", error=None, extra=None):
        data = text.encode()
        self.send_response(status)
        self.cors()
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if error:
            self.send_header("X-Error-Code", error)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # Clients that hang up (a cancelled or cut download) are part of the tests.
        if not isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=DIR")
    args = parser.parse_args()
    repos = {}
    for spec in args.repo:
        name, _, folder = spec.partition("=")
        repos[name] = Path(folder).resolve()
    Handler.state = State(repos)
    server = Quiet(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"hub-standin http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
