"""Logging and Cloud Build adapters: the exact filter (with its own timestamp bound), one request per read,
the Build body with Secret Manager references, and build logs tailed from Cloud Storage."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from gemmactl import errors
from gemmactl.cloud import ports

SINCE = datetime(2026, 11, 2, 10, 0, 0, 123456, tzinfo=UTC)
TOKEN = "hf_SuperSecretTokenValue123"


def _entry(i: int, **payload) -> dict:
    entry = {"insertId": f"id{i}", "timestamp": f"2026-11-02T10:00:0{i}.000000Z", "severity": "INFO",
             "logName": "projects/test-project/logs/run.googleapis.com%2Fstdout",
             "resource": {"type": "cloud_run_job", "labels": {"job_name": "j", "location": "europe-west4"}},
             "labels": {"run.googleapis.com/execution_name": "j-abc12"}}
    return {**entry, **payload}


def test_read_sends_one_request_with_the_full_filter(cloud, google):
    google.state.log_entries = [
        _entry(1, textPayload="plain line\n"),
        _entry(2, jsonPayload={"event": "step", "step": 3, "loss": 0.5}, severity="WARNING"),
    ]
    google.state.log_next_page_token = "more"  # must not be followed
    query = ports.LogQuery(region="europe-west4", job="j",
                           execution="projects/test-project/locations/europe-west4/jobs/j/executions/j-abc12",
                           min_severity="info")

    entries = cloud.logs.read(query, since=SINCE, limit=50)

    (req,) = google.requests
    assert (req.method, req.path) == ("POST", "/v2/entries:list")
    assert req.body == {
        "resourceNames": ["projects/test-project"],
        "filter": 'resource.type="cloud_run_job" AND resource.labels.job_name="j" AND '
                  'resource.labels.location="europe-west4" AND '
                  'labels."run.googleapis.com/execution_name"="j-abc12" AND '
                  'timestamp>="2026-11-02T10:00:00.123456Z" AND severity>=INFO',
        "orderBy": "timestamp asc",
        "pageSize": 50,
    }
    assert [e.insert_id for e in entries] == ["id1", "id2"]
    assert entries[0].text == "plain line" and entries[0].payload is None
    assert entries[0].timestamp == datetime(2026, 11, 2, 10, 0, 1, tzinfo=UTC)
    assert json.loads(entries[1].text) == {"event": "step", "step": 3, "loss": 0.5}
    assert entries[1].payload == {"event": "step", "step": 3, "loss": 0.5} and entries[1].severity == "WARNING"


def test_read_without_execution_still_bounds_time(cloud, google):
    cloud.logs.read(ports.LogQuery(region="europe-west4", job="j"), since=datetime(2026, 1, 1))
    text = google.requests[0].body["filter"]
    assert "execution_name" not in text and 'timestamp>="2026-01-01T00:00:00.000000Z"' in text
    with pytest.raises(errors.UsageError):
        cloud.logs.read(ports.LogQuery(region="europe-west4", job="j", min_severity="LOUD"), since=SINCE)


def test_logging_rate_limit_is_a_quota_error(cloud, google):
    google.fail("POST", "entries:list", 429, "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Read requests' of service 'logging.googleapis.com'")
    with pytest.raises(errors.QuotaError, match="read logs of job j"):
        cloud.logs.read(ports.LogQuery(region="europe-west4", job="j"), since=SINCE)


def _build_spec() -> ports.BuildSpec:
    tag = "europe-west4-docker.pkg.dev/test-project/gemma-finetuning/gemma-finetune:abc123"
    return ports.BuildSpec(
        region="europe-west4",
        steps=(ports.BuildStep("gcr.io/cloud-builders/docker", ("build", "-t", tag, "."), secret_env=("HF_TOKEN",)),),
        images=(tag,),
        source_bucket="bkt",
        source_object="staging/src-abc123.tgz",
        logs_bucket="gs://bkt/cloudbuild-logs",
        timeout_s=1800,
        machine_type="E2_HIGHCPU_8",
        disk_size_gb=100,
        available_secrets={"HF_TOKEN": "projects/test-project/secrets/HF_TOKEN/versions/latest"},
        service_account="builder@test-project.iam.gserviceaccount.com",
        tags=("gemmactl",),
    )


def test_submit_sends_the_build_and_reads_id_from_the_operation(cloud, google):
    build = cloud.builds.submit(_build_spec())

    (req,) = google.requests
    # The library picks CreateBuild's first HTTP binding; the region travels as `parent`.
    assert req.path == "/v1/projects/test-project/builds"
    assert req.query == {"parent": "projects/test-project/locations/europe-west4"}
    body = req.body
    assert body["steps"] == [{"name": "gcr.io/cloud-builders/docker", "secretEnv": ["HF_TOKEN"],
                              "args": ["build", "-t", _build_spec().images[0], "."]}]
    assert body["source"] == {"storageSource": {"bucket": "bkt", "object": "staging/src-abc123.tgz"}}
    assert body["logsBucket"] == "gs://bkt/cloudbuild-logs"
    assert body["options"] == {"logging": 2, "machineType": 5, "diskSizeGb": "100"}  # GCS_ONLY, E2_HIGHCPU_8
    assert body["timeout"] == "1800s"
    assert body["availableSecrets"] == {"secretManager": [
        {"versionName": "projects/test-project/secrets/HF_TOKEN/versions/latest", "env": "HF_TOKEN"}]}
    assert body["serviceAccount"] == "projects/test-project/serviceAccounts/builder@test-project.iam.gserviceaccount.com"
    assert "substitutions" not in body
    assert build.id and build.status == "QUEUED" and build.logs_bucket == "gs://bkt/cloudbuild-logs"
    assert build.log_url.startswith("https://console.cloud.google.com/cloud-build/builds")


def test_get_and_cancel(cloud, google):
    build = cloud.builds.submit(_build_spec())
    stored = google.state.builds[build.id]
    stored.update(status="FAILURE", failureInfo={"type": "USER_BUILD_STEP", "detail": "step 0 exited 1"})
    failed = cloud.builds.get("europe-west4", build.id)
    assert failed.done and failed.failure_detail == "step 0 exited 1"
    last = google.requests[-1]
    assert last.path == f"/v1/projects/test-project/builds/{build.id}"
    assert last.query == {"name": f"projects/test-project/locations/europe-west4/builds/{build.id}"}

    stored.update(status="SUCCESS", failureInfo={}, results={"images": [
        {"name": "europe-west4-docker.pkg.dev/test-project/r/i:abc", "digest": "sha256:" + "0" * 64}]})
    ok = cloud.builds.get("europe-west4", build.id)
    assert ok.status == "SUCCESS" and ok.images == (f"europe-west4-docker.pkg.dev/test-project/r/i:abc@sha256:{'0' * 64}",)

    stored["status"] = "WORKING"
    assert cloud.builds.cancel("europe-west4", build.id).status == "CANCELLED"
    assert google.requests[-1].path.endswith(f"/builds/{build.id}:cancel")


def test_read_log_tails_the_gcs_object(cloud):
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    cloud.storage.create_bucket(bucket, location="europe-west4", labels={})
    build = ports.BuildInfo(id="b1", status="WORKING", logs_bucket=f"gs://{bucket}/cloudbuild-logs")

    assert cloud.builds.read_log(build, offset=0) == b""  # not started: 404
    cloud.storage.write_bytes(bucket, "cloudbuild-logs/log-b1.txt", b"Step 1/3\nStep 2/3\n")
    assert cloud.builds.read_log(build, offset=0) == b"Step 1/3\nStep 2/3\n"
    assert cloud.builds.read_log(build, offset=9) == b"Step 2/3\n"
    assert cloud.builds.read_log(build, offset=18) == b""  # nothing new
