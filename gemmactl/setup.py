"""`gemmactl init` without the CLI: observe what exists, plan what to create, apply the plan idempotently.

Three stages, so the plan is testable on its own and `--dry-run` is the same code minus the last one:
`observe` (read-only port calls) → `build_plan` (pure) → `apply_plan` (the only stage that mutates).
Every apply step is create-or-confirm: a 409 means someone (or a previous half-finished run) already
made it, so a re-run after any failure completes the setup. Nothing is ever deleted or overwritten:
policies only gain members, the secret only gains versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from gemmactl.cloud import Cloud
from gemmactl.cloud.ports import BucketInfo, Policy, SecretInfo, SecretText
from gemmactl.errors import (
    AlreadyExistsError,
    CloudError,
    GemmactlError,
    NotFoundError,
    PermissionDeniedError,
    RegionMismatchError,
    ServiceDisabledError,
    TransientError,
)
from gemmactl.settings import Settings

REQUIRED_APIS = (
    "run.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "compute.googleapis.com",  # the `default` network for Direct VPC egress
    "cloudresourcemanager.googleapis.com",  # the project number
)
ROLE_BUCKET = "roles/storage.objectAdmin"
ROLE_SECRET = "roles/secretmanager.secretAccessor"
ROLE_LOGS = "roles/logging.logWriter"
LABELS = {"managed-by": "gemmactl"}

CREATE, EXISTS, UPDATE, LOCAL_NA, SKIPPED = "create", "exists", "update", "n/a (local)", "skipped"

# A freshly enabled API answers SERVICE_DISABLED for a minute or two; a new service account is
# invisible to IAM for up to ~60 s (gcp-api.md §1.1, §1.2). Waits double up to this cap.
API_WAIT_S = 240.0
SA_WAIT_S = 120.0


T = TypeVar("T")


def sleep(seconds: float) -> None:
    """The wait between retries; tests replace this module attribute to run instantly."""
    time.sleep(seconds)


@dataclass(frozen=True)
class Snapshot:
    """What exists now, as read through the ports (None = absent or behind a disabled API)."""

    local: bool
    services: dict[str, bool]
    project_number: str | None = None
    service_account: bool = False
    bucket: BucketInfo | None = None
    repository: bool = False
    secret: SecretInfo | None = None
    secret_value: SecretText | None = None
    bucket_policy: Policy | None = None
    secret_policy: Policy | None = None
    project_policy: Policy | None = None


@dataclass(frozen=True)
class Step:
    """One row of the plan table; `kind` selects the apply function, `target` the policy for bindings."""

    kind: str
    resource: str
    name: str
    state: str
    detail: str = ""
    target: str = ""

    def row(self) -> dict[str, str]:
        return {"resource": self.resource, "name": self.name, "state": self.state, "detail": self.detail}


# ------------------------------------------------------------------------------------------ observe


def _maybe(read: Callable[[], object]) -> object | None:
    try:
        return read()
    except NotFoundError:
        return None


def observe(cloud: Cloud, s: Settings) -> Snapshot:
    """Read the current state; raises before any mutation if the bucket name is unusable."""
    local = cloud.backend == "local"
    services = {} if local else cloud.services.enabled(list(REQUIRED_APIS))
    up = (lambda api: True) if local else (lambda api: services.get(api, False))
    # The project number tells our buckets from other projects'; it needs Resource Manager up.
    crm_up = not local and up("cloudresourcemanager.googleapis.com")
    number = _maybe(lambda: cloud.services.get_project().number) if crm_up else None
    snap = Snapshot(local=local, services=services, project_number=number)
    if up("storage.googleapis.com"):
        snap = replace(snap, bucket=_read_bucket(cloud, s, number))
    if snap.bucket is not None:
        snap = replace(snap, bucket_policy=cloud.storage.get_bucket_policy(s.bucket_name))
    if up("secretmanager.googleapis.com"):
        snap = _read_secret(cloud, s, snap)
    if local:
        return snap
    if up("iam.googleapis.com"):
        snap = replace(snap, service_account=_maybe(
            lambda: cloud.iam.get_service_account(s.service_account_email)) is not None)
    if up("artifactregistry.googleapis.com"):
        snap = replace(snap, repository=_maybe(
            lambda: cloud.registry.get_repository(s.region, s.repository)) is not None)
    if up("cloudresourcemanager.googleapis.com"):
        snap = replace(snap, project_policy=cloud.iam.get_project_policy())
    return snap


def _read_bucket(cloud: Cloud, s: Settings, project_number: str | None) -> BucketInfo | None:
    try:
        info = cloud.storage.get_bucket(s.bucket_name)
    except NotFoundError:
        return None
    except PermissionDeniedError:
        raise _taken(s.bucket_name) from None
    if project_number and info.project_number and info.project_number != project_number:
        raise _taken(s.bucket_name)
    return info


def _taken(bucket: str) -> GemmactlError:
    return AlreadyExistsError(
        f"bucket name '{bucket}' belongs to another project (bucket names are global)",
        resource=bucket,
        hint="choose another name: --bucket NAME or `bucket = \"NAME\"` in gemmactl.toml",
    )


def _read_secret(cloud: Cloud, s: Settings, snap: Snapshot) -> Snapshot:
    secret = _maybe(lambda: cloud.secrets.get_secret(s.secret))
    if secret is None:
        return snap
    value = cloud.secrets.latest_value(s.secret) if secret.version_count else None
    return replace(snap, secret=secret, secret_value=value, secret_policy=cloud.secrets.get_policy(s.secret))


def check_region(s: Settings, bucket: BucketInfo) -> None:
    """A bucket in another region than the job is never used (a Cloud Storage volume must be local)."""
    if bucket.location.lower() != s.region.lower():
        raise RegionMismatchError(
            f"bucket {bucket.name} is in {bucket.location}, but the job runs in {s.region}",
            hint=f"use --region {bucket.location.lower()}, or another bucket with --bucket NAME",
        )


# ------------------------------------------------------------------------------------------ plan


def needs_token(snap: Snapshot) -> bool:
    """Whether init must ask for a token: the secret has no value yet (or cannot be seen)."""
    return snap.secret_value is None


def build_plan(s: Settings, snap: Snapshot, token: SecretText | None) -> list[Step]:
    """The ordered steps: APIs, service account, bucket, repository, secret, version, bindings."""
    if snap.bucket is not None and not snap.local:
        check_region(s, snap.bucket)
    steps = _api_steps(snap) + _account_steps(s, snap)
    steps.append(_state(Step("bucket", "bucket", s.bucket_name, CREATE, f"in {s.region}"), snap.bucket))
    steps += _repository_steps(s, snap)
    steps.append(_state(Step("secret", "secret", s.secret, CREATE), snap.secret))
    steps.append(_version_step(s, snap, token))
    return steps + _binding_steps(s, snap)


def _state(step: Step, present: object) -> Step:
    return replace(step, state=EXISTS) if present else step


def _api_steps(snap: Snapshot) -> list[Step]:
    if snap.local:
        return [Step("none", "APIs", "Google Cloud APIs", LOCAL_NA)]
    return [_state(Step("api", "API", api, CREATE, "enable"), snap.services.get(api)) for api in REQUIRED_APIS]


def _account_steps(s: Settings, snap: Snapshot) -> list[Step]:
    if snap.local:
        return [Step("none", "service account", s.service_account, LOCAL_NA)]
    return [_state(Step("service_account", "service account", s.service_account_email, CREATE),
                   snap.service_account)]


def _repository_steps(s: Settings, snap: Snapshot) -> list[Step]:
    if snap.local:
        return [Step("none", "repository", s.repository, LOCAL_NA)]
    return [_state(Step("repository", "repository", f"{s.region}/{s.repository}", CREATE, "docker"),
                   snap.repository)]


def _version_step(s: Settings, snap: Snapshot, token: SecretText | None) -> Step:
    step = Step("secret_version", "secret version", s.secret, CREATE, "Hugging Face token")
    if snap.secret_value is None:
        if token:
            return step
        if snap.local:
            # The local quickstart runs built-in models, which need no token; add one any time later.
            return replace(step, state=SKIPPED, detail="no token given: only builtin: models will work")
        return replace(step, detail="needs a token: --hf-token-file or HF_TOKEN")
    if token is None or token == snap.secret_value:
        return replace(step, state=EXISTS, detail="unchanged")
    return replace(step, state=UPDATE, detail="new version (token changed)")


def _binding_steps(s: Settings, snap: Snapshot) -> list[Step]:
    if snap.local:
        return [Step("none", "IAM bindings", "service account roles", LOCAL_NA)]
    member = f"serviceAccount:{s.service_account_email}"
    policies = {"bucket": snap.bucket_policy, "secret": snap.secret_policy, "project": snap.project_policy}
    return [
        _state(Step("binding", "IAM binding", f"{role} on {where}", CREATE, member, target=target),
               policies[target] is not None and policies[target].has(role, member))
        for target, role, where in bindings(s)
    ]


def bindings(s: Settings) -> list[tuple[str, str, str]]:
    """(target, role, where) for each role the job's service account needs: the one list init and doctor share."""
    return [
        ("bucket", ROLE_BUCKET, f"gs://{s.bucket_name}"),
        ("secret", ROLE_SECRET, f"secret {s.secret}"),
        ("project", ROLE_LOGS, f"project {s.project}"),
    ]


# ------------------------------------------------------------------------------------------ apply


def apply_plan(
    plan: list[Step],
    cloud: Cloud,
    s: Settings,
    token: SecretText | None,
    *,
    on_step: Callable[[Step], None] = lambda step: None,
    on_progress: Callable[[str], None] = lambda message: None,
) -> list[Step]:
    """Carry out the non-"exists" steps in order; returns the plan with each step's actual state.
    `on_progress` hears what is being done or waited for (enabling APIs and IAM propagation take minutes)."""
    apis = [step.name for step in plan if step.kind == "api" and step.state == CREATE]
    if apis:
        # One batch call (≤ 20 services per request; we need 9); the adapter waits for the operation.
        on_progress(f"enabling {len(apis)} APIs (can take a minute)")
        cloud.services.enable(apis)
    done: list[Step] = []
    for step in plan:
        if step.state in (CREATE, UPDATE) and step.kind != "api":
            on_progress(f"{step.state} {step.resource} {step.name}")
            action = lambda st=step: _APPLY[st.kind](cloud, s, st, token)  # noqa: E731
            step = replace(step, state=with_retries(action, on_wait=on_progress))
        if step.state in (CREATE, UPDATE):
            on_step(step)
        done.append(step)
    return done


def with_retries(action: Callable[[], T], on_wait: Callable[[str], None] = lambda message: None) -> T:
    """Retry through the SERVICE_DISABLED window and IAM's service-account propagation delay."""
    delay, waited = 2.0, 0.0
    while True:
        try:
            return action()
        except (ServiceDisabledError, CloudError, NotFoundError) as e:
            limit = API_WAIT_S if isinstance(e, ServiceDisabledError) else SA_WAIT_S
            if not _retryable(e) or waited >= limit:
                raise
            on_wait(f"waiting for Google to propagate ({waited:.0f}s of up to {limit:.0f}s): {e.message}")
            sleep(delay)  # a module global, looked up per call, so tests can swap it
            waited += delay
            delay = min(delay * 2, 30.0)


def _retryable(e: GemmactlError) -> bool:
    if isinstance(e, ServiceDisabledError):
        return True
    text = e.message.lower()
    # Google's 400 for a brand-new account, and a 409 etag race on a read-modify-write.
    return "service account" in text and "does not exist" in text or "etag" in text


def _create_account(cloud: Cloud, s: Settings, step: Step, token: SecretText | None) -> str:
    account_id, _, domain = s.service_account_email.partition("@")
    if domain != f"{s.project}.iam.gserviceaccount.com":
        raise NotFoundError(f"service account {s.service_account_email} does not exist",
                            hint="create it in its own project, or use a short name to let init create it")
    try:
        cloud.iam.create_service_account(account_id, display_name="Gemma fine-tuning jobs (gemmactl)",
                                         description="Runs gemmactl's Cloud Run fine-tuning jobs")
    except AlreadyExistsError:
        return EXISTS
    return step.state


def _create_bucket(cloud: Cloud, s: Settings, step: Step, token: SecretText | None) -> str:
    try:
        cloud.storage.create_bucket(s.bucket_name, location=s.region, labels=LABELS)
    except AlreadyExistsError:
        # Ours from an interrupted run, or someone else's: read it back before trusting it.
        number = None if cloud.backend == "local" else cloud.services.get_project().number
        info = _read_bucket(cloud, s, number)
        if info is None:
            raise TransientError(f"bucket {s.bucket_name} conflicted on create but cannot be read") from None
        if cloud.backend != "local":
            check_region(s, info)
        return EXISTS
    return step.state


def _create_repository(cloud: Cloud, s: Settings, step: Step, token: SecretText | None) -> str:
    try:
        cloud.registry.create_repository(s.region, s.repository,
                                         description="Trainer images built by gemmactl")
    except AlreadyExistsError:
        return EXISTS
    return step.state


def _create_secret(cloud: Cloud, s: Settings, step: Step, token: SecretText | None) -> str:
    try:
        cloud.secrets.create_secret(s.secret, labels=LABELS)
    except AlreadyExistsError:
        return EXISTS
    return step.state


def _add_version(cloud: Cloud, s: Settings, step: Step, token: SecretText | None) -> str:
    if not token:
        raise NotFoundError(f"secret {s.secret} has no value yet and no Hugging Face token was given",
                            hint="pass --hf-token-file FILE or set HF_TOKEN")
    info = cloud.secrets.get_secret(s.secret)
    # Re-read: a concurrent or earlier run may have stored this very value already.
    if info.version_count and cloud.secrets.latest_value(s.secret) == token:
        return EXISTS
    cloud.secrets.add_version(s.secret, token)
    return step.state


def _add_binding(cloud: Cloud, s: Settings, step: Step, token: SecretText | None) -> str:
    role = next(r for target, r, _ in bindings(s) if target == step.target)
    member = f"serviceAccount:{s.service_account_email}"
    get, put = policy_ports(cloud, s, step.target)
    policy = get()
    if policy.has(role, member):
        return EXISTS
    put(policy.with_member(role, member))
    return step.state


def policy_ports(cloud: Cloud, s: Settings, target: str) -> tuple[Callable[[], Policy], Callable]:
    """(read, write) of the IAM policy on a binding target."""
    if target == "bucket":
        return (lambda: cloud.storage.get_bucket_policy(s.bucket_name),
                lambda p: cloud.storage.set_bucket_policy(s.bucket_name, p))
    if target == "secret":
        return lambda: cloud.secrets.get_policy(s.secret), lambda p: cloud.secrets.set_policy(s.secret, p)
    return cloud.iam.get_project_policy, cloud.iam.set_project_policy


_APPLY: dict[str, Callable[[Cloud, Settings, Step, SecretText | None], str]] = {
    "service_account": _create_account,
    "bucket": _create_bucket,
    "repository": _create_repository,
    "secret": _create_secret,
    "secret_version": _add_version,
    "binding": _add_binding,
}
