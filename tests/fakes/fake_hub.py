"""A fake Hugging Face Hub on 127.0.0.1 (point HF_ENDPOINT at `hub.url`), speaking what huggingface_hub 1.33 calls.

Endpoints (paths as read from huggingface_hub/hf_api.py and file_download.py):
  GET  /api/{models|datasets}/{repo}[/revision/{rev}]        model_info / dataset_info
  GET  /api/{models|datasets}/{repo}/tree/{rev}[/{path}]      list_repo_tree (?recursive, Link-header pages)
  POST /api/{models|datasets}/{repo}/paths-info/{rev}         get_paths_info (form field `paths`)
  GET|HEAD /[datasets/]{repo}/resolve/{rev}/{path}            file bytes (Range → 206), X-Repo-Commit, ETag
Knobs: `repo.gated` (401/403 + X-Error-Code: GatedRepo), `tokens` (valid bearer tokens), `corrupt` (paths
served with a flipped byte), `fail_next(kind, path=…)` with kind 429 | 503 | reset (connection cut
mid-file), `fault_rate` (that share of requests fails with a random 429/503/reset), `retry_after`,
`link_mbps` (None: unthrottled; else each file body is paced to that many MB/s, a per-connection WAN link).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    kind: str  # "model" | "dataset"
    files: dict[str, bytes]
    lfs: set[str]
    sha: str
    gated: bool = False
    branches: dict[str, str] = field(default_factory=dict)

    def entry(self, path: str) -> dict:
        data = self.files[path]
        item = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        if path in self.lfs:
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return item


@dataclass
class Fault:
    kind: str  # "429" | "503" | "reset"
    path: str | None = None  # only requests whose path contains this


class FakeHub:
    """Start with `with FakeHub() as hub:`; add repos with `hub.add_repo(...)`."""

    def __init__(self, *, seed: int = 0) -> None:
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.tokens: set[str] = set()  # when non-empty, other bearer tokens get 401
        self.corrupt: set[str] = set()
        self.faults: list[Fault] = []
        self.fault_rate = 0.0
        self.retry_after: str | None = "0"
        self.page_size = 50
        self.link_mbps: float | None = None
        self.requests: list[dict] = []
        self.faults_served = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ setup

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, kind: str = "model", lfs: set[str] | None = None,
                 gated: bool = False) -> FakeRepo:
        """Files above 1 kB are LFS unless `lfs` says otherwise; the sha is derived from the contents."""
        lfs = {p for p, d in files.items() if len(d) > 1024} if lfs is None else lfs
        digest = hashlib.sha1(json.dumps(sorted((p, git_oid(d)) for p, d in files.items())).encode()).hexdigest()
        repo = FakeRepo(repo_id, kind, dict(files), lfs, digest, gated, {"main": digest})
        self.repos[(kind, repo_id)] = repo
        return repo

    def fail_next(self, kind: str, *, path: str | None = None, times: int = 1) -> None:
        self.faults.extend(Fault(kind, path) for _ in range(times))

    def downloads(self, path: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["resolve"] and r["method"] == "GET"
                and (path is None or r["path"].endswith("/" + path))]

    # ------------------------------------------------------------------ server

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _take_fault(self, path: str, is_download: bool) -> str | None:
        with self._lock:
            for i, fault in enumerate(self.faults):
                if fault.path is None or fault.path in path:
                    del self.faults[i]
                    self.faults_served += 1
                    return fault.kind
            if self.fault_rate and self._rng.random() < self.fault_rate:
                self.faults_served += 1
                return self._rng.choice(["429", "503", "reset"] if is_download else ["429", "503"])
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    # ------------------------------------------------------------------ routing

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        resolve = _RESOLVE.match(path)
        auth = self.headers.get("Authorization", "")
        self.hub.requests.append({"method": method, "path": path, "resolve": bool(resolve), "auth": bool(auth),
                                  "range": self.headers.get("Range"), "authorization": auth})
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        if auth and self.hub.tokens and auth.removeprefix("Bearer ") not in self.hub.tokens:
            return self._error(401, None, "Invalid credentials in Authorization header")
        fault = self.hub._take_fault(path, bool(resolve) and method == "GET")
        if fault in ("429", "503"):
            return self._error(int(fault), None, "injected", retry_after=fault == "429")
        if resolve:
            return self._resolve(method, resolve, auth, reset=fault == "reset")
        api = _API.match(path)
        if not api:
            return self._error(404, None, "no such route")
        return self._api(api, query, body)

    def _repo(self, kind: str, repo_id: str) -> FakeRepo | None:
        return self.hub.repos.get((kind, repo_id))

    def _api(self, m: re.Match, query: dict, body: bytes) -> None:
        kind = "model" if m.group(1) == "models" else "dataset"
        repo = self._repo(kind, m.group(2))
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        action, rev = m.group(3), m.group(4)
        sha = repo.branches.get(rev or "main", rev if rev == repo.sha else None)
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if action in (None, "revision"):
            return self._json({"id": repo.repo_id, "_id": "x", "sha": sha, "private": False,
                               "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
                               "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
        if action == "paths-info":
            wanted = parse_qs(body.decode()).get("paths", [])
            return self._json([repo.entry(p) for p in wanted if p in repo.files])
        return self._tree(repo, (m.group(5) or "").strip("/"), query)

    def _tree(self, repo: FakeRepo, under: str, query: dict) -> None:
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        paths = sorted(p for p in repo.files if not under or p.startswith(under + "/"))
        entries, folders = [], set()
        for p in paths:
            rest = p[len(under) + 1:] if under else p
            if "/" in rest and not recursive:
                folders.add((under + "/" if under else "") + rest.split("/")[0])
                continue
            entries.append(repo.entry(p))
        entries = [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)] + entries
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.hub.page_size]
        link = None
        if start + self.hub.page_size < len(entries):
            nxt = f"{self.hub.url}{urlsplit(self.path).path}?recursive={recursive}&cursor={start + self.hub.page_size}"
            link = f'<{nxt}>; rel="next"'
        self._json(page, extra={"Link": link} if link else None)

    def _resolve(self, method: str, m: re.Match, auth: str, *, reset: bool) -> None:
        kind = "dataset" if m.group(1) else "model"
        repo = self._repo(kind, m.group(2))
        if repo is None:
            return self._error(404 if auth else 401, "RepoNotFound", "Repository not found")
        if repo.gated:
            message = f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(403 if auth else 401, "GatedRepo", message)
        rev, path = m.group(3), m.group(4)
        sha = repo.branches.get(rev, rev if rev == repo.sha else None)
        if sha is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if path not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found")
        self._send_file(method, repo, sha, path, reset)

    def _send_file(self, method: str, repo: FakeRepo, sha: str, path: str, reset: bool) -> None:
        data = repo.files[path]
        if path in self.hub.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = _range_start(self.headers.get("Range"))
        status = 206 if start else 200
        chunk = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", sha)
        entry = repo.entry(path)
        self.send_header("ETag", f'"{entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]}"')
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if method == "HEAD":
            return
        if reset:  # half the body, then the connection drops, as a flaky CDN does
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write_paced(chunk)

    def _write_paced(self, data: bytes, step: int = 64 * 1024) -> None:
        rate = self.hub.link_mbps
        if not rate:
            self.wfile.write(data)
            return
        view, started = memoryview(data), time.monotonic()
        for sent in range(0, len(view), step):
            self.wfile.write(view[sent:sent + step])
            ahead = min(sent + step, len(view)) / (rate * 1e6) - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    # ------------------------------------------------------------------ responses

    def _json(self, data: object, extra: dict | None = None) -> None:
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str | None, message: str, *, retry_after: bool = False) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("X-Error-Message", message)
        if code:
            self.send_header("X-Error-Code", code)
        if retry_after and self.hub.retry_after is not None:
            self.send_header("Retry-After", self.hub.retry_after)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


def _range_start(header: str | None) -> int:
    m = re.match(r"bytes=(\d+)-", header or "")
    return int(m.group(1)) if m else 0
