"""A local stand-in for Google's REST APIs (Run v2, Secret Manager, Artifact Registry, IAM, Resource Manager,
Service Usage, Logging, Cloud Build) on 127.0.0.1: stateful, and recording every request so adapter tests
can assert exactly what Google would receive. Service behaviour lives in tests/fakes/gcp_services.py.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.gcp_services import ApiError, GoogleState, routes

OVERRIDE_APIS = (
    "RUN", "SECRETMANAGER", "ARTIFACTREGISTRY", "CLOUDBUILD", "LOGGING", "SERVICEUSAGE", "IAM",
    "CLOUDRESOURCEMANAGER",
)


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str  # percent-decoded
    query: dict[str, Any]  # single values unwrapped; `$alt` dropped (every GAPIC REST call sends it)
    body: Any
    headers: dict[str, str] = field(repr=False, default_factory=dict)
    raw: bytes = field(repr=False, default=b"")


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    error: ApiError
    times: int


class FakeGoogle:
    """Start with `start()`; point CLOUDSDK_API_ENDPOINT_OVERRIDES_* at `url + "/"`."""

    def __init__(self, project: str = "test-project", number: str = "123456789012") -> None:
        self.state = GoogleState(project=project, number=number)
        self.requests: list[Recorded] = []
        self._failures: list[_Failure] = []
        self._routes = routes(self.state)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # ---------------------------------------------------------------- test controls

    def fail(
        self,
        method: str,
        path_regex: str,
        code: int,
        status: str,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """The next `times` matching requests get this JSON error (with an ErrorInfo when `reason` is given)."""
        error = ApiError(code, status, message, reason=reason, metadata=metadata)
        self._failures.append(_Failure(method, re.compile(path_regex), error, times))

    def find(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        """Recorded requests, filtered by method and a regex searched in the path."""
        return [
            r for r in self.requests
            if (method is None or r.method == method) and (path is None or re.search(path, r.path))
        ]

    def mutations(self) -> list[Recorded]:
        """Requests that change state (reads via POST, like entries:list or getIamPolicy, excluded)."""
        reads = re.compile(r"(:getIamPolicy|:batchGet|entries:list|:access)$")
        return [r for r in self.requests if r.method != "GET" and not reads.search(r.path)]

    # ---------------------------------------------------------------- serving

    def handle(self, method: str, raw_path: str, body_bytes: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        query = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        query.pop("$alt", None)
        body = json.loads(body_bytes) if body_bytes.strip() else None
        with self._lock:
            self.requests.append(Recorded(method, path, query, body, headers, body_bytes))
            try:
                self._inject(method, path)
                return 200, self._dispatch(method, path, query, body)
            except ApiError as e:
                return e.code, e.body()

    def _inject(self, method: str, path: str) -> None:
        for f in self._failures:
            if f.times > 0 and f.method == method and f.pattern.search(path):
                f.times -= 1
                raise f.error

    def _dispatch(self, method: str, path: str, query: dict[str, Any], body: Any) -> Any:
        for route_method, pattern, handler in self._routes:
            if route_method == method and (m := pattern.fullmatch(path)):
                return handler(m, query, body)
        raise ApiError(404, "NOT_FOUND", f"no fake handler for {method} {path}")

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                code, payload = fake.handle(self.command, self.path, data, dict(self.headers))
                out = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def overrides(self) -> dict[str, str]:
        """The env vars that route every REST client here, in gcloud's form (trailing slash)."""
        return {f"CLOUDSDK_API_ENDPOINT_OVERRIDES_{api}": f"{self.url}/" for api in OVERRIDE_APIS}
