"""Pure conversions between our job dataclasses and Cloud Run v2 messages (gcp-api.md §1.8-1.10)."""

from __future__ import annotations

from typing import Any

from gemmactl.cloud import ports

VOLUME = "gcs-bucket"
_EGRESS = {"private-ranges-only": "PRIVATE_RANGES_ONLY", "all-traffic": "ALL_TRAFFIC"}
_RUN_ID_LABELS = ("run-id", "run_id", "gemmactl-run-id")


def _env(spec_env: dict[str, str], secret_env: dict[str, ports.SecretEnv]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec_env.items())]
    for name, ref in sorted(secret_env.items()):
        # Only a reference travels: Cloud Run resolves the value at start, inside the job.
        env.append(
            {"name": name, "value_source": {"secret_key_ref": {"secret": ref.secret, "version": ref.version}}}
        )
    return env


def _container(spec: ports.JobSpec) -> dict[str, Any]:
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpu_count:
        limits["nvidia.com/gpu"] = str(spec.gpu_count)
    container: dict[str, Any] = {
        "name": spec.container_name,
        "image": spec.image,
        "args": list(spec.args),
        "env": _env(spec.env, spec.secret_env),
        "resources": {"limits": limits},
    }
    if spec.bucket:
        container["volume_mounts"] = [{"name": VOLUME, "mount_path": spec.mount_path}]
    return container


def _task_template(spec: ports.JobSpec) -> dict[str, Any]:
    task: dict[str, Any] = {
        "containers": [_container(spec)],
        "max_retries": spec.max_retries,
        "timeout": {"seconds": spec.timeout_s},
    }
    if spec.service_account:
        task["service_account"] = spec.service_account
    if spec.bucket:
        task["volumes"] = [{"name": VOLUME, "gcs": {"bucket": spec.bucket, "read_only": False}}]
    if spec.gpu_count and spec.gpu_type:
        task["node_selector"] = {"accelerator": spec.gpu_type}
        task["gpu_zonal_redundancy_disabled"] = spec.gpu_zonal_redundancy_disabled
    if spec.network or spec.subnet:
        interface = {k: v for k, v in (("network", spec.network), ("subnetwork", spec.subnet)) if v}
        task["vpc_access"] = {"network_interfaces": [interface]}
        if spec.vpc_egress:
            task["vpc_access"]["egress"] = _EGRESS[spec.vpc_egress]
    return task


def build_job(spec: ports.JobSpec, project: str) -> Any:
    """The full run_v2.Job for `spec` (UpdateJob replaces the whole spec, so nothing is left implicit)."""
    from google.cloud import run_v2

    from gemmactl import __version__

    return run_v2.Job(
        name=f"projects/{project}/locations/{spec.region}/jobs/{spec.name}",
        labels=dict(spec.labels),
        client="gemmactl",
        client_version=__version__,
        launch_stage=spec.launch_stage,
        template={"task_count": spec.task_count, "template": _task_template(spec)},
    )


def build_overrides(overrides: ports.RunOverrides) -> Any:
    from google.cloud import run_v2

    container = {
        "name": overrides.container_name,
        "args": list(overrides.args),
        "env": [{"name": k, "value": v} for k, v in sorted(overrides.env.items())],
    }
    result: dict[str, Any] = {"container_overrides": [container]}
    if overrides.timeout_s:
        result["timeout"] = {"seconds": overrides.timeout_s}
    return run_v2.RunJobRequest.Overrides(result)


def job_info(job: Any, region: str) -> ports.JobInfo:
    containers = job.template.template.containers
    latest = job.latest_created_execution.name if "latest_created_execution" in job else ""
    return ports.JobInfo(
        name=job.name.rsplit("/", 1)[-1],
        region=region,
        generation=int(job.generation or 0),
        image=containers[0].image if containers else "",
        labels=dict(job.labels),
        latest_execution=latest.rsplit("/", 1)[-1] if latest else None,
    )


def _completed(execution: Any) -> Any | None:
    return next((c for c in execution.conditions if c.type_ == "Completed"), None)


def execution_state(execution: Any) -> tuple[str, str | None, str | None]:
    """(state, reason, message) from the "Completed" condition and the task counts."""
    cond = _completed(execution)
    cond_state = cond.state.name if cond else ""
    reason = None
    if cond is not None:
        reason = cond.execution_reason.name if cond.execution_reason else (cond.reason.name if cond.reason else None)
        if reason and reason.endswith("_UNDEFINED"):
            reason = None
    message = (cond.message or None) if cond is not None else None
    if cond_state == "CONDITION_SUCCEEDED":
        return ports.SUCCEEDED, reason, message
    if cond_state == "CONDITION_FAILED":
        cancelled = reason == "CANCELLED" or execution.cancelled_count > 0
        return (ports.CANCELLED if cancelled else ports.FAILED), reason, message
    if execution.completion_time:
        done_ok = execution.succeeded_count >= (execution.task_count or 1)
        return (ports.SUCCEEDED if done_ok else ports.FAILED), reason, message
    if execution.running_count or execution.start_time:
        return ports.RUNNING, reason, message
    return ports.PENDING, reason, message


def _run_id(execution: Any) -> str | None:
    for container in execution.template.containers:
        for env in container.env:
            if env.name == "RUN_ID" and env.value:
                return env.value
    labels = dict(execution.labels)
    return next((labels[k] for k in _RUN_ID_LABELS if labels.get(k)), None)


def execution_info(execution: Any, job: str) -> ports.Execution:
    state, reason, message = execution_state(execution)
    return ports.Execution(
        name=execution.name.rsplit("/", 1)[-1],
        job=job,
        state=state,
        create_time=execution.create_time or None,
        start_time=execution.start_time or None,
        completion_time=execution.completion_time or None,
        task_count=int(execution.task_count or 1),
        running=int(execution.running_count),
        succeeded=int(execution.succeeded_count),
        failed=int(execution.failed_count),
        cancelled=int(execution.cancelled_count),
        retried=int(execution.retried_count),
        reason=reason,
        message=message,
        run_id=_run_id(execution),
        log_uri=execution.log_uri or None,
    )


def terminal_failure(job: Any) -> tuple[str, str] | None:
    """(reason, message) when the job's terminal condition says it cannot run; None when it is ready."""
    cond = job.terminal_condition if "terminal_condition" in job else None
    if cond is None or cond.state.name in ("CONDITION_SUCCEEDED", "STATE_UNSPECIFIED"):
        return None
    if cond.state.name != "CONDITION_FAILED":
        return None
    reason = cond.reason.name if cond.reason else "FAILED"
    return reason, cond.message or reason
