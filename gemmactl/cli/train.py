"""`gemmactl train`: validate a training config, create-or-update the Cloud Run job, run it, optionally follow it."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from gemmactl.cli._common import command_prefix, connect, follow_to_end, settings
from gemmactl.cli._options import DryRunOpt, FollowOpt, JsonOpt
from gemmactl.cli._output import out
from gemmactl.cloud import ports
from gemmactl.errors import (
    ConfigError,
    CredentialsError,
    NotFoundError,
    RegionMismatchError,
)

LOCAL_IMAGE = "local: python -m trainer"

EPILOG = """\
Examples:

  gemmactl train --size 1000 --follow

  gemmactl train --model google/gemma-3-27b-it --quantization 4bit --lr 5e-5 --dry-run

  gemmactl --local train --model builtin:tiny-gemma3 --dataset builtin:synthetic-pets --size 74 --follow
"""

_TRAIN = "Training (validated locally before anything is created)"
_JOB = "Job resources"

SizeOpt = Annotated[int | None, typer.Option("--size", help="Training images (stratified sample).", rich_help_panel=_TRAIN)]
EvalSizeOpt = Annotated[str | None, typer.Option("--eval-size", help="Eval images, or 'all'.", rich_help_panel=_TRAIN)]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Hub id, staged model or builtin:tiny-gemma3.", rich_help_panel=_TRAIN)]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", help="Hub id, staged dataset or builtin:synthetic-pets.", rich_help_panel=_TRAIN)]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="Passes over the training set.", rich_help_panel=_TRAIN)]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate (LoRA: ~1e-4).", rich_help_panel=_TRAIN)]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Per-step batch size.", rich_help_panel=_TRAIN)]
AccumOpt = Annotated[int | None, typer.Option("--grad-accum", help="Gradient accumulation steps.", rich_help_panel=_TRAIN)]
QuantOpt = Annotated[str | None, typer.Option("--quantization", help="none | 4bit (QLoRA).", rich_help_panel=_TRAIN)]
LoraROpt = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank.", rich_help_panel=_TRAIN)]
LoraAlphaOpt = Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha.", rich_help_panel=_TRAIN)]
LoraDropoutOpt = Annotated[float | None, typer.Option("--lora-dropout", help="LoRA dropout.", rich_help_panel=_TRAIN)]
LoraTargetOpt = Annotated[str | None, typer.Option("--lora-target", help="language | all-linear.", rich_help_panel=_TRAIN)]
EvalModeOpt = Annotated[str | None, typer.Option("--eval-mode", help="generate | constrained | both.", rich_help_panel=_TRAIN)]
MaxNewOpt = Annotated[int | None, typer.Option("--max-new-tokens", help="Generation length at eval.", rich_help_panel=_TRAIN)]
SaveStepsOpt = Annotated[int | None, typer.Option("--save-steps", help="Checkpoint every N steps (0 = end only).", rich_help_panel=_TRAIN)]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Stop after N optimizer steps.", rich_help_panel=_TRAIN)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.", rich_help_panel=_TRAIN)]
MergeOpt = Annotated[bool | None, typer.Option("--merge/--no-merge", help="Also write the merged bf16 model.", rich_help_panel=_TRAIN)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any other trainer field, KEY=VALUE (e.g. warmup_ratio=0.05); repeatable.",
                 rich_help_panel=_TRAIN),
]
GpuOpt = Annotated[str | None, typer.Option("--gpu-type", help="nvidia-rtx-pro-6000 | nvidia-l4.", rich_help_panel=_JOB)]
CpuOpt = Annotated[str | None, typer.Option("--cpu", help="vCPUs (>= the GPU's minimum).", rich_help_panel=_JOB)]
MemoryOpt = Annotated[str | None, typer.Option("--memory", help="Memory, e.g. 80Gi.", rich_help_panel=_JOB)]
TimeoutOpt = Annotated[str | None, typer.Option("--timeout", help="Task timeout per attempt, e.g. 6h.", rich_help_panel=_JOB)]
RetriesOpt = Annotated[int | None, typer.Option("--max-retries", help="Retries; the trainer resumes from checkpoints.", rich_help_panel=_JOB)]
NetworkOpt = Annotated[str | None, typer.Option("--network", help="VPC network for Direct VPC egress.", rich_help_panel=_JOB)]
SubnetOpt = Annotated[str | None, typer.Option("--subnet", help="VPC subnet.", rich_help_panel=_JOB)]
EgressOpt = Annotated[str | None, typer.Option("--vpc-egress", help="private-ranges-only | all-traffic.", rich_help_panel=_JOB)]
ImageOpt = Annotated[str | None, typer.Option("--image", help="Trainer image (default: the one built from this source).", rich_help_panel=_JOB)]
RunIdOpt = Annotated[str | None, typer.Option("--run-id", help="Run id (default: time-based); reuse one to resume it.")]

# gemmactl flag names in trainer messages, so errors name the flag the user typed.
_FLAG_NAMES = {"--train-size": "--size", "--num-epochs": "--epochs", "--learning-rate": "--lr",
               "--model-id": "--model", "--gradient-accumulation-steps": "--grad-accum"}


def _check_image_cuda(backend: str, gpu_type: str, image: str | None) -> None:
    """The default image needs a newer driver than some GPU types ship: fail before a GPU is billed."""
    from gemmactl.gpus import image_cuda_problem

    problem = None if backend == "local" or image else image_cuda_problem(gpu_type)
    if problem:
        raise ConfigError(problem, hint="use --gpu-type nvidia-rtx-pro-6000, or --image with an image built on CUDA ≤ 12.2")


def train(
    ctx: typer.Context,
    size: SizeOpt = None, eval_size: EvalSizeOpt = None, model: ModelOpt = None, dataset: DatasetOpt = None,
    epochs: EpochsOpt = None, lr: LrOpt = None, batch_size: BatchOpt = None, grad_accum: AccumOpt = None,
    quantization: QuantOpt = None, lora_r: LoraROpt = None, lora_alpha: LoraAlphaOpt = None,
    lora_dropout: LoraDropoutOpt = None, lora_target: LoraTargetOpt = None, eval_mode: EvalModeOpt = None,
    max_new_tokens: MaxNewOpt = None, save_steps: SaveStepsOpt = None, max_steps: MaxStepsOpt = None,
    seed: SeedOpt = None, merge: MergeOpt = None, set_: SetOpt = None,
    gpu_type: GpuOpt = None, cpu: CpuOpt = None, memory: MemoryOpt = None, timeout: TimeoutOpt = None,
    max_retries: RetriesOpt = None, network: NetworkOpt = None, subnet: SubnetOpt = None,
    vpc_egress: EgressOpt = None, image: ImageOpt = None, run_id: RunIdOpt = None,
    follow: FollowOpt = False, dry_run: DryRunOpt = False, json: JsonOpt = False,
) -> None:
    """Fine-tune on a Cloud Run GPU job (or a local subprocess); prints the execution to follow."""
    out.json_mode = json
    from gemmactl import specs

    trainer_flags = {
        "train_size": size, "eval_size": eval_size, "model_id": model, "dataset": dataset, "num_epochs": epochs,
        "learning_rate": lr, "batch_size": batch_size, "gradient_accumulation_steps": grad_accum,
        "quantization": quantization, "lora_r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
        "lora_target": lora_target, "eval_mode": eval_mode, "max_new_tokens": max_new_tokens,
        "save_steps": save_steps, "max_steps": max_steps, "seed": seed, "merge": merge,
    }
    s = settings(ctx, gpu_type=gpu_type, cpu=cpu, memory=memory, task_timeout=timeout, max_retries=max_retries,
                 network=network, subnet=subnet, vpc_egress=vpc_egress)
    config = train_config(s, {**_pairs(set_ or []), **{k: v for k, v in trainer_flags.items() if v is not None}})
    run_id = specs.check_run_id(run_id) if run_id else specs.new_run_id()
    s, cloud = connect(s)
    specs.build_job_spec(s, "-")  # resource / network checks before any API call
    _check_image_cuda(cloud.backend, s.gpu_type, image)
    try:
        _check_region(cloud, s, dry_run=dry_run)
        spec = specs.build_job_spec(s, _resolve_image(cloud, s, image, dry_run=dry_run))
        config = _for_run(cloud, s, config, run_id, dry_run=dry_run)
    except CredentialsError as e:
        if not dry_run:
            raise
        # A dry run needs no account: show the plan, unchecked against the project.
        out.warning(f"{e.message}: the plan below is not checked against the bucket, image or staged models")
        spec = specs.build_job_spec(s, image or f"{s.image_repo}:{_source_tag() or 'latest'}")
        config = config.replace(output_dir=specs.run_output_dir(run_id))
    overrides = specs.build_run_overrides(s, config, run_id)
    if dry_run:
        _show_plan(spec, overrides, run_id, s)
        return
    _launch(cloud, s, spec, overrides, config, run_id, follow=follow)


def _pairs(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'", hint="e.g. --set warmup_ratio=0.05")
        pairs[key.strip().replace("-", "_")] = value.strip()
    return pairs


def train_config(s: Any, flags: dict[str, Any]) -> Any:
    """TrainConfig from settings.model/dataset < gemmactl.toml [train] < flags, validated (exit 2 if bad)."""
    from trainer.config import ConfigError as TrainerConfigError
    from trainer.config import TrainConfig

    data = {"model_id": s.model, "dataset": s.dataset, **s.train, **flags}
    try:
        return TrainConfig.from_dict(data).validate()
    except TrainerConfigError as e:
        message = str(e)
        for theirs, ours in _FLAG_NAMES.items():
            message = message.replace(theirs, ours)
        raise ConfigError(message, hint="see `gemmactl train --help` (other trainer fields: --set KEY=VALUE)") from None


def _check_region(cloud: Any, s: Any, *, dry_run: bool) -> None:
    """Cloud Storage volumes need the bucket in the job's region; fail before anything is created."""
    from gemmactl.gpus import region_offers

    if cloud.backend != "local" and not region_offers(s.gpu_type, s.region):
        out.warning(f"{s.gpu_type} is not known to be offered in {s.region}; the job may fail to start")
    try:
        bucket = cloud.storage.get_bucket(s.bucket_name)
    except NotFoundError:
        if dry_run:
            out.warning(f"bucket {s.bucket_name} does not exist yet; run `gemmactl init` before training")
            return
        raise NotFoundError(f"bucket {s.bucket_name} does not exist", resource=s.bucket_name,
                            hint=f"run `{command_prefix(cloud)} init`") from None
    if bucket.location.lower() != s.region.lower():
        raise RegionMismatchError(
            f"bucket {s.bucket_name} is in {bucket.location}, but the job runs in {s.region}",
            hint=f"use --region {bucket.location.lower()}, or a bucket in {s.region} (--bucket / GEMMACTL_BUCKET)",
        )


def _source_tag() -> str | None:
    """The content-hash tag `gemmactl build` would push from here (the same source lookup), or None."""
    from gemmactl import source
    from gemmactl.errors import UsageError

    try:
        return source.content_hash(source.find_root())
    except UsageError:  # not inside a source checkout: no tag to prefer
        return None


def _resolve_image(cloud: Any, s: Any, explicit: str | None, *, dry_run: bool) -> str:
    if explicit:
        return explicit
    if cloud.backend == "local":
        return LOCAL_IMAGE  # the local backend runs the trainer from this install; nothing to build
    tag = _source_tag()
    if tag and cloud.registry.image_exists(f"{s.image_repo}:{tag}"):
        return f"{s.image_repo}:{tag}"
    latest = f"{s.image_repo}:latest"
    if not cloud.registry.image_exists(latest):
        if not dry_run:
            raise NotFoundError(f"no trainer image in {s.image_repo}", hint="run `gemmactl build` first")
        out.warning(f"no trainer image in {s.image_repo} yet; run `gemmactl build` before training")
    else:
        out.warning(f"no image built from this source{f' ({tag})' if tag else ''}; using :latest, which may be older"
                    " (run `gemmactl build` to be sure)")
    return latest


def _for_run(cloud: Any, s: Any, config: Any, run_id: str, *, dry_run: bool) -> Any:
    from gemmactl import runs

    try:
        return runs.for_run(config, cloud.storage, s.bucket_name, run_id)
    except NotFoundError:
        if not dry_run:
            raise
        from gemmactl.specs import run_output_dir

        return config.replace(output_dir=run_output_dir(run_id))  # no bucket yet: shown, not resolved


def _show_plan(spec: ports.JobSpec, overrides: ports.RunOverrides, run_id: str, s: Any) -> None:
    from rich.text import Text

    from gemmactl import pricing, specs

    est = pricing.estimate(spec, price_per_hour=pricing.parse_price(os.environ.get(pricing.PRICE_ENV)))
    command = specs.gcloud_command(spec, overrides)
    if out.json_mode:
        out.json({"dry_run": True, "run_id": run_id, "image": spec.image, "job": specs.job_resource(spec),
                  "run": {"args": list(overrides.args), "env": overrides.env}, "gcloud": command,
                  "estimate": est.as_dict()})
        return
    out.text("[bold]Cloud Run job[/bold] (create-or-update)")
    # Plain text, never wrapped or cropped: both blocks are meant to be copied.
    out.rich(Text(specs.job_spec_yaml(spec)))
    out.text("[bold]Equivalent gcloud commands[/bold]")
    out.rich(Text(command + "\n"))
    out.text(f"[bold]Run[/bold] {run_id} → gs://{s.bucket_name}/runs/{run_id}/")
    out.text(_estimate_line(est))
    out.info("dry run: nothing was created or changed")


def _estimate_line(est: Any) -> str:
    hours = est.seconds / 3600
    line = (f"[bold]Estimated cost[/bold] up to ${est.total:,.2f} for the {hours:g} h timeout "
            f"(${est.per_hour:,.2f}/h; prices as of {est.as_of}, {est.source})")
    if est.max_attempts > 1:
        line += f"; ${est.worst_case:,.2f} if all {est.max_attempts - 1} retries also run to the timeout"
    return line


def _launch(cloud: Any, s: Any, spec: ports.JobSpec, overrides: ports.RunOverrides, config: Any,
            run_id: str, *, follow: bool) -> None:
    from gemmactl import runs

    resumed = runs.write_config(cloud.storage, s.bucket_name, run_id, config)
    if resumed:
        out.info(f"resuming run {run_id} (same configuration; the trainer continues from its checkpoints)")
    _, created = cloud.jobs.apply(spec)
    out.success(f"{'created' if created else 'updated'} job {spec.name} in {spec.region}")
    execution = cloud.jobs.run(spec.region, spec.name, overrides)
    out.success(f"started execution {execution.name} (run {run_id})")
    if follow:
        execution = _follow(cloud, s, execution)
    record = {"run_id": run_id, "execution": execution.name, "job": spec.name, "job_created": created,
              "state": execution.state, "image": spec.image, "output": _output_location(cloud, s, run_id)}
    out.result(record)
    if not follow and not out.json_mode:
        prefix = command_prefix(cloud)
        out.hint(f"`{prefix} logs {execution.name} --follow` · `{prefix} status` · `{prefix} results {run_id}`")


def _output_location(cloud: Any, s: Any, run_id: str) -> str:
    """gs://bucket/runs/<id>/, or the directory itself on the local backend."""
    from gemmactl import runs

    local = cloud.storage.local_path(s.bucket_name)
    return f"{local}/{runs.run_prefix(run_id)}" if local else runs.run_uri(s.bucket_name, run_id)


def _follow(cloud: Any, s: Any, execution: ports.Execution) -> ports.Execution:
    from gemmactl import logview

    # With --json the result owns stdout: progress goes to stderr.
    view = logview.default_view(follow=True, stderr=True) if out.json_mode else None
    return follow_to_end(cloud, s, execution.name, view=view)


def register(app: typer.Typer) -> None:
    """Adds `train` to the root app."""
    app.command("train", epilog=EPILOG)(train)
