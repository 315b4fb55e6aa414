"""`gemmactl build`: build and push the trainer image, tagged with the source's content hash."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import DryRunOpt, JsonOpt
from gemmactl.cli._output import out

if TYPE_CHECKING:
    from gemmactl.builds import BuildPlan
    from gemmactl.cloud import Cloud
    from gemmactl.source import SourceArchive

EPILOG = """\
Examples:

  gemmactl build

  gemmactl build --dry-run --json

  gemmactl build --local-docker --no-cache
"""

LocalDockerOpt = Annotated[
    bool, typer.Option("--local-docker", help="Build and push with the local Docker CLI instead of Cloud Build.")
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Rebuild every layer (and rebuild even if the image exists).")
]
SourceOpt = Annotated[
    Path | None,
    typer.Option("--source", help="Directory with the Dockerfile (default: found from the current directory).",
                 file_okay=False, exists=True),
]
TimeoutOpt = Annotated[str | None, typer.Option("--timeout", help="Cloud Build timeout, e.g. 90m (default 1h).")]


def build(
    ctx: typer.Context,
    local_docker: LocalDockerOpt = False,
    no_cache: NoCacheOpt = False,
    source: SourceOpt = None,
    timeout: TimeoutOpt = None,
    dry_run: DryRunOpt = False,
    json: JsonOpt = False,
) -> None:
    """Build the trainer image from local source and push it as <repo>/<image>:<content-hash> and :latest."""
    from gemmactl import builds
    from gemmactl import source as src
    from gemmactl.settings import parse_duration

    out.json_mode = json
    timeout_s = parse_duration(timeout) if timeout else builds.DEFAULT_TIMEOUT_S
    s, cloud = connect(settings(ctx))
    archive = src.pack(src.find_root(source))
    plan = builds.plan_build(s, archive.tag, no_cache=no_cache, timeout_s=timeout_s)
    if cloud.backend == "local":
        return _local_backend(cloud, plan, archive, dry_run=dry_run)
    exists = cloud.registry.image_exists(plan.image)
    if exists and not no_cache:
        return _report(plan, archive, "exists", dry_run=dry_run)
    if dry_run:
        return _report(plan, archive, "would-build", dry_run=True, via="docker" if local_docker else "cloud-build")
    if local_docker:
        _run_local_docker(plan, archive, no_cache=no_cache)
        return _report(plan, archive, "built", via="docker")
    info = _run_cloud_build(cloud, plan, archive)
    _report(plan, archive, "built", via="cloud-build", build=info)


def _local_backend(cloud: Cloud, plan: BuildPlan, archive: SourceArchive, *, dry_run: bool) -> None:
    """The local backend runs the trainer from this checkout: nothing to build, the hash is recorded."""
    if not dry_run:
        cloud.builds.submit(plan.spec)
    out.success("local backend: nothing to build (jobs run the trainer from this checkout)")
    _report(plan, archive, "not-needed", dry_run=dry_run, via="local")


def _run_cloud_build(cloud: Cloud, plan: BuildPlan, archive: SourceArchive) -> Any:
    from gemmactl import builds
    from gemmactl.errors import NotFoundError

    try:
        _upload(cloud, plan, archive)
    except NotFoundError as e:
        raise NotFoundError(e.message, resource=e.resource, hint="run `gemmactl init` to create the bucket") from None
    info = cloud.builds.submit(plan.spec)
    out.info(f"Cloud Build {info.id} started" + (f": {info.log_url}" if info.log_url else ""))
    with _Display(quiet=out.json_mode) as display:
        try:
            return builds.follow_build(cloud.builds, plan.spec.region, info, display)
        except Exception as e:
            display.failed(e)
            raise


def _upload(cloud: Cloud, plan: BuildPlan, archive: SourceArchive) -> None:
    """The context goes to the staging prefix once; a retry after a failed build reuses it."""
    existing = cloud.storage.stat(plan.bucket, plan.source_object)
    if existing is not None and existing.size == len(archive.data):
        out.info(f"source already uploaded: {plan.source_uri}")
        return
    cloud.storage.write_bytes(plan.bucket, plan.source_object, archive.data, content_type="application/gzip")
    out.info(f"uploaded source ({len(archive.files)} files, {_size(len(archive.data))}) to {plan.source_uri}")


def _run_local_docker(plan: BuildPlan, archive: SourceArchive, *, no_cache: bool) -> None:
    from gemmactl import builds

    with _Display(quiet=out.json_mode) as display:
        try:
            builds.docker_build_and_push(plan, archive.data, display, no_cache=no_cache)
        except Exception as e:
            display.failed(e)
            raise


def _report(plan: BuildPlan, archive: SourceArchive, status: str, *, dry_run: bool = False,
            via: str | None = None, build: Any = None) -> None:
    data = {
        "status": status, "image": plan.image, "latest": plan.latest, "tag": plan.tag, "dry_run": dry_run,
        "via": via, "source": plan.source_uri, "source_files": len(archive.files),
        "source_bytes": len(archive.data), "build_id": getattr(build, "id", None),
        "pushed": list(getattr(build, "images", ()) or ()),
    }
    if out.json_mode:
        return out.json(data)
    if status == "exists":
        out.success(f"image for this source already exists, nothing to build: {plan.image}")
    elif status == "would-build":
        out.result({"would build": plan.image, "and tag": plan.latest, "via": via, "source": plan.source_uri,
                    "files": f"{len(archive.files)} ({_size(len(archive.data))})"})
    elif status == "built":
        out.success(f"pushed {plan.image} (and :latest)")
    out.text(plan.image)
    if dry_run:
        out.hint("nothing was changed; run without --dry-run to build")


def _size(n: int) -> str:
    from gemmactl.staging.progress import size_text  # lazily: rich.progress is not for start-up

    return size_text(n)


class _Display:
    """A rich spinner with elapsed time, phase and Dockerfile step, with the build log scrolling above."""

    def __init__(self, *, quiet: bool) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.quiet = quiet
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                 console=out.err, transient=True)
        self.task = self.progress.add_task("queued", total=None)

    def __enter__(self) -> _Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def line(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(text, markup=False, highlight=False)

    def phase(self, status: str, phase: str | None, step: str | None) -> None:
        parts = [status.lower(), (phase or "").lower(), f"step {step}" if step else ""]
        self.progress.update(self.task, description=" · ".join(p for p in parts if p))

    def failed(self, error: BaseException) -> None:
        """In --json mode the log was not shown live: show its end now, above the error line."""
        tail = getattr(error, "log_tail", None)
        if self.quiet and tail:
            self.progress.stop()
            for line in tail:
                out.err.print(f"  {line}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Adds `build` to the root app."""
    app.command("build", epilog=EPILOG)(build)
