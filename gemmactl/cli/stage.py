"""`gemmactl stage-model` / `stage-data`: copy a Hugging Face repo (or a built-in) into the bucket."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import DryRunOpt, HfTokenFileOpt, JsonOpt
from gemmactl.cli._output import out
from gemmactl.errors import NotFoundError, UsageError

RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit (default: main).")]
ViaOpt = Annotated[str, typer.Option("--via", help="Copy from this machine (local) or server-side (cloud-build).")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=1, max=64, help="Files copied in parallel.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Copy every file again, even verified ones.")]

MODEL_EPILOG = """Examples:

  gemmactl stage-model google/gemma-3-4b-it

  gemmactl stage-model google/gemma-3-27b-it --revision main --via cloud-build

  gemmactl --local stage-model builtin:tiny-gemma3 --json
"""
DATA_EPILOG = """Examples:

  gemmactl stage-data                              # timm/oxford-iiit-pet (or the configured dataset)

  gemmactl stage-data --dry-run --json

  gemmactl --local stage-data builtin:synthetic-pets
"""


def stage_model(ctx: typer.Context, model_id: Annotated[str, typer.Argument(help="ORG/NAME or builtin:tiny-gemma3.")],
                revision: RevisionOpt = None, dry_run: DryRunOpt = False, json: JsonOpt = False,
                hf_token_file: HfTokenFileOpt = None, via: ViaOpt = "local", workers: WorkersOpt = 8,
                force: ForceOpt = False) -> None:
    """Stream a model repo into `<org>/<model>/` of the bucket, verified and resumable."""
    _stage(ctx, model_id, "model", revision, dry_run, json, hf_token_file, via, workers, force)


def stage_data(ctx: typer.Context,
               dataset: Annotated[str | None, typer.Argument(help="ORG/NAME or builtin:synthetic-pets.")] = None,
               revision: RevisionOpt = None, dry_run: DryRunOpt = False, json: JsonOpt = False,
               hf_token_file: HfTokenFileOpt = None, via: ViaOpt = "local", workers: WorkersOpt = 8,
               force: ForceOpt = False) -> None:
    """Stream a dataset repo into `datasets/<org>/<name>/` of the bucket, verified and resumable."""
    _stage(ctx, dataset, "dataset", revision, dry_run, json, hf_token_file, via, workers, force)


def _stage(ctx: typer.Context, source_id: str | None, kind: str, revision: str | None, dry_run: bool,
           json: bool, token_file: Path | None, via: str, workers: int, force: bool) -> None:
    from gemmactl import staging
    from gemmactl.staging import stage as staging_stage

    out.json_mode = json
    if via not in ("local", "cloud-build"):
        raise UsageError(f"invalid --via '{via}'", hint="choose local or cloud-build")
    s = settings(ctx)
    source_id = source_id or s.dataset
    staging_stage.check_source_id(source_id, kind)
    s, cloud = connect(s)
    _check_bucket(cloud, s.bucket_name)
    request = staging.Request(source_id, kind, revision, force, workers)
    if via == "cloud-build":
        _check_cloud_build(cloud, token_file, source_id)
    token = staging.resolve_token(token_file, dict(os.environ), cloud, s.secret)
    with staging.prepared(cloud, s.bucket_name, request, token, check_access=not dry_run) as (plan, source):
        if dry_run:
            return _show_plan(plan, cloud, via)
        if via == "cloud-build" and plan.to_copy:
            return _via_cloud_build(cloud, s, plan)
        from gemmactl.staging.progress import RichProgress

        result = staging_stage.execute(cloud, plan, source, workers=workers, progress=RichProgress(out.err))
    _show_result(result.summary(_location(cloud, plan)))


def _check_bucket(cloud, bucket: str) -> None:
    try:
        cloud.storage.get_bucket(bucket)
    except NotFoundError:
        raise NotFoundError(f"bucket {bucket} does not exist", resource=bucket,
                            hint="run `gemmactl init` first (or pass the right --project/--region)") from None


def _check_cloud_build(cloud, token_file: Path | None, source_id: str) -> None:
    if cloud.backend == "local":
        raise UsageError("--via cloud-build needs Google Cloud", hint="drop --local, or use --via local")
    if token_file is not None:
        raise UsageError("--via cloud-build reads the token from Secret Manager, not --hf-token-file",
                         hint="store it with `gemmactl init --hf-token-file FILE`, then re-run")
    if source_id.startswith("builtin:"):
        raise UsageError("built-in assets are generated here, not on Cloud Build", hint="use --via local")


def _via_cloud_build(cloud, s, plan) -> None:
    from gemmactl.staging import cloudbuild

    with_token = cloudbuild.secret_has_value(cloud, s.secret)
    spec = cloudbuild.build_spec(s, plan.snapshot, cloudbuild.upload_source(cloud, s.bucket_name),
                                 with_token=with_token)
    info = cloudbuild.run_build(cloud, spec, out.info)
    out.success(f"staged {plan.snapshot.repo}@{plan.snapshot.revision[:12]} via Cloud Build {info.id}")
    out.result({"repo": plan.snapshot.repo, "kind": plan.snapshot.kind, "revision": plan.snapshot.revision,
                "bucket": plan.bucket, "prefix": plan.prefix, "build": info.id, "via": "cloud-build"})


def _location(cloud, plan) -> str:
    root = cloud.storage.local_path(plan.bucket)
    return str(Path(root) / plan.prefix) if root else f"gs://{plan.bucket}/{plan.prefix}"


def _show_plan(plan, cloud, via: str) -> None:
    from gemmactl.staging.progress import size_text

    to_copy = {f.path for f in plan.to_copy}
    rows = [(f.path, size_text(f.size), "copy" if f.path in to_copy else "skip (verified)") for f in plan.snapshot.files]
    json_rows = [{"path": f.path, "size": f.size, "sha256": f.sha256 or plan.present.get(f.path),
                  "action": "copy" if f.path in to_copy else "skip"} for f in plan.snapshot.files]
    if out.json_mode:
        return out.json({"repo": plan.snapshot.repo, "kind": plan.snapshot.kind, "revision": plan.snapshot.revision,
                         "bucket": plan.bucket, "prefix": plan.prefix, "location": _location(cloud, plan),
                         "via": via, "complete": plan.complete, "copy_files": len(to_copy),
                         "copy_bytes": plan.copy_bytes, "total_bytes": plan.snapshot.total_bytes,
                         "files": json_rows, "dry_run": True})
    title = f"{plan.snapshot.repo}@{plan.snapshot.revision[:12]} → {_location(cloud, plan)}"
    out.table(["file", "size", "action"], rows, title=title)
    out.info(f"dry run: would copy {len(to_copy)} of {len(rows)} files ({size_text(plan.copy_bytes)} of "
             f"{size_text(plan.snapshot.total_bytes)}); nothing was copied")


def _show_result(summary: dict) -> None:
    from gemmactl.staging.progress import size_text

    if out.json_mode:
        return out.json(summary)
    out.success(
        f"staged {summary['repo']}@{summary['revision'][:12]} → {summary['location']}: "
        f"{summary['copied_files']} copied ({size_text(summary['copied_bytes'])}), "
        f"{summary['skipped_files']} already there ({size_text(summary['skipped_bytes'])}) "
        f"in {summary['elapsed_s']:.1f}s"
    )


def register(app: typer.Typer) -> None:
    """Adds `stage-model` and `stage-data` to the root app."""
    app.command("stage-model", epilog=MODEL_EPILOG)(stage_model)
    app.command("stage-data", epilog=DATA_EPILOG)(stage_data)
