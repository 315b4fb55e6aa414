"""ports.Builds over Cloud Build v1 (REST); build logs are read from their Cloud Storage object."""

from __future__ import annotations

from typing import Any

from gemmactl import errors
from gemmactl.cloud import ports
from gemmactl.cloud.gcp._clients import GcpContext
from gemmactl.cloud.gcp._errors import call


def _step(step: ports.BuildStep) -> dict[str, Any]:
    out: dict[str, Any] = {"name": step.name, "args": list(step.args)}
    if step.entrypoint:
        out["entrypoint"] = step.entrypoint
    if step.env:
        out["env"] = list(step.env)
    if step.secret_env:
        out["secret_env"] = list(step.secret_env)
    return out


def _service_account(project: str, sa: str) -> str:
    return sa if sa.startswith("projects/") else f"projects/{project}/serviceAccounts/{sa}"


def build_message(spec: ports.BuildSpec, project: str) -> Any:
    """The cloudbuild_v1.Build for `spec`. Secrets travel as Secret Manager references, never substitutions."""
    from google.cloud.devtools import cloudbuild_v1

    build: dict[str, Any] = {
        "steps": [_step(s) for s in spec.steps],
        "images": list(spec.images),
        "timeout": {"seconds": spec.timeout_s},
        "tags": list(spec.tags),
    }
    if spec.source_bucket and spec.source_object:
        build["source"] = {"storage_source": {"bucket": spec.source_bucket, "object_": spec.source_object}}
    options: dict[str, Any] = {}
    if spec.logs_bucket:
        # GCS_ONLY puts the log where read_log() can range-read it (and satisfies the service-account rule).
        build["logs_bucket"] = spec.logs_bucket
        options["logging"] = "GCS_ONLY"
    if spec.machine_type:
        options["machine_type"] = spec.machine_type
    if spec.disk_size_gb:
        options["disk_size_gb"] = spec.disk_size_gb
    if options:
        build["options"] = options
    if spec.available_secrets:
        build["available_secrets"] = {
            "secret_manager": [{"version_name": v, "env": k} for k, v in sorted(spec.available_secrets.items())]
        }
    if spec.service_account:
        build["service_account"] = _service_account(project, spec.service_account)
    try:
        return cloudbuild_v1.Build(build)
    except (ValueError, KeyError) as e:  # e.g. an unknown machine type name
        raise errors.UsageError(f"invalid build option: {e}") from None


def build_info(build: Any) -> ports.BuildInfo:
    status = type(build).Status(build.status).name
    detail = (build.failure_info.detail if "failure_info" in build else "") or build.status_detail or None
    images = tuple(f"{i.name}@{i.digest}" for i in build.results.images) if "results" in build else ()
    return ports.BuildInfo(
        id=build.id,
        status="PENDING" if status == "STATUS_UNKNOWN" else status,
        log_url=build.log_url or None,
        logs_bucket=build.logs_bucket or None,
        failure_detail=detail if status not in ("SUCCESS", "QUEUED", "WORKING", "PENDING") else None,
        images=images,
    )


class CloudBuilds:
    """Submit, poll, cancel and tail builds in a region."""

    def __init__(self, ctx: GcpContext, storage: ports.Storage) -> None:
        self._ctx = ctx
        self._storage = storage

    @property
    def _client(self) -> Any:
        from google.cloud.devtools import cloudbuild_v1

        return self._ctx.gapic("CLOUDBUILD", cloudbuild_v1.CloudBuildClient)

    def _name(self, region: str, build_id: str) -> str:
        return f"projects/{self._ctx.project}/locations/{region}/builds/{build_id}"

    def submit(self, spec: ports.BuildSpec) -> ports.BuildInfo:
        message = build_message(spec, self._ctx.project)
        request = {
            "parent": f"projects/{self._ctx.project}/locations/{spec.region}",
            "project_id": self._ctx.project,
            "build": message,
        }
        op = call(
            f"submit a Cloud Build in {spec.region}",
            lambda: self._client.create_build(request=request, retry=None),
            clock=self._ctx.clock,
            retry=False,  # a retried POST would queue a second build
        )
        # The operation's metadata names the build at once; its result would only come when it finishes.
        metadata = op.metadata
        if metadata is None or not metadata.build.id:
            raise errors.CloudError("submit a Cloud Build: the service did not report a build id")
        return build_info(metadata.build)

    def get(self, region: str, build_id: str) -> ports.BuildInfo:
        request = {"name": self._name(region, build_id), "project_id": self._ctx.project, "id": build_id}
        build = call(
            f"get build {build_id}",
            lambda: self._client.get_build(request=request, retry=None),
            clock=self._ctx.clock,
        )
        return build_info(build)

    def cancel(self, region: str, build_id: str) -> ports.BuildInfo:
        request = {"name": self._name(region, build_id), "project_id": self._ctx.project, "id": build_id}
        build = call(
            f"cancel build {build_id}",
            lambda: self._client.cancel_build(request=request, retry=None),
            clock=self._ctx.clock,
        )
        return build_info(build)

    def read_log(self, build: ports.BuildInfo, *, offset: int) -> bytes:
        """Bytes of `<logs_bucket>/log-<id>.txt` from `offset`; b'' before the build starts or when nothing
        is new (404 / 416), as gcloud's own log tailer treats them."""
        if not build.logs_bucket:
            return b""
        bucket, _, prefix = build.logs_bucket.removeprefix("gs://").partition("/")
        name = f"{prefix.strip('/')}/log-{build.id}.txt" if prefix.strip("/") else f"log-{build.id}.txt"
        try:
            return self._storage.read_bytes(bucket, name, start=offset)
        except errors.NotFoundError:
            return b""
