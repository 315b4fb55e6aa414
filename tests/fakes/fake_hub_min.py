"""A minimal fake Hugging Face Hub on 127.0.0.1: whoami-v2 and model auth-check, with gated repos.

Just enough for `doctor`'s token and model-access rows; the staging fake (fake_hub.py) is a separate,
fuller one. Responses copy the Hub's: 401 for a bad token, 403 + `X-Error-Code: GatedRepo` for a gated
repo the user has not been granted, 404 + `X-Error-Code: RepoNotFound` for an unknown repo.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubState:
    users: dict[str, str] = field(default_factory=dict)  # token -> user name
    models: dict[str, bool] = field(default_factory=dict)  # repo id -> gated
    granted: set[tuple[str, str]] = field(default_factory=set)  # (user, repo id) allowed on gated repos
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, authorization)


class FakeHubMin:
    def __init__(self) -> None:
        self.state = HubState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHubMin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_user(self, token: str, name: str) -> None:
        self.state.users[token] = name

    def add_model(self, repo_id: str, *, gated: bool = False, granted_to: tuple[str, ...] = ()) -> None:
        self.state.models[repo_id] = gated
        self.state.granted |= {(user, repo_id) for user in granted_to}


def _handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            auth = self.headers.get("Authorization", "")
            state.requests.append(("GET", self.path, auth))
            user = state.users.get(auth.removeprefix("Bearer ").strip())
            if self.path == "/api/whoami-v2":
                if user is None:
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                else:
                    self._send(200, {"type": "user", "name": user, "fullname": user.title()})
            elif self.path.startswith("/api/models/") and self.path.endswith("/auth-check"):
                self._auth_check(self.path[len("/api/models/"):-len("/auth-check")], user)
            else:
                self._send(404, {"error": "not found"})

        def _auth_check(self, repo_id: str, user: str | None) -> None:
            if repo_id not in state.models:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            elif state.models[repo_id] and (user, repo_id) not in state.granted:
                message = f"Access to model {repo_id} is restricted. You must have access to it."
                code = 401 if user is None else 403
                self._send(code, {"error": message}, {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
            else:
                self._send(200, {})

    return Handler
