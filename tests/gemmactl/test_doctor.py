"""User stories for `gemmactl doctor`: the fake cloud for Google, a minimal fake Hub for Hugging Face."""

from __future__ import annotations

import json

import pytest

from gemmactl import cloud as cloud_seam
from gemmactl.errors import CredentialsError

TOKEN = "hf_DoctorToken1234567890"
MODEL = "google/gemma-3-4b-it"


@pytest.fixture
def hub(fake_hub_min):
    fake_hub_min.add_user(TOKEN, "alice")
    fake_hub_min.add_model(MODEL, gated=True, granted_to=("alice",))
    return fake_hub_min


@pytest.fixture
def set_up(cli, fake_cloud, tmp_path, no_sleep):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cli("--project", "test-project", "init", "--hf-token-file", token_file)
    return fake_cloud


def _doctor(cli, *args, expect=0):
    result = cli("--project", "test-project", "doctor", "--json", *args, expect=expect)
    return {row["check"]: row for row in json.loads(result.stdout)}, result


def test_a_set_up_project_passes_every_check(cli, set_up, hub):
    rows, _ = _doctor(cli)

    assert {name: row["status"] for name, row in rows.items()} == {
        "credentials and project": "ok", "APIs enabled": "ok", "service account": "ok",
        "service account roles": "ok", "bucket": "ok", "GPU in region": "ok", "secret": "ok",
        "Hugging Face token": "ok", "model access": "ok",
    }
    assert "alice" in rows["Hugging Face token"]["detail"]


def test_doctor_makes_no_changes(cli, set_up, hub):
    set_up.mutations.clear()
    _doctor(cli)
    assert set_up.mutations == []


def test_a_fresh_project_fails_with_a_fix_per_row(cli, fake_cloud, hub):
    rows, _ = _doctor(cli, expect=1)

    for name in ("APIs enabled", "service account", "bucket", "secret"):
        assert rows[name]["status"] == "fail", name
        assert "gemmactl init" in rows[name]["fix"]
    assert "gcloud services enable run.googleapis.com" in rows["APIs enabled"]["fix"]
    assert rows["Hugging Face token"]["status"] == "fail"


def test_gated_model_without_access_says_where_to_accept_the_licence(cli, set_up, hub):
    hub.add_model("google/gemma-3-27b-it", gated=True)

    rows, result = _doctor(cli, "--model", "google/gemma-3-27b-it", expect=1)

    assert rows["model access"]["status"] == "fail"
    assert "accept the licence at https://huggingface.co/google/gemma-3-27b-it" in rows["model access"]["fix"]


def test_unknown_model_fails(cli, set_up, hub):
    rows, _ = _doctor(cli, "--model", "google/no-such-model", expect=1)
    assert rows["model access"]["status"] == "fail" and "not found" in rows["model access"]["detail"]


def test_revoked_token_fails_and_is_not_shown(cli, set_up, hub, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("hf_RevokedToken000")

    rows, result = _doctor(cli, "--hf-token-file", bad, expect=1)

    assert rows["Hugging Face token"]["status"] == "fail"
    assert "401" in rows["Hugging Face token"]["detail"]
    assert "hf_RevokedToken000" not in result.output


def test_the_token_goes_to_the_hub_only_as_a_header(cli, set_up, hub):
    _, result = _doctor(cli)

    assert TOKEN not in result.output
    assert hub.state.requests and all(TOKEN not in path for _, path, _ in hub.state.requests)
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.state.requests)


def test_region_without_the_gpu_is_a_warning(cli, fake_cloud, hub):
    rows, _ = _doctor(cli, expect=1)
    assert rows["GPU in region"]["status"] == "ok"

    # L4 is offered in europe-west4, but its Cloud Run driver (CUDA 12.2) is older than the image's CUDA 13.
    rows, _ = _doctor(cli, "--gpu-type", "nvidia-l4", expect=1)
    assert rows["GPU in region"]["status"] == "warn" and "CUDA 12.2" in rows["GPU in region"]["detail"]

    result = cli("--project", "test-project", "--region", "us-west1", "doctor", "--json", expect=1)
    row = {r["check"]: r for r in json.loads(result.stdout)}["GPU in region"]
    assert row["status"] == "warn" and "us-central1" in row["detail"]


def test_bucket_in_another_region_fails(cli, set_up, hub):
    result = cli("--project", "test-project", "--region", "us-central1", "doctor", "--json",
                 "--bucket", "test-project-gemma-finetuning-europe-west4", expect=1)
    row = {r["check"]: r for r in json.loads(result.stdout)}["bucket"]
    assert row["status"] == "fail" and "EUROPE-WEST4" in row["detail"]


def test_hub_unreachable_is_a_warning_not_a_failure(cli, set_up, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port

    rows, _ = _doctor(cli)

    assert rows["Hugging Face token"]["status"] == "warn"
    assert rows["model access"]["status"] == "warn"


def test_missing_credentials_is_a_failed_row(cli, hub):
    def no_credentials(settings):
        raise CredentialsError("Your default credentials were not found")

    with cloud_seam.use_cloud(no_credentials):
        rows, result = _doctor(cli, expect=1)

    assert rows["credentials and project"]["status"] == "fail"
    assert "gcloud auth application-default login" in rows["credentials and project"]["fix"]
    assert "Traceback" not in result.output


def test_human_output_is_one_table(cli, set_up, hub):
    result = cli("--project", "test-project", "doctor")
    for word in ("check", "status", "detail", "fix", "credentials and project", "model access"):
        assert word in result.stdout
