"""Pure builders for the training job: Settings → ports.JobSpec / RunOverrides, and their YAML / gcloud forms.

No I/O here: everything is computed from its arguments, so `train --dry-run` shows exactly what `train`
sends, and the golden tests pin every field the seed recipe's `gcloud beta run jobs create` sets.
"""

from __future__ import annotations

import re
import secrets as _random
import shlex
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gemmactl.cloud.ports import JobSpec, RunOverrides, SecretEnv
from gemmactl.errors import ConfigError
from gemmactl.gpus import GPUS

if TYPE_CHECKING:
    from gemmactl.settings import Settings
    from trainer.config import TrainConfig

MOUNT_PATH = "/mnt/gcs"
VOLUME_NAME = "model-volume"  # the seed recipe's name; shows up in the console and in `gcloud` output
CONTAINER_NAME = "trainer"
LABELS = {"managed-by": "gemmactl"}
# Cloud Run jobs accept task timeouts up to 168 h; GPU limits have moved over time, so only the hard cap is ours.
MAX_TIMEOUT_S = 168 * 3600
_RUN_ID_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


# ------------------------------------------------------------------------------- run ids


def new_run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    """`20261120-143015-a1b2`: sortable by start time, unique enough, valid as a path and a label value."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{suffix or _random.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"invalid run id '{run_id}'",
            hint="use 1-63 lowercase letters, digits and hyphens, e.g. pets-r16-lr1e-4",
        )
    return run_id


# ------------------------------------------------------------------------------- job spec


def memory_gib(memory: str) -> float:
    """'80Gi' → 80.0, '512Mi' → 0.5 (Settings already checked the format)."""
    number, unit = int(memory[:-2]), memory[-2:]
    return number if unit == "Gi" else number / 1024


def check_resources(gpu_type: str, cpu: str, memory: str) -> None:
    """Cloud Run refuses a GPU instance below the GPU's minimum CPU / memory; say so before it does."""
    gpu = GPUS[gpu_type]
    if float(cpu) < gpu.min_cpu:
        raise ConfigError(
            f"--cpu {cpu} is below the {gpu_type} minimum of {gpu.min_cpu} vCPU",
            hint=f"use --cpu {gpu.min_cpu} or more",
        )
    if memory_gib(memory) < gpu.min_memory_gib:
        raise ConfigError(
            f"--memory {memory} is below the {gpu_type} minimum of {gpu.min_memory_gib}Gi",
            hint=f"use --memory {gpu.min_memory_gib}Gi or more",
        )


def _check_network(settings: Settings) -> None:
    if settings.vpc_egress and not (settings.network or settings.subnet):
        raise ConfigError("--vpc-egress needs --network and/or --subnet", hint="e.g. --network default --subnet default")


def build_job_spec(settings: Settings, image: str) -> JobSpec:
    """The Cloud Run job every run of this project uses; per-run values go in `build_run_overrides`."""
    check_resources(settings.gpu_type, settings.cpu, settings.memory)
    _check_network(settings)
    timeout_s = settings.task_timeout_s
    if not 60 <= timeout_s <= MAX_TIMEOUT_S:
        raise ConfigError(f"task timeout {settings.task_timeout} is outside 1m..168h", hint="e.g. --timeout 6h")
    bucket = settings.bucket_name
    return JobSpec(
        name=settings.job,
        region=settings.region,
        image=image,
        env={"BUCKET_NAME": bucket},
        secret_env={"HF_TOKEN": SecretEnv(settings.secret, "latest")},
        cpu=settings.cpu,
        memory=settings.memory,
        gpu_count=1,
        gpu_type=settings.gpu_type,
        gpu_zonal_redundancy_disabled=True,
        timeout_s=timeout_s,
        max_retries=settings.max_retries,
        service_account=settings.service_account_email,
        bucket=bucket,
        mount_path=MOUNT_PATH,
        network=settings.network,
        subnet=settings.subnet,
        vpc_egress=settings.vpc_egress,
        labels=dict(LABELS),
        launch_stage="BETA",
        container_name=CONTAINER_NAME,
    )


def run_output_dir(run_id: str, mount_path: str = MOUNT_PATH) -> str:
    return f"{mount_path}/runs/{run_id}"


def build_run_overrides(settings: Settings, config: TrainConfig, run_id: str) -> RunOverrides:
    """Trainer args for one run: its config file first (all fields), then explicit flags for readability.

    `config.json` makes the run reproducible even when the image's trainer has other defaults; the
    flags repeat what differs from the defaults so the console and `gcloud` show what the run does.
    """
    check_run_id(run_id)
    config = config.replace(output_dir=run_output_dir(run_id))
    config_file = f"{run_output_dir(run_id)}/config.json"
    return RunOverrides(
        args=("--config", config_file, *config.to_args()),
        env={"RUN_ID": run_id},
        container_name=CONTAINER_NAME,
    )


# ------------------------------------------------------------------------------- renderings


def _duration(seconds: int) -> str:
    return f"{seconds}s"


def job_resource(spec: JobSpec) -> dict[str, Any]:
    """The Cloud Run Admin API v2 Job body (camelCase, as `gcloud run jobs describe --format yaml` shows)."""
    container: dict[str, Any] = {
        "name": spec.container_name,
        "image": spec.image,
        "resources": {"limits": {"cpu": spec.cpu, "memory": spec.memory, "nvidia.com/gpu": str(spec.gpu_count)}},
        "env": [{"name": k, "value": v} for k, v in spec.env.items()]
        + [
            {"name": k, "valueSource": {"secretKeyRef": {"secret": s.secret, "version": s.version}}}
            for k, s in spec.secret_env.items()
        ],
    }
    if spec.args:
        container["args"] = list(spec.args)
    task: dict[str, Any] = {
        "containers": [container],
        "timeout": _duration(spec.timeout_s),
        "maxRetries": spec.max_retries,
        "serviceAccount": spec.service_account,
    }
    if spec.gpu_type:
        task["nodeSelector"] = {"accelerator": spec.gpu_type}
        task["gpuZonalRedundancyDisabled"] = spec.gpu_zonal_redundancy_disabled
    if spec.bucket:
        task["volumes"] = [{"name": VOLUME_NAME, "gcs": {"bucket": spec.bucket, "readOnly": False}}]
        container["volumeMounts"] = [{"name": VOLUME_NAME, "mountPath": spec.mount_path}]
    if spec.network or spec.subnet:
        interface = {k: v for k, v in (("network", spec.network), ("subnetwork", spec.subnet)) if v}
        task["vpcAccess"] = {"networkInterfaces": [interface]}
        if spec.vpc_egress:
            task["vpcAccess"]["egress"] = spec.vpc_egress.upper().replace("-", "_")
    return {
        "name": spec.name,
        "location": spec.region,
        "labels": dict(spec.labels),
        "launchStage": spec.launch_stage,
        "template": {"taskCount": spec.task_count, "template": task},
    }


def job_spec_yaml(spec: JobSpec) -> str:
    """The job as YAML, in the field order a reader expects (not alphabetical)."""
    import yaml  # light, but only `--dry-run` needs it

    return yaml.safe_dump(job_resource(spec), sort_keys=False, default_flow_style=False)


def _q(value: str) -> str:
    return shlex.quote(value)


def gcloud_command(spec: JobSpec, overrides: RunOverrides | None = None) -> str:
    """The equivalent `gcloud beta run jobs deploy` (create-or-update), plus `execute` for one run."""
    lines = [f"gcloud beta run jobs deploy {_q(spec.name)}", f"--region {_q(spec.region)}", f"--image {_q(spec.image)}"]
    if spec.env:
        lines.append("--set-env-vars " + _q(",".join(f"{k}={v}" for k, v in spec.env.items())))
    if spec.secret_env:
        lines.append("--set-secrets " + _q(",".join(f"{k}={s.secret}:{s.version}" for k, s in spec.secret_env.items())))
    if spec.gpu_type:
        lines += [f"--gpu {spec.gpu_count}", f"--gpu-type {_q(spec.gpu_type)}"]
        lines.append("--no-gpu-zonal-redundancy" if spec.gpu_zonal_redundancy_disabled else "--gpu-zonal-redundancy")
    lines += [f"--cpu {_q(spec.cpu)}", f"--memory {_q(spec.memory)}", f"--task-timeout {_duration(spec.timeout_s)}"]
    lines.append(f"--max-retries {spec.max_retries}")
    if spec.service_account:
        lines.append(f"--service-account {_q(spec.service_account)}")
    if spec.bucket:
        lines.append(f"--add-volume name={VOLUME_NAME},type=cloud-storage,bucket={_q(spec.bucket)}")
        lines.append(f"--add-volume-mount volume={VOLUME_NAME},mount-path={_q(spec.mount_path)}")
    for flag, value in (("--network", spec.network), ("--subnet", spec.subnet), ("--vpc-egress", spec.vpc_egress)):
        if value:
            lines.append(f"{flag} {_q(value)}")
    if spec.labels:
        lines.append("--labels " + _q(",".join(f"{k}={v}" for k, v in spec.labels.items())))
    if spec.args:
        lines.append(_q("--args=" + ",".join(spec.args)))
    command = " \\\n  ".join(lines)
    if overrides is not None:
        command += "\n\n" + _execute_command(spec, overrides)
    return command


def _execute_command(spec: JobSpec, overrides: RunOverrides) -> str:
    lines = [f"gcloud beta run jobs execute {_q(spec.name)}", f"--region {_q(spec.region)}", "--async"]
    if overrides.args:
        # gcloud splits --args on commas; none of our values contain one (paths, ids, numbers).
        lines.append(_q("--args=" + ",".join(overrides.args)))  # `=`: the values start with --
    if overrides.env:
        lines.append("--update-env-vars " + _q(",".join(f"{k}={v}" for k, v in overrides.env.items())))
    if overrides.timeout_s:
        lines.append(f"--task-timeout {_duration(overrides.timeout_s)}")
    return " \\\n  ".join(lines)

