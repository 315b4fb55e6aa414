"""`gemmactl init` and `doctor` on the gcp backend, end to end against Google's APIs faked on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid

import pytest

TOKEN = "hf_EndToEndSecretToken42"


@pytest.fixture
def bucket() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"  # the emulator outlives each test


@pytest.fixture
def project_env(google, gcs_emulator, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("GEMMACTL_BUCKET", bucket)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    return token_file


def _as_gcs_reports_it(emulator: str, bucket: str) -> None:
    """The emulator ignores the requested location and UBLA (gcp-api.md §5.1); the adapter test asserts they
    are sent. Make the bucket look the way Cloud Storage would then report it."""
    body = {"location": "EUROPE-WEST4", "iamConfiguration": {
        "uniformBucketLevelAccess": {"enabled": True}, "publicAccessPrevention": "enforced"}}
    request = urllib.request.Request(f"{emulator}/storage/v1/b/{bucket}", data=json.dumps(body).encode(),
                                     method="PATCH", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()


def test_init_twice_against_google_apis(cli, google, gcs_emulator, bucket, project_env):
    first = cli("init", "--hf-token-file", project_env, "--json")
    mutations = [(r.method, r.path) for r in google.mutations()]
    assert ("POST", "/v1/projects/test-project/serviceAccounts") in mutations
    assert ("POST", "/v1/projects/test-project/secrets/HF_TOKEN:addVersion") in mutations
    assert any(path.endswith("services:batchEnable") for _, path in mutations)
    (add,) = google.find("POST", ":addVersion$")
    assert add.body["payload"]["data"] == base64.b64encode(TOKEN.encode()).decode()
    assert TOKEN not in first.output

    _as_gcs_reports_it(gcs_emulator, bucket)
    google.requests.clear()
    second = cli("init", "--hf-token-file", project_env, "--json")

    assert google.mutations() == []
    assert {step["state"] for step in json.loads(second.stdout)["steps"]} == {"exists"}
    assert TOKEN not in second.output


def test_train_and_status_against_cloud_run(cli, google, gcs_emulator, bucket, project_env):
    cli("init", "--hf-token-file", project_env, "--json")
    _as_gcs_reports_it(gcs_emulator, bucket)
    image = "europe-west4-docker.pkg.dev/test-project/gemma-finetuning/gemma-finetune:latest"
    google.requests.clear()

    cli("train", "--size", "100", "--image", image, "--run-id", "r-e2e", "--json")

    (patch,) = google.find("PATCH", "/jobs/")
    assert patch.query == {"allowMissing": "true"} and patch.body["launchStage"] == 3
    container = patch.body["template"]["template"]["containers"][0]
    assert {"name": "HF_TOKEN", "valueSource": {"secretKeyRef": {"secret": "HF_TOKEN", "version": "latest"}}} \
        in container["env"]
    (run,) = google.find("POST", ":run$")
    override = run.body["overrides"]["containerOverrides"][0]
    assert {"name": "RUN_ID", "value": "r-e2e"} in override["env"]
    assert all(TOKEN not in r.raw.decode() for r in google.requests)

    status = json.loads(cli("status", "--json").stdout)
    assert "r-e2e" in json.dumps(status)
