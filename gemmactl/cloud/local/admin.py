"""Local Secrets, Registry, Iam and Services: small JSON state under the local root, secrets as 0600 files.

Layout under `<root>`:
  secrets/<name>             the latest value, mode 0600 (directory 0700): what a local job reads
  secrets/.versions/<name>/N every version ever added, 0600; the directory's existence is the secret's
  state/admin.json           service accounts, repositories, images, IAM policies with etags
The local backend needs no APIs, accounts or registries; they are kept so every port behaves the same
way on every backend (create twice → AlreadyExistsError, get missing → NotFoundError).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gemmactl.cloud.ports import (
    Binding,
    Policy,
    ProjectInfo,
    RepositoryInfo,
    SecretInfo,
    SecretText,
    ServiceAccountInfo,
)
from gemmactl.errors import AlreadyExistsError, CloudError, NotFoundError

LOCAL_PROJECT_NUMBER = "0"


def write_private(path: Path, text: str) -> None:
    """Atomically write `text` to `path` with mode 0600, its directory 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalState:
    """One JSON document of admin state, read and rewritten whole (it stays tiny)."""

    def __init__(self, root: Path) -> None:
        self.path = root / "state" / "admin.json"

    def load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise CloudError(f"local state {self.path} is corrupt: {e}") from None

    @contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        data = self.load()
        yield data
        write_private(self.path, json.dumps(data, indent=1, sort_keys=True))

    def get_policy(self, key: str) -> Policy:
        return _policy_from_json(self.load().get("policies", {}).get(key))

    def set_policy(self, key: str, policy: Policy) -> Policy:
        with self.edit() as data:
            policies = data.setdefault("policies", {})
            current = _policy_from_json(policies.get(key))
            if policy.etag != current.etag:
                raise CloudError(f"etag mismatch on the local IAM policy of {key}: re-read and retry")
            new_etag = str(int(current.etag or "0") + 1)
            policies[key] = _policy_to_json(policy, new_etag)
        return _policy_from_json(policies[key])


def _policy_to_json(policy: Policy, etag: str) -> dict[str, Any]:
    bindings = [{"role": b.role, "members": sorted(b.members)} for b in policy.bindings]
    return {"bindings": bindings, "etag": etag, "version": policy.version}


def _policy_from_json(data: dict[str, Any] | None) -> Policy:
    if not data:
        return Policy(etag="0")
    bindings = tuple(Binding(b["role"], frozenset(b["members"])) for b in data.get("bindings", []))
    return Policy(bindings=bindings, etag=data.get("etag"), version=data.get("version", 3))


class LocalSecrets:
    """ports.Secrets as 0600 files; values are stripped (SecretText) and never logged."""

    def __init__(self, root: Path, state: LocalState) -> None:
        self.dir, self.state = root / "secrets", state

    def _versions(self, secret: str) -> Path:
        return self.dir / ".versions" / secret

    def _existing(self, secret: str) -> Path:
        path = self._versions(secret)
        if not path.is_dir():
            raise NotFoundError(f"local secret {secret} not found", resource=secret,
                                hint="run `gemmactl --local init`")
        return path

    def _count(self, secret: str) -> int:
        return sum(1 for p in self._existing(secret).iterdir() if p.name.isdigit())

    def get_secret(self, secret: str) -> SecretInfo:
        return SecretInfo(secret, self._count(secret))

    def create_secret(self, secret: str, *, labels: dict[str, str]) -> SecretInfo:
        path = self._versions(secret)
        if path.is_dir():
            raise AlreadyExistsError(f"local secret {secret} already exists", resource=secret)
        for d in (self.dir, self.dir / ".versions", path):
            d.mkdir(exist_ok=True, parents=True, mode=0o700)
            os.chmod(d, 0o700)
        return SecretInfo(secret, 0)

    def latest_value(self, secret: str) -> SecretText | None:
        if not self._count(secret):
            return None
        return SecretText((self.dir / secret).read_text(encoding="utf-8"))

    def add_version(self, secret: str, value: SecretText) -> str:
        version = str(self._count(secret) + 1)
        write_private(self._versions(secret) / version, value.reveal())
        write_private(self.dir / secret, value.reveal())
        return version

    def get_policy(self, secret: str) -> Policy:
        self._existing(secret)
        return self.state.get_policy(f"secret/{secret}")

    def set_policy(self, secret: str, policy: Policy) -> Policy:
        self._existing(secret)
        return self.state.set_policy(f"secret/{secret}", policy)


class LocalRegistry:
    """ports.Registry: repositories and built images recorded in the state file."""

    def __init__(self, state: LocalState, project: str) -> None:
        self.state, self.project = state, project

    def get_repository(self, region: str, repository: str) -> RepositoryInfo:
        if f"{region}/{repository}" not in self.state.load().get("repositories", []):
            raise NotFoundError(f"local repository {repository} not found", resource=repository)
        return RepositoryInfo(repository, region)

    def create_repository(self, region: str, repository: str, *, description: str) -> RepositoryInfo:
        with self.state.edit() as data:
            repos = data.setdefault("repositories", [])
            if f"{region}/{repository}" in repos:
                raise AlreadyExistsError(f"local repository {repository} already exists", resource=repository)
            repos.append(f"{region}/{repository}")
        return RepositoryInfo(repository, region)

    def image_exists(self, image: str) -> bool:
        return image in self.state.load().get("images", [])

    def add_image(self, image: str) -> None:
        """Record a locally built image (not a port method: the local build calls it)."""
        with self.state.edit() as data:
            images = data.setdefault("images", [])
            if image not in images:
                images.append(image)


class LocalIam:
    """ports.Iam: service accounts and the project policy in the state file (nothing enforces them)."""

    def __init__(self, state: LocalState, project: str) -> None:
        self.state, self.project = state, project

    def get_service_account(self, email: str) -> ServiceAccountInfo:
        account = self.state.load().get("service_accounts", {}).get(email)
        if account is None:
            raise NotFoundError(f"local service account {email} not found", resource=email)
        return ServiceAccountInfo(email, account["account_id"], account.get("display_name", ""))

    def create_service_account(self, account_id: str, *, display_name: str,
                               description: str) -> ServiceAccountInfo:
        email = f"{account_id}@{self.project}.iam.gserviceaccount.com"
        with self.state.edit() as data:
            accounts = data.setdefault("service_accounts", {})
            if email in accounts:
                raise AlreadyExistsError(f"local service account {email} already exists", resource=email)
            accounts[email] = {"account_id": account_id, "display_name": display_name}
        return ServiceAccountInfo(email, account_id, display_name)

    def get_project_policy(self) -> Policy:
        return self.state.get_policy("project")

    def set_project_policy(self, policy: Policy) -> Policy:
        return self.state.set_policy("project", policy)


class LocalServices:
    """ports.Services: the local backend needs no APIs, so every one reports enabled."""

    def __init__(self, project: str) -> None:
        self.project = project

    def get_project(self) -> ProjectInfo:
        return ProjectInfo(self.project, LOCAL_PROJECT_NUMBER)

    def enabled(self, services: list[str]) -> dict[str, bool]:
        return dict.fromkeys(services, True)

    def enable(self, services: list[str]) -> None:
        return None
