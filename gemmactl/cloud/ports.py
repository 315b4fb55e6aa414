"""The ports: Protocols every cloud backend implements, and the plain data they exchange.

Three backends implement them: `gcp` (google-cloud-* clients over REST), `local` (a directory is the
bucket, a 0600 file the secret, a subprocess the job) and the in-memory fake in tests/fakes. All of
them take and return these dataclasses and raise only `gemmactl.errors`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

# --------------------------------------------------------------------------- shared values


class SecretText:
    """A secret string that never shows itself in repr/str/logs; call `reveal()` at the last moment."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value.strip()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "SecretText('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretText) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Binding:
    role: str
    members: frozenset[str]


@dataclass(frozen=True)
class Policy:
    """An IAM policy (bucket, secret or project). `etag` is carried back on set for optimistic locking."""

    bindings: tuple[Binding, ...] = ()
    etag: str | None = None
    version: int = 3
    # Fields we do not model (conditions, audit configs) round-trip untouched through `extra`.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def has(self, role: str, member: str) -> bool:
        return any(b.role == role and member in b.members for b in self.bindings)

    def with_member(self, role: str, member: str) -> Policy:
        """A copy with `member` added to `role` (a no-op copy if already there)."""
        if self.has(role, member):
            return self
        bindings = list(self.bindings)
        for i, b in enumerate(bindings):
            if b.role == role:
                bindings[i] = Binding(role, b.members | {member})
                return replace(self, bindings=tuple(bindings))
        return replace(self, bindings=(*bindings, Binding(role, frozenset({member}))))


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class BucketInfo:
    name: str
    location: str  # upper-case as Google reports it, e.g. "EUROPE-WEST4"
    uniform_access: bool = True
    public_access_prevention: str = "enforced"
    project_number: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    updated: datetime | None = None
    md5_hash: str | None = None  # base64, as GCS reports it
    metadata: dict[str, str] = field(default_factory=dict)
    generation: int | None = None


class ObjectWriter(Protocol):
    """A streaming upload. Nothing is visible under the final name until the context exits cleanly;
    on an exception the partial upload is discarded."""

    def write(self, data: bytes) -> int: ...


class Storage(Protocol):
    def get_bucket(self, bucket: str) -> BucketInfo:
        """Raises NotFoundError, or PermissionDeniedError when someone else owns the name."""
        ...

    def create_bucket(self, bucket: str, *, location: str, labels: dict[str, str]) -> BucketInfo:
        """Uniform bucket-level access and public access prevention on. Raises AlreadyExistsError."""
        ...

    def get_bucket_policy(self, bucket: str) -> Policy: ...

    def set_bucket_policy(self, bucket: str, policy: Policy) -> Policy: ...

    def stat(self, bucket: str, name: str) -> ObjectInfo | None: ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def read_bytes(self, bucket: str, name: str, *, start: int = 0) -> bytes:
        """Bytes from `start` to the end ('' when start >= size). Raises NotFoundError."""
        ...

    def write_bytes(
        self, bucket: str, name: str, data: bytes, *, content_type: str | None = None
    ) -> ObjectInfo: ...

    def open_writer(
        self, bucket: str, name: str, *, metadata: dict[str, str] | None = None
    ) -> AbstractContextManager[ObjectWriter]: ...

    def delete(self, bucket: str, name: str) -> None: ...

    def local_path(self, bucket: str) -> str | None:
        """The directory that *is* the bucket on the local backend (the job's /mnt/gcs); None elsewhere."""
        ...


# --------------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class SecretInfo:
    name: str  # short id, e.g. "HF_TOKEN"
    version_count: int = 0


class Secrets(Protocol):
    def get_secret(self, secret: str) -> SecretInfo:
        """Raises NotFoundError."""
        ...

    def create_secret(self, secret: str, *, labels: dict[str, str]) -> SecretInfo: ...

    def latest_value(self, secret: str) -> SecretText | None:
        """The latest enabled version's value, or None when the secret has no version."""
        ...

    def add_version(self, secret: str, value: SecretText) -> str:
        """Stores a new version; returns its version id."""
        ...

    def get_policy(self, secret: str) -> Policy: ...

    def set_policy(self, secret: str, policy: Policy) -> Policy: ...


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RepositoryInfo:
    name: str
    region: str
    format: str = "DOCKER"


class Registry(Protocol):
    def get_repository(self, region: str, repository: str) -> RepositoryInfo: ...

    def create_repository(self, region: str, repository: str, *, description: str) -> RepositoryInfo: ...

    def image_exists(self, image: str) -> bool:
        """Whether `<region>-docker.pkg.dev/<project>/<repo>/<name>:<tag>` exists."""
        ...


# --------------------------------------------------------------------------- iam / services


@dataclass(frozen=True)
class ServiceAccountInfo:
    email: str
    account_id: str
    display_name: str = ""


@dataclass(frozen=True)
class ProjectInfo:
    project_id: str
    number: str


class Iam(Protocol):
    def get_service_account(self, email: str) -> ServiceAccountInfo: ...

    def create_service_account(
        self, account_id: str, *, display_name: str, description: str
    ) -> ServiceAccountInfo: ...

    def get_project_policy(self) -> Policy: ...

    def set_project_policy(self, policy: Policy) -> Policy: ...


class Services(Protocol):
    def get_project(self) -> ProjectInfo: ...

    def enabled(self, services: list[str]) -> dict[str, bool]:
        """Which of `services` (e.g. "run.googleapis.com") are enabled."""
        ...

    def enable(self, services: list[str]) -> None:
        """Enables them and waits for the operation."""
        ...


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class SecretEnv:
    secret: str
    version: str = "latest"


@dataclass(frozen=True)
class JobSpec:
    """Everything `gcloud beta run jobs deploy` would be told; built by gemmactl.specs (pure)."""

    name: str
    region: str
    image: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, SecretEnv] = field(default_factory=dict)
    cpu: str = "20"
    memory: str = "80Gi"
    gpu_count: int = 1
    gpu_type: str | None = "nvidia-rtx-pro-6000"
    gpu_zonal_redundancy_disabled: bool = True
    timeout_s: int = 6 * 3600
    max_retries: int = 3
    service_account: str | None = None
    bucket: str | None = None  # mounted as a Cloud Storage volume at mount_path
    mount_path: str = "/mnt/gcs"
    network: str | None = None
    subnet: str | None = None
    vpc_egress: str | None = None  # "private-ranges-only" | "all-traffic"
    labels: dict[str, str] = field(default_factory=dict)
    launch_stage: str = "BETA"
    container_name: str = "trainer"
    task_count: int = 1


@dataclass(frozen=True)
class JobInfo:
    name: str
    region: str
    generation: int = 1
    image: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    latest_execution: str | None = None


@dataclass(frozen=True)
class RunOverrides:
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: int | None = None
    container_name: str = "trainer"


# Execution states, simplified from Cloud Run's conditions.
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True)
class Execution:
    name: str  # short id, e.g. "gemma-finetuning-job-x7k2p"
    job: str
    state: str
    create_time: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    task_count: int = 1
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    reason: str | None = None  # e.g. NON_ZERO_EXIT_CODE, CANCELLED
    message: str | None = None
    run_id: str | None = None
    log_uri: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


class Jobs(Protocol):
    def get_job(self, region: str, job: str) -> JobInfo: ...

    def apply(self, spec: JobSpec) -> tuple[JobInfo, bool]:
        """Create-or-update the job; returns it and whether it was created."""
        ...

    def run(self, region: str, job: str, overrides: RunOverrides) -> Execution: ...

    def get_execution(self, region: str, job: str, execution: str) -> Execution: ...

    def list_executions(self, region: str, job: str, *, limit: int = 20) -> list[Execution]:
        """Newest first."""
        ...

    def cancel(self, region: str, job: str, execution: str) -> Execution: ...


# --------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class LogEntry:
    timestamp: datetime
    insert_id: str
    text: str  # the line as printed (a JSON payload is dumped back to one line)
    severity: str = "DEFAULT"
    payload: dict[str, Any] | None = None


@dataclass(frozen=True)
class LogQuery:
    region: str
    job: str
    execution: str | None = None
    min_severity: str | None = None


class Logs(Protocol):
    def read(self, query: LogQuery, *, since: datetime, limit: int = 1000) -> list[LogEntry]:
        """Entries with timestamp >= since, oldest first. One API request per call."""
        ...


# --------------------------------------------------------------------------- builds


@dataclass(frozen=True)
class BuildStep:
    name: str  # builder image
    args: tuple[str, ...] = ()
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    secret_env: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSpec:
    region: str
    steps: tuple[BuildStep, ...]
    images: tuple[str, ...] = ()
    source_bucket: str | None = None
    source_object: str | None = None
    logs_bucket: str | None = None  # "gs://bucket/prefix"
    timeout_s: int = 3600
    machine_type: str | None = None
    disk_size_gb: int | None = None
    # env var name -> secret version resource (projects/P/secrets/S/versions/latest); never substitutions.
    available_secrets: dict[str, str] = field(default_factory=dict)
    service_account: str | None = None
    tags: tuple[str, ...] = ()


BUILD_TERMINAL = frozenset({"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"})


@dataclass(frozen=True)
class BuildInfo:
    id: str
    status: str  # PENDING QUEUED WORKING SUCCESS FAILURE INTERNAL_ERROR TIMEOUT CANCELLED EXPIRED
    log_url: str | None = None
    logs_bucket: str | None = None
    failure_detail: str | None = None
    images: tuple[str, ...] = ()  # pushed "name@sha256:digest"

    @property
    def done(self) -> bool:
        return self.status in BUILD_TERMINAL


class Builds(Protocol):
    def submit(self, spec: BuildSpec) -> BuildInfo: ...

    def get(self, region: str, build_id: str) -> BuildInfo: ...

    def read_log(self, build: BuildInfo, *, offset: int) -> bytes:
        """New log bytes from `offset` (b'' when none yet)."""
        ...

    def cancel(self, region: str, build_id: str) -> BuildInfo: ...
