"""FakeCloud: every port in memory, behaving like Google (409s, 404s, etags, versions, injected failures).

Knobs a test turns:
- `fake.fail_next("storage.create_bucket", SomeError(...))`: the next call of that "<port>.<method>" raises;
- `fake.services_disabled_for_calls = N`: the next N calls to storage/secrets/registry/iam raise
  SERVICE_DISABLED, as a freshly enabled Google API does for a minute or two;
- `fake.sa_propagation_calls = N`: the next N policy writes naming a just-created service account fail
  with Google's 400 "Service account ... does not exist";
- `fake.mutations`: every mutating call, in order, so a test asserts a second `init` made none.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from gemmactl.cloud import Cloud
from gemmactl.cloud.ports import (
    BucketInfo,
    ObjectInfo,
    Policy,
    ProjectInfo,
    RepositoryInfo,
    SecretInfo,
    SecretText,
    ServiceAccountInfo,
)
from gemmactl.errors import (
    AlreadyExistsError,
    CloudError,
    NotFoundError,
    PermissionDeniedError,
    ServiceDisabledError,
)
from tests.fakes.fake_jobs import FakeBuilds, FakeJobs, FakeLogs

_MUTATING = {
    "storage.create_bucket", "storage.set_bucket_policy", "storage.write_bytes", "storage.open_writer",
    "storage.delete", "secrets.create_secret", "secrets.add_version", "secrets.set_policy",
    "registry.create_repository", "iam.create_service_account", "iam.set_project_policy",
    "services.enable",
}
# Which Google API each port lives behind, for the SERVICE_DISABLED window.
_PORT_SERVICE = {
    "storage": "storage.googleapis.com", "secrets": "secretmanager.googleapis.com",
    "registry": "artifactregistry.googleapis.com", "iam": "iam.googleapis.com",
}


@dataclass
class _Bucket:
    info: BucketInfo
    labels: dict[str, str]
    policy: Policy
    objects: dict[str, tuple[bytes, ObjectInfo]] = field(default_factory=dict)


@dataclass
class _Secret:
    labels: dict[str, str]
    versions: list[SecretText] = field(default_factory=list)
    policy: Policy = field(default_factory=lambda: Policy(etag="e0"))


class FakeCloud:
    """The in-memory backend; `for_settings` is what the conftest installs behind get_cloud."""

    def __init__(self, project: str = "test-project", *, number: str = "123456789012") -> None:
        self.project, self.number = project, number
        self.mutations: list[str] = []
        self.calls: list[str] = []
        self.failures: dict[str, list[BaseException]] = {}
        self.services_disabled_for_calls = 0
        self.sa_propagation_calls = 0
        self.enabled_services: set[str] = set()
        self.buckets: dict[str, _Bucket] = {}
        self.foreign_buckets: set[str] = set()  # names owned by someone else's project
        self.secret_store: dict[str, _Secret] = {}
        self.repositories: dict[tuple[str, str], RepositoryInfo] = {}
        self.images: set[str] = set()
        self.service_accounts: dict[str, ServiceAccountInfo] = {}
        self.project_policy = Policy(etag="p0")
        self._etags = itertools.count(1)
        self._new_accounts: set[str] = set()
        self.backend = "fake"
        self.storage, self.secrets = FakeStorage(self), FakeSecrets(self)
        self.registry, self.iam, self.services = FakeRegistry(self), FakeIam(self), FakeServices(self)
        self.jobs, self.logs, self.builds = FakeJobs(self), FakeLogs(self), FakeBuilds(self)

    # ------------------------------------------------------------------ test knobs

    def fail_next(self, name: str, error: BaseException) -> None:
        """The next call of `name` ("<port>.<method>") raises `error` (queue several by calling again)."""
        self.failures.setdefault(name, []).append(error)

    def enable_all(self, services: list[str] | None = None) -> None:
        """Pre-enable APIs (a project that was set up by hand)."""
        from gemmactl.setup import REQUIRED_APIS

        self.enabled_services |= set(services or REQUIRED_APIS)

    def for_settings(self, settings: object) -> Cloud:
        return Cloud(
            backend="fake", project=self.project, storage=self.storage, secrets=self.secrets,
            registry=self.registry, iam=self.iam, services=self.services, jobs=self.jobs, logs=self.logs,
            builds=self.builds,
        )

    # ------------------------------------------------------------------ plumbing every port calls

    def call(self, name: str) -> None:
        self.calls.append(name)
        queued = self.failures.get(name)
        if queued:
            raise queued.pop(0)
        port = name.split(".")[0]
        if self.services_disabled_for_calls > 0 and port in _PORT_SERVICE:
            self.services_disabled_for_calls -= 1
            service = _PORT_SERVICE[port]
            raise ServiceDisabledError(f"{service} has not been used in project {self.project} before "
                                       "or it is disabled", service=service)
        if name in _MUTATING:
            self.mutations.append(name)

    def next_etag(self) -> str:
        return f"e{next(self._etags)}"

    def check_propagated(self, policy: Policy) -> None:
        """Google's 400 for a policy naming a service account that is not visible yet."""
        if self.sa_propagation_calls <= 0:
            return
        for email in self._new_accounts:
            if any(f"serviceAccount:{email}" in b.members for b in policy.bindings):
                self.sa_propagation_calls -= 1
                raise CloudError(f"Service account {email} does not exist.")

    def write_policy(self, current: Policy, new: Policy, what: str) -> Policy:
        """Optimistic locking: a stale etag is Google's 409 ABORTED."""
        if new.etag != current.etag:
            raise CloudError(f"etag mismatch on the IAM policy of {what}: concurrent change, re-read and retry")
        self.check_propagated(new)
        return replace(new, etag=self.next_etag())

    def secret_value_leaks(self, token: str) -> list[str]:
        """Places other than secret versions where `token` shows up in the fake's state."""
        haystack = [repr(self.buckets), repr(self.repositories), repr(self.service_accounts),
                    repr(self.project_policy), repr({k: s.labels for k, s in self.secret_store.items()}),
                    repr(self.calls)]
        for b in self.buckets.values():
            haystack += [data.decode(errors="replace") for data, _ in b.objects.values()]
        return [h[:80] for h in haystack if token in h]


class FakeStorage:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def _bucket(self, bucket: str) -> _Bucket:
        if bucket in self.c.foreign_buckets:
            raise PermissionDeniedError(f"no access to bucket {bucket}",
                                        permission="storage.buckets.get")
        if bucket not in self.c.buckets:
            raise NotFoundError(f"bucket {bucket} not found", resource=bucket)
        return self.c.buckets[bucket]

    def get_bucket(self, bucket: str) -> BucketInfo:
        self.c.call("storage.get_bucket")
        return self._bucket(bucket).info

    def create_bucket(self, bucket: str, *, location: str, labels: dict[str, str]) -> BucketInfo:
        self.c.call("storage.create_bucket")
        if bucket in self.c.buckets or bucket in self.c.foreign_buckets:
            raise AlreadyExistsError(f"bucket {bucket} already exists", resource=bucket)
        info = BucketInfo(name=bucket, location=location.upper(), project_number=self.c.number)
        self.c.buckets[bucket] = _Bucket(info, dict(labels), Policy(etag=self.c.next_etag()))
        return info

    def get_bucket_policy(self, bucket: str) -> Policy:
        self.c.call("storage.get_bucket_policy")
        return self._bucket(bucket).policy

    def set_bucket_policy(self, bucket: str, policy: Policy) -> Policy:
        self.c.call("storage.set_bucket_policy")
        b = self._bucket(bucket)
        b.policy = self.c.write_policy(b.policy, policy, f"bucket {bucket}")
        return b.policy

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        self.c.call("storage.stat")
        entry = self._bucket(bucket).objects.get(name)
        return entry[1] if entry else None

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        self.c.call("storage.list")
        objects = self._bucket(bucket).objects
        return iter([info for name, (_, info) in sorted(objects.items()) if name.startswith(prefix)])

    def read_bytes(self, bucket: str, name: str, *, start: int = 0) -> bytes:
        self.c.call("storage.read_bytes")
        entry = self._bucket(bucket).objects.get(name)
        if entry is None:
            raise NotFoundError(f"gs://{bucket}/{name} not found", resource=name)
        return entry[0][start:]

    def _put(self, bucket: str, name: str, data: bytes, metadata: dict[str, str]) -> ObjectInfo:
        b = self._bucket(bucket)
        generation = (b.objects[name][1].generation or 0) + 1 if name in b.objects else 1
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # as GCS reports it
        info = ObjectInfo(name, len(data), datetime.now(UTC), md5, dict(metadata), generation)
        b.objects[name] = (data, info)
        return info

    def write_bytes(self, bucket: str, name: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        self.c.call("storage.write_bytes")
        return self._put(bucket, name, data, {})

    @contextmanager
    def open_writer(self, bucket: str, name: str, *, metadata: dict[str, str] | None = None):
        self.c.call("storage.open_writer")
        self._bucket(bucket)
        writer = _Writer()
        yield writer  # an exception here skips the commit: nothing partial becomes visible
        self._put(bucket, name, bytes(writer.buffer), metadata or {})

    def delete(self, bucket: str, name: str) -> None:
        self.c.call("storage.delete")
        if self._bucket(bucket).objects.pop(name, None) is None:
            raise NotFoundError(f"gs://{bucket}/{name} not found", resource=name)

    def local_path(self, bucket: str) -> str | None:
        return None


class _Writer:
    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)


class FakeSecrets:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def _secret(self, secret: str) -> _Secret:
        if secret not in self.c.secret_store:
            raise NotFoundError(f"secret {secret} not found", resource=secret)
        return self.c.secret_store[secret]

    def get_secret(self, secret: str) -> SecretInfo:
        self.c.call("secrets.get_secret")
        return SecretInfo(secret, len(self._secret(secret).versions))

    def create_secret(self, secret: str, *, labels: dict[str, str]) -> SecretInfo:
        self.c.call("secrets.create_secret")
        if secret in self.c.secret_store:
            raise AlreadyExistsError(f"secret {secret} already exists", resource=secret)
        self.c.secret_store[secret] = _Secret(dict(labels))
        return SecretInfo(secret, 0)

    def latest_value(self, secret: str) -> SecretText | None:
        self.c.call("secrets.latest_value")
        versions = self._secret(secret).versions
        return versions[-1] if versions else None

    def add_version(self, secret: str, value: SecretText) -> str:
        self.c.call("secrets.add_version")
        versions = self._secret(secret).versions
        versions.append(SecretText(value.reveal()))
        return str(len(versions))

    def get_policy(self, secret: str) -> Policy:
        self.c.call("secrets.get_policy")
        return self._secret(secret).policy

    def set_policy(self, secret: str, policy: Policy) -> Policy:
        self.c.call("secrets.set_policy")
        s = self._secret(secret)
        s.policy = self.c.write_policy(s.policy, policy, f"secret {secret}")
        return s.policy


class FakeRegistry:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def get_repository(self, region: str, repository: str) -> RepositoryInfo:
        self.c.call("registry.get_repository")
        try:
            return self.c.repositories[(region, repository)]
        except KeyError:
            raise NotFoundError(f"repository {repository} not found in {region}", resource=repository) from None

    def create_repository(self, region: str, repository: str, *, description: str) -> RepositoryInfo:
        self.c.call("registry.create_repository")
        if (region, repository) in self.c.repositories:
            raise AlreadyExistsError(f"repository {repository} already exists", resource=repository)
        info = RepositoryInfo(repository, region)
        self.c.repositories[(region, repository)] = info
        return info

    def image_exists(self, image: str) -> bool:
        self.c.call("registry.image_exists")
        return image in self.c.images


class FakeIam:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def get_service_account(self, email: str) -> ServiceAccountInfo:
        self.c.call("iam.get_service_account")
        try:
            return self.c.service_accounts[email]
        except KeyError:
            raise NotFoundError(f"service account {email} not found", resource=email) from None

    def create_service_account(self, account_id: str, *, display_name: str,
                               description: str) -> ServiceAccountInfo:
        self.c.call("iam.create_service_account")
        email = f"{account_id}@{self.c.project}.iam.gserviceaccount.com"
        if email in self.c.service_accounts:
            raise AlreadyExistsError(f"service account {email} already exists", resource=email)
        info = ServiceAccountInfo(email, account_id, display_name)
        self.c.service_accounts[email] = info
        self.c._new_accounts.add(email)
        return info

    def get_project_policy(self) -> Policy:
        self.c.call("iam.get_project_policy")
        return self.c.project_policy

    def set_project_policy(self, policy: Policy) -> Policy:
        self.c.call("iam.set_project_policy")
        self.c.project_policy = self.c.write_policy(self.c.project_policy, policy, "the project")
        return self.c.project_policy


class FakeServices:
    def __init__(self, cloud: FakeCloud) -> None:
        self.c = cloud

    def get_project(self) -> ProjectInfo:
        self.c.call("services.get_project")
        return ProjectInfo(self.c.project, self.c.number)

    def enabled(self, services: list[str]) -> dict[str, bool]:
        self.c.call("services.enabled")
        return {s: s in self.c.enabled_services for s in services}

    def enable(self, services: list[str]) -> None:
        self.c.call("services.enable")
        self.c.enabled_services |= set(services)
