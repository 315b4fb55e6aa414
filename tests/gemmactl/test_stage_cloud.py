"""Staging against the in-memory FakeCloud: no writes on a re-run, the token from Secret Manager, Cloud Build."""

# ruff: noqa: F811 - pytest fixtures imported from test_stage_fixtures are re-bound as test arguments

from __future__ import annotations

import io
import json
import tarfile

import pytest

from gemmactl.cloud.ports import SecretText
from tests.fakes.fake_jobs import BuildOutcome
from tests.gemmactl.test_stage_fixtures import TOKEN, hub, model_files, sleeps  # noqa: F401

BUCKET = "test-project-gemma-finetuning-europe-west4"


@pytest.fixture
def cloud(fake_cloud, monkeypatch):
    monkeypatch.setattr("gemmactl.builds.SLEEP", lambda s: None)  # Cloud Build polling, not slept
    fake_cloud.storage.create_bucket(BUCKET, location="europe-west4", labels={})
    fake_cloud.secrets.create_secret("HF_TOKEN", labels={})
    fake_cloud.secrets.add_version("HF_TOKEN", SecretText(TOKEN))
    fake_cloud.mutations.clear()
    return fake_cloud


def test_token_comes_from_secret_manager_and_a_rerun_makes_no_writes(cli, hub, cloud):
    hub.add_repo("acme/private", model_files())
    hub.tokens.add(TOKEN)

    cli("stage-model", "acme/private")
    writes = list(cloud.mutations)
    cloud.mutations.clear()
    res = cli("stage-model", "acme/private", "--json")

    assert writes.count("storage.open_writer") == len(model_files()) and writes[-1] == "storage.write_bytes"
    assert cloud.mutations == []
    assert json.loads(res.stdout)["skipped_files"] == len(model_files())
    assert {r["authorization"] for r in hub.requests} == {f"Bearer {TOKEN}"}
    assert cloud.secret_value_leaks(TOKEN) == []


def test_dry_run_makes_no_writes_and_no_downloads(cli, hub, cloud):
    hub.add_repo("acme/tiny", model_files())

    res = cli("stage-model", "acme/tiny", "--dry-run", "--json")

    assert json.loads(res.stdout)["copy_files"] == len(model_files())
    assert cloud.mutations == [] and hub.downloads() == []


def test_via_cloud_build_passes_the_token_only_through_secret_manager(cli, hub, cloud):
    repo = hub.add_repo("acme/big", model_files())
    cloud.builds.script(BuildOutcome(log=b"Step #0: staged acme/big\n"))

    res = cli("stage-model", "acme/big", "--via", "cloud-build")

    (spec,) = cloud.builds.submitted
    (step,) = spec.steps
    assert spec.available_secrets == {"HF_TOKEN": "projects/test-project/secrets/HF_TOKEN/versions/latest"}
    assert step.secret_env == ("HF_TOKEN",)
    assert "gemmactl stage-model acme/big --revision " + repo.sha + " --via local" in step.args[-1]
    assert f"GEMMACTL_BUCKET={BUCKET}" in step.env
    assert TOKEN not in repr(spec) and TOKEN not in res.output
    assert "$" not in step.args[-1]  # Cloud Build would read $X as a substitution
    assert "Step #0: staged acme/big" in res.stderr
    assert cloud.secret_value_leaks(TOKEN) == []
    source = cloud.storage.read_bytes(spec.source_bucket, spec.source_object)
    with tarfile.open(fileobj=io.BytesIO(source)) as tar:
        names = tar.getnames()
    assert "pyproject.toml" in names and "gemmactl/staging/copy.py" in names


def test_cloud_build_failure_is_reported_with_the_builds_error(cli, hub, cloud):
    hub.add_repo("acme/big", model_files())
    cloud.builds.script(BuildOutcome(status="FAILURE", failure_detail="Build step 0 exited with 1", log=b"boom\n"))

    res = cli("stage-model", "acme/big", "--via", "cloud-build", expect=1)

    assert "ended FAILURE: Build step 0 exited with 1" in res.stderr
    assert "full log:" in res.stderr


def test_cloud_build_refuses_a_token_file(cli, hub, cloud, tmp_path):
    (tmp_path / "t").write_text(TOKEN)

    res = cli("stage-model", "acme/big", "--via", "cloud-build", "--hf-token-file", tmp_path / "t", expect=2)

    assert "Secret Manager" in res.stderr and TOKEN not in res.output
