"""Staging into Cloud Storage through the real gcp adapter and gcp-storage-emulator (resumable uploads)."""

# ruff: noqa: F811 - pytest fixtures imported from test_stage_fixtures are re-bound as test arguments

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest

from tests.fakes.gcs_emulator import EmulatorDidNotStart, running_emulator
from tests.gemmactl.test_stage_fixtures import TOKEN, hub, model_files, sha, sleeps  # noqa: F401

PROJECT, BUCKET = "test-project", "test-project-gemma-finetuning-europe-west4"
MANIFEST = ".gemmactl-manifest.json"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    try:
        with running_emulator() as url:
            yield url
    except EmulatorDidNotStart:
        pytest.skip("gcp-storage-emulator did not start")


@pytest.fixture
def gcs(emulator, monkeypatch, hub):
    """A fresh bucket in the emulator; the token comes from $HF_TOKEN so no Secret Manager call is made."""
    from gemmactl.cloud.gcp import make_gcp_cloud
    from gemmactl.errors import AlreadyExistsError
    from gemmactl.settings import Settings

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("google.auth.default", lambda *a, **k: pytest.fail("ADC must not be used"))
    cloud = make_gcp_cloud(Settings(project=PROJECT, region="europe-west4"))
    with contextlib.suppress(AlreadyExistsError):  # the emulator lives for the whole module
        cloud.storage.create_bucket(BUCKET, location="europe-west4", labels={})
    return cloud


def objects(cloud, prefix: str) -> dict[str, bytes]:
    return {o.name.removeprefix(prefix): cloud.storage.read_bytes(BUCKET, o.name) for o in cloud.storage.list(BUCKET, prefix)}


def test_stage_into_gcs_streams_verifies_and_skips_on_rerun(cli, hub, gcs, sleeps):
    files = model_files()
    hub.add_repo("acme/gcs-vlm", files)
    hub.fail_next("reset", path="model-00002")

    first = json.loads(cli("--project", PROJECT, "stage-model", "acme/gcs-vlm", "--json").stdout)
    second = json.loads(cli("--project", PROJECT, "stage-model", "acme/gcs-vlm", "--json").stdout)

    staged = objects(gcs, "acme/gcs-vlm/")
    manifest = json.loads(staged.pop(MANIFEST))
    assert staged == files
    assert manifest["files"] == {p: {"size": len(d), "sha256": sha(d)} for p, d in files.items()}
    assert first["location"] == "gs://" + BUCKET + "/acme/gcs-vlm/" and first["copied_files"] == len(files)
    assert second["copied_files"] == 0 and second["skipped_files"] == len(files)
    info = gcs.storage.stat(BUCKET, "acme/gcs-vlm/model-00001-of-00003.safetensors")
    assert info.metadata["gemmactl-sha256"] == sha(files["model-00001-of-00003.safetensors"])


def test_corrupted_file_leaves_no_object_in_gcs_and_resume_copies_only_it(cli, hub, gcs, sleeps):
    files = model_files()
    hub.add_repo("acme/gcs-bad", files)
    bad = "model-00001-of-00003.safetensors"
    hub.corrupt.add(bad)

    res = cli("--project", PROJECT, "stage-model", "acme/gcs-bad", expect=1)

    assert "sha256 mismatch" in res.stderr and TOKEN not in res.output
    staged = objects(gcs, "acme/gcs-bad/")
    assert bad not in staged and MANIFEST not in staged and len(staged) == len(files) - 1
    hub.corrupt.clear()
    hub.requests.clear()

    res = json.loads(cli("--project", PROJECT, "stage-model", "acme/gcs-bad", "--json").stdout)

    assert res["copied_files"] == 1
    assert [r["path"].rsplit("/", 1)[-1] for r in hub.downloads()] == [bad]
    assert objects(gcs, "acme/gcs-bad/")[bad] == files[bad]

