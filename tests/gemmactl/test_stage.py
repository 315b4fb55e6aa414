"""User stories for `stage-model` / `stage-data` on the local backend, against a fake hub on 127.0.0.1."""

# ruff: noqa: F811 - pytest fixtures imported from test_stage_fixtures are re-bound as test arguments

from __future__ import annotations

import json

from tests.gemmactl.test_stage_fixtures import (  # noqa: F401 - fixtures are used by name
    TOKEN,
    bucket_files,
    hub,
    local,
    model_files,
    mtimes,
    sha,
    sleeps,
)

MANIFEST = ".gemmactl-manifest.json"


def test_fresh_copy_lands_every_file_verified_with_manifest_last(cli, hub, local, sleeps):
    files = model_files()
    repo = hub.add_repo("acme/tiny-vlm", files)
    args, bucket = local

    res = cli(*args, "stage-model", "acme/tiny-vlm", "--json")

    summary = json.loads(res.stdout)
    assert summary["revision"] == repo.sha
    assert summary["prefix"] == "acme/tiny-vlm/"
    assert summary["copied_files"] == len(files) and summary["skipped_files"] == 0
    assert summary["copied_bytes"] == sum(len(d) for d in files.values())
    staged = bucket_files(bucket, "acme/tiny-vlm")
    manifest = json.loads(staged.pop(MANIFEST))
    assert staged == files
    assert manifest["repo"] == "acme/tiny-vlm" and manifest["kind"] == "model"
    assert manifest["revision"] == repo.sha and manifest["staged_at"]
    assert manifest["files"] == {p: {"size": len(d), "sha256": sha(d)} for p, d in files.items()}
    # Streamed, not fetched twice: one GET per file.
    assert len(hub.downloads()) == len(files)


def test_rerun_with_same_revision_skips_everything_and_writes_nothing(cli, hub, local):
    hub.add_repo("acme/tiny-vlm", model_files())
    args, bucket = local
    cli(*args, "stage-model", "acme/tiny-vlm")
    before, downloads = mtimes(bucket.parent.parent), len(hub.downloads())

    res = cli(*args, "stage-model", "acme/tiny-vlm", "--json")

    summary = json.loads(res.stdout)
    assert summary["copied_files"] == 0 and summary["skipped_files"] == len(model_files())
    assert mtimes(bucket.parent.parent) == before
    assert len(hub.downloads()) == downloads


def test_pinned_complete_copy_needs_no_hub_at_all(cli, hub, local):
    repo = hub.add_repo("acme/tiny-vlm", model_files())
    args, _ = local
    cli(*args, "stage-model", "acme/tiny-vlm")
    hub.requests.clear()

    res = cli(*args, "stage-model", "acme/tiny-vlm", "--revision", repo.sha, "--json")

    assert json.loads(res.stdout)["copied_files"] == 0
    assert hub.requests == []


def test_interrupted_run_resumes_with_only_the_missing_files(cli, hub, local, sleeps):
    files = model_files()
    hub.add_repo("acme/tiny-vlm", files)
    args, bucket = local
    broken = "model-00002-of-00003.safetensors"
    hub.fail_next("503", path=broken, times=50)  # outlives every retry: this file fails

    res = cli(*args, "stage-model", "acme/tiny-vlm", expect=1)

    assert f"downloading {broken} failed after 8 attempts" in res.stderr
    staged = bucket_files(bucket, "acme/tiny-vlm")
    assert MANIFEST not in staged and broken not in staged
    assert len(staged) == len(files) - 1
    hub.faults.clear()
    hub.requests.clear()

    res = cli(*args, "stage-model", "acme/tiny-vlm", "--json")

    summary = json.loads(res.stdout)
    assert summary["copied_files"] == 1 and summary["skipped_files"] == len(files) - 1
    assert [r["path"].rsplit("/", 1)[-1] for r in hub.downloads()] == [broken]
    assert bucket_files(bucket, "acme/tiny-vlm").keys() == {*files, MANIFEST}


def test_connection_reset_mid_file_resumes_with_a_range_request(cli, hub, local, sleeps):
    files = model_files(n_shards=1)
    hub.add_repo("acme/tiny-vlm", files)
    args, bucket = local
    shard = "model-00001-of-00001.safetensors"
    hub.fail_next("reset", path=shard)

    cli(*args, "stage-model", "acme/tiny-vlm")

    gets = hub.downloads(shard)
    assert [g["range"] for g in gets][0] is None
    assert gets[1]["range"] == f"bytes={len(files[shard]) // 2}-"
    assert bucket_files(bucket, "acme/tiny-vlm")[shard] == files[shard]


def test_corrupted_file_fails_loudly_keeps_good_files_and_leaves_no_bad_object(cli, hub, local, sleeps):
    files = model_files()
    hub.add_repo("acme/tiny-vlm", files)
    args, bucket = local
    bad = "model-00003-of-00003.safetensors"
    hub.corrupt.add(bad)

    res = cli(*args, "stage-model", "acme/tiny-vlm", expect=1)

    assert f"{bad}: sha256 mismatch" in res.stderr
    assert "nothing was written under its name" in res.stderr
    staged = bucket_files(bucket, "acme/tiny-vlm")
    assert bad not in staged and MANIFEST not in staged
    assert {p: d for p, d in staged.items()} == {p: d for p, d in files.items() if p != bad}
    assert not [p for p in bucket.rglob("*") if p.name.startswith(".")]  # no temp files left behind


def test_corrupted_plain_git_file_is_caught_by_its_git_oid(cli, hub, local):
    hub.add_repo("acme/tiny-vlm", model_files())
    hub.corrupt.add("config.json")
    args, bucket = local

    res = cli(*args, "stage-model", "acme/tiny-vlm", expect=1)

    assert "config.json: git sha1 mismatch" in res.stderr
    assert "config.json" not in bucket_files(bucket, "acme/tiny-vlm")


def test_faults_on_ten_percent_of_requests_still_end_sha256_identical(cli, hub, local, sleeps):
    files = {f"shards/part-{i:03d}.bin": bytes([i]) * (20_000 + i) for i in range(80)}
    files["config.json"] = b"{}"
    hub.add_repo("acme/flaky", files)
    hub.fault_rate = 0.10
    args, bucket = local

    cli(*args, "stage-model", "acme/flaky", "--workers", "4")

    assert hub.faults_served > 0
    staged = bucket_files(bucket, "acme/flaky")
    manifest = json.loads(staged.pop(MANIFEST))
    assert {p: sha(d) for p, d in staged.items()} == {p: sha(d) for p, d in files.items()}
    assert {p: e["sha256"] for p, e in manifest["files"].items()} == {p: sha(d) for p, d in files.items()}


def test_429_honours_retry_after(cli, hub, local, sleeps):
    hub.add_repo("acme/tiny-vlm", model_files(n_shards=1))
    hub.retry_after = "7"
    hub.fail_next("429", path="resolve")
    args, _ = local

    cli(*args, "stage-model", "acme/tiny-vlm")

    assert 7.0 in sleeps


def test_gated_repo_says_where_to_accept_the_licence(cli, hub, local):
    hub.add_repo("google/gemma-gated", model_files(), gated=True)
    args, bucket = local
    token_file = bucket.parent.parent / "token"
    token_file.write_text(TOKEN + "\n")

    res = cli(*args, "stage-model", "google/gemma-gated", "--hf-token-file", token_file, expect=1)

    assert f"accept the licence at {hub.url}/google/gemma-gated" in res.stderr
    assert "token lacks access" in res.stderr
    assert "Traceback" not in res.output
    assert not (bucket / "google").exists()


def test_gated_repo_without_token_asks_for_one(cli, hub, local):
    hub.add_repo("google/gemma-gated", model_files(), gated=True)
    args, _ = local

    res = cli(*args, "stage-model", "google/gemma-gated", expect=1)

    assert "no Hugging Face token was given" in res.stderr and "--hf-token-file" in res.stderr


def test_missing_repo_and_revision_are_one_clear_line(cli, hub, local):
    hub.add_repo("acme/tiny-vlm", model_files())
    args, _ = local

    res = cli(*args, "stage-model", "acme/nope", expect=1)
    assert "model repo acme/nope not found" in res.stderr

    res = cli(*args, "stage-model", "acme/tiny-vlm", "--revision", "v9", expect=1)
    assert "revision 'v9' not found" in res.stderr


def test_token_is_sent_to_the_hub_and_shown_nowhere(cli, hub, local, monkeypatch):
    hub.add_repo("acme/private", model_files())
    hub.tokens.add(TOKEN)
    monkeypatch.setenv("HF_TOKEN", f"  {TOKEN}\n")
    args, bucket = local

    ok = cli(*args, "stage-model", "acme/private")
    dry = cli(*args, "stage-model", "acme/private", "--dry-run", "--json")
    monkeypatch.setenv("HF_TOKEN", TOKEN + "x")
    bad = cli(*args, "stage-model", "acme/private", "--force", expect=1)

    assert {r["authorization"] for r in hub.requests} >= {f"Bearer {TOKEN}"}
    for res in (ok, dry, bad):
        assert TOKEN not in res.output
    assert "token was rejected" in bad.stderr
    assert all(TOKEN.encode() not in p.read_bytes() for p in bucket.parent.parent.rglob("*") if p.is_file())


def test_dry_run_lists_files_and_size_and_copies_nothing(cli, hub, local):
    files = model_files()
    hub.add_repo("acme/tiny-vlm", files)
    args, bucket = local

    human = cli(*args, "stage-model", "acme/tiny-vlm", "--dry-run")
    res = cli(*args, "stage-model", "acme/tiny-vlm", "--dry-run", "--json")

    plan = json.loads(res.stdout)
    assert plan["dry_run"] and plan["copy_files"] == len(files)
    assert plan["copy_bytes"] == sum(len(d) for d in files.values())
    assert {f["path"] for f in plan["files"]} == set(files)
    assert "model-00001-of-00003.safetensors" in human.stdout and "nothing was copied" in human.stderr
    assert hub.downloads() == []
    assert list(bucket.iterdir()) == []


def test_stage_data_defaults_to_the_pets_dataset_under_datasets(cli, hub, local):
    files = {"data/train-00000-of-00001.parquet": b"P" * 5000, "data/test-00000-of-00001.parquet": b"Q" * 3000,
             "README.md": b"pets"}
    hub.add_repo("timm/oxford-iiit-pet", files, kind="dataset")
    args, bucket = local

    res = cli(*args, "stage-data", "--json")

    summary = json.loads(res.stdout)
    assert summary["prefix"] == "datasets/timm/oxford-iiit-pet/" and summary["kind"] == "dataset"
    staged = bucket_files(bucket, "datasets/timm/oxford-iiit-pet")
    staged.pop(MANIFEST)
    assert staged == files


def test_new_revision_restages_only_changed_files(cli, hub, local):
    files = model_files()
    hub.add_repo("acme/tiny-vlm", files)
    args, bucket = local
    cli(*args, "stage-model", "acme/tiny-vlm")
    files["config.json"] = b'{"model_type": "gemma3", "v": 2}'
    repo = hub.add_repo("acme/tiny-vlm", files)
    hub.requests.clear()

    res = cli(*args, "stage-model", "acme/tiny-vlm", "--json")

    assert json.loads(res.stdout)["copied_files"] == 1
    assert [r["path"] for r in hub.downloads()] == [f"/acme/tiny-vlm/resolve/{repo.sha}/config.json"]
    manifest = json.loads((bucket / "acme/tiny-vlm" / MANIFEST).read_text())
    assert manifest["revision"] == repo.sha


def test_missing_bucket_points_at_init(cli, hub, tmp_path):
    hub.add_repo("acme/tiny-vlm", model_files())

    res = cli("--local", "--local-dir", tmp_path / "empty", "stage-model", "acme/tiny-vlm", expect=1)

    assert "does not exist" in res.stderr and "gemmactl init" in res.stderr


def test_bad_repo_id_and_bad_via_are_usage_errors(cli, local):
    args, _ = local
    assert "expected ORG/NAME" in cli(*args, "stage-model", "../etc", expect=2).stderr
    assert "invalid --via" in cli(*args, "stage-model", "a/b", "--via", "ftp", expect=2).stderr
    assert "needs Google Cloud" in cli(*args, "stage-model", "a/b", "--via", "cloud-build", expect=2).stderr


def test_a_model_id_without_an_org_is_a_usage_error_before_any_request(cli, tmp_path):
    res = cli("--local", "--local-dir", str(tmp_path), "stage-model", "notarepo", expect=2)
    assert "expected ORG/NAME" in res.stderr and "google/gemma-3-4b-it" in res.stderr
    assert "Traceback" not in res.output
