"""Cloud Run v2 adapter: the exact UpdateJob / RunJob requests, execution states and deploy failures."""

from __future__ import annotations

import pytest

from gemmactl import errors
from gemmactl.cloud import ports

JOB_PATH = "/v2/projects/test-project/locations/europe-west4/jobs/gemma-finetuning-job"


def _spec(**over) -> ports.JobSpec:
    base = dict(
        name="gemma-finetuning-job",
        region="europe-west4",
        image="europe-west4-docker.pkg.dev/test-project/gemma-finetuning/gemma-finetune:abc123",
        args=("--size", "1000"),
        env={"BUCKET_NAME": "bkt"},
        secret_env={"HF_TOKEN": ports.SecretEnv("HF_TOKEN")},
        service_account="finetune-gemma-job-sa@test-project.iam.gserviceaccount.com",
        bucket="bkt",
        max_retries=0,
        labels={"managed-by": "gemmactl"},
    )
    return ports.JobSpec(**{**base, **over})


def test_first_deploy_creates_the_job_with_every_gpu_field(cloud, google):
    info, created = cloud.jobs.apply(_spec())

    assert created and info.generation == 1 and info.name == "gemma-finetuning-job"
    (patch,) = google.find("PATCH")
    assert patch.path == JOB_PATH
    assert patch.query == {"allowMissing": "true"}
    body = patch.body
    assert body["launchStage"] == 3  # BETA, sent as enum int
    assert body["labels"] == {"managed-by": "gemmactl"}
    task = body["template"]["template"]
    assert task["nodeSelector"] == {"accelerator": "nvidia-rtx-pro-6000"}
    assert task["gpuZonalRedundancyDisabled"] is True
    assert task["timeout"] == "21600s"
    assert task["maxRetries"] == 0  # explicit zero survives (oneof)
    assert task["serviceAccount"] == "finetune-gemma-job-sa@test-project.iam.gserviceaccount.com"
    assert task["volumes"] == [{"name": "gcs-bucket", "gcs": {"bucket": "bkt"}}]
    (container,) = task["containers"]
    assert container["name"] == "trainer"
    assert container["resources"] == {"limits": {"cpu": "20", "memory": "80Gi", "nvidia.com/gpu": "1"}}
    assert container["volumeMounts"] == [{"name": "gcs-bucket", "mountPath": "/mnt/gcs"}]
    assert container["args"] == ["--size", "1000"]
    assert container["env"] == [
        {"name": "BUCKET_NAME", "value": "bkt"},
        {"name": "HF_TOKEN", "valueSource": {"secretKeyRef": {"secret": "HF_TOKEN", "version": "latest"}}},
    ]


def test_second_deploy_is_an_update(cloud, google):
    cloud.jobs.apply(_spec())
    info, created = cloud.jobs.apply(_spec(image="img:2"))
    assert not created and info.generation == 2 and info.image == "img:2"


def test_vpc_access_and_no_gpu(cloud, google):
    cloud.jobs.apply(_spec(gpu_count=0, network="default", subnet="default", vpc_egress="private-ranges-only"))
    task = google.find("PATCH")[0].body["template"]["template"]
    assert "nodeSelector" not in task and "gpuZonalRedundancyDisabled" not in task
    assert task["vpcAccess"] == {"networkInterfaces": [{"network": "default", "subnetwork": "default"}], "egress": 2}
    assert "nvidia.com/gpu" not in task["containers"][0]["resources"]["limits"]


def test_failed_terminal_condition_is_surfaced(cloud, google):
    google.state.job_terminal_condition = {
        "type": "Ready", "state": "CONDITION_FAILED", "reason": "SECRETS_ACCESS_CHECK_FAILED",
        "message": "Permission denied on secret: projects/123/secrets/HF_TOKEN/versions/latest",
    }
    with pytest.raises(errors.CloudError, match="SECRETS_ACCESS_CHECK_FAILED: Permission denied on secret") as e:
        cloud.jobs.apply(_spec())
    assert "gemmactl init" in e.value.hint


def test_run_sends_overrides_and_returns_the_execution_from_metadata(cloud, google):
    cloud.jobs.apply(_spec())
    overrides = ports.RunOverrides(args=("--run-id", "r1"), env={"RUN_ID": "r1"}, timeout_s=3600)

    execution = cloud.jobs.run("europe-west4", "gemma-finetuning-job", overrides)

    (run,) = google.find("POST", r":run$")
    assert run.path == JOB_PATH + ":run"
    assert run.body == {"overrides": {
        "containerOverrides": [{"name": "trainer", "args": ["--run-id", "r1"], "env": [{"name": "RUN_ID", "value": "r1"}]}],
        "timeout": "3600s",
    }}
    assert execution.name.startswith("gemma-finetuning-job-") and "/" not in execution.name
    assert execution.state == ports.PENDING and execution.run_id == "r1" and execution.create_time
    # the operation was never polled: it lasts as long as the execution
    assert not google.find("GET", "/operations/")


def test_execution_states_follow_the_completed_condition(cloud, google):
    cloud.jobs.apply(_spec())
    ex = cloud.jobs.run("europe-west4", "gemma-finetuning-job", ports.RunOverrides(env={"RUN_ID": "r2"}))
    stored = next(iter(google.state.executions.values()))

    stored.update(runningCount=1, startTime="2026-11-02T10:00:00Z")
    assert cloud.jobs.get_execution("europe-west4", "gemma-finetuning-job", ex.name).state == ports.RUNNING

    stored.update(runningCount=0, failedCount=1, completionTime="2026-11-02T10:05:00Z", conditions=[
        {"type": "Completed", "state": "CONDITION_FAILED", "executionReason": "NON_ZERO_EXIT_CODE",
         "message": "Task gemma-finetuning-job-00001-abc failed with exit code 1"}])
    failed = cloud.jobs.get_execution("europe-west4", "gemma-finetuning-job", ex.name)
    assert (failed.state, failed.reason, failed.failed) == (ports.FAILED, "NON_ZERO_EXIT_CODE", 1)
    assert "exit code 1" in failed.message and failed.done

    stored.update(failedCount=0, succeededCount=1, conditions=[{"type": "Completed", "state": "CONDITION_SUCCEEDED"}])
    assert cloud.jobs.get_execution("europe-west4", "gemma-finetuning-job", ex.name).state == ports.SUCCEEDED


def test_list_is_newest_first_and_cancel_reports_cancelled(cloud, google):
    cloud.jobs.apply(_spec())
    first = cloud.jobs.run("europe-west4", "gemma-finetuning-job", ports.RunOverrides(env={"RUN_ID": "a"}))
    second = cloud.jobs.run("europe-west4", "gemma-finetuning-job", ports.RunOverrides(env={"RUN_ID": "b"}))

    listed = cloud.jobs.list_executions("europe-west4", "gemma-finetuning-job", limit=5)
    assert [e.name for e in listed] == [second.name, first.name]
    assert google.find("GET", "/executions$")[0].query == {"pageSize": "5"}

    cancelled = cloud.jobs.cancel("europe-west4", "gemma-finetuning-job", first.name)
    assert google.find("POST", ":cancel$")[0].path == f"{JOB_PATH}/executions/{first.name}:cancel"
    assert cancelled.state == ports.CANCELLED and cancelled.reason == "CANCELLED"


def test_get_job_reports_latest_execution_and_missing_job(cloud, google):
    with pytest.raises(errors.NotFoundError, match="gemma-finetuning-job"):
        cloud.jobs.get_job("europe-west4", "gemma-finetuning-job")
    cloud.jobs.apply(_spec())
    ex = cloud.jobs.run("europe-west4", "gemma-finetuning-job", ports.RunOverrides())
    assert cloud.jobs.get_job("europe-west4", "gemma-finetuning-job").latest_execution == ex.name


def test_run_is_never_retried_on_a_server_error(cloud, google, clock):
    cloud.jobs.apply(_spec())
    google.fail("POST", r":run$", 503, "UNAVAILABLE", "The service is currently unavailable.")
    with pytest.raises(errors.TransientError):
        cloud.jobs.run("europe-west4", "gemma-finetuning-job", ports.RunOverrides())
    assert len(google.find("POST", r":run$")) == 1 and clock.slept == []
