"""The embedded local backend: ports over a directory, and init/doctor on `--local` end to end."""

from __future__ import annotations

import base64
import hashlib
import json
import stat

import pytest

from gemmactl.cloud.local import make_local_cloud
from gemmactl.cloud.ports import SecretText
from gemmactl.errors import AlreadyExistsError, CloudError, NotFoundError
from gemmactl.settings import load_settings

TOKEN = "hf_LocalToken1234567890"
BUCKET = "local-gemma-finetuning-europe-west4"


@pytest.fixture
def local(tmp_path):
    return make_local_cloud(load_settings({"backend": "local", "local_dir": str(tmp_path / "state")}))


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------ ports


def test_a_bucket_is_a_directory(local, tmp_path):
    info = local.storage.create_bucket("b", location="europe-west4", labels={})

    assert info.location == "EUROPE-WEST4"
    assert local.storage.local_path("b") == str(tmp_path / "state" / "buckets" / "b")
    assert local.storage.get_bucket("b").location == "EUROPE-WEST4"
    with pytest.raises(AlreadyExistsError):
        local.storage.create_bucket("b", location="europe-west4", labels={})
    with pytest.raises(NotFoundError):
        local.storage.get_bucket("missing")


def test_objects_write_read_list_stat_delete(local):
    local.storage.create_bucket("b", location="europe-west4", labels={})
    local.storage.write_bytes("b", "runs/r1/events.jsonl", b"line1\nline2\n")
    local.storage.write_bytes("b", "a.txt", b"x")

    assert local.storage.read_bytes("b", "runs/r1/events.jsonl", start=6) == b"line2\n"
    assert local.storage.read_bytes("b", "a.txt", start=5) == b""
    assert [o.name for o in local.storage.list("b")] == ["a.txt", "runs/r1/events.jsonl"]
    assert [o.name for o in local.storage.list("b", prefix="runs/")] == ["runs/r1/events.jsonl"]
    info = local.storage.stat("b", "a.txt")
    assert info.size == 1 and info.md5_hash == base64.b64encode(hashlib.md5(b"x").digest()).decode()
    local.storage.delete("b", "a.txt")
    assert local.storage.stat("b", "a.txt") is None
    with pytest.raises(NotFoundError):
        local.storage.read_bytes("b", "a.txt")


def test_open_writer_is_all_or_nothing(local, tmp_path):
    local.storage.create_bucket("b", location="europe-west4", labels={})
    with local.storage.open_writer("b", "model/weights.bin", metadata={"sha256": "abc"}) as w:
        w.write(b"part1")
        w.write(b"part2")
    assert local.storage.read_bytes("b", "model/weights.bin") == b"part1part2"
    assert local.storage.stat("b", "model/weights.bin").metadata == {"sha256": "abc"}

    with pytest.raises(RuntimeError), local.storage.open_writer("b", "model/other.bin") as w:
        w.write(b"half")
        raise RuntimeError("connection dropped")

    bucket_dir = tmp_path / "state" / "buckets" / "b" / "model"
    assert sorted(p.name for p in bucket_dir.iterdir()) == ["weights.bin"]  # no partial, no temp file


def test_object_names_cannot_escape_the_bucket(local):
    local.storage.create_bucket("b", location="europe-west4", labels={})
    for name in ("../outside", "/etc/passwd", "a/../../b"):
        with pytest.raises(CloudError):
            local.storage.write_bytes("b", name, b"x")


def test_secrets_are_private_files_with_versions(local, tmp_path):
    local.secrets.create_secret("HF_TOKEN", labels={})
    assert local.secrets.latest_value("HF_TOKEN") is None
    local.secrets.add_version("HF_TOKEN", SecretText(f"{TOKEN}\n"))
    local.secrets.add_version("HF_TOKEN", SecretText("hf_second"))

    path = tmp_path / "state" / "secrets" / "HF_TOKEN"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert path.read_text() == "hf_second"
    assert local.secrets.get_secret("HF_TOKEN").version_count == 2
    assert local.secrets.latest_value("HF_TOKEN") == SecretText("hf_second")
    with pytest.raises(AlreadyExistsError):
        local.secrets.create_secret("HF_TOKEN", labels={})


def test_policies_use_etags(local):
    local.secrets.create_secret("S", labels={})
    policy = local.secrets.get_policy("S")
    local.secrets.set_policy("S", policy.with_member("roles/secretmanager.secretAccessor", "serviceAccount:a"))

    with pytest.raises(CloudError, match="etag"):
        local.secrets.set_policy("S", policy.with_member("roles/x", "user:b"))  # stale etag
    assert local.secrets.get_policy("S").has("roles/secretmanager.secretAccessor", "serviceAccount:a")


def test_accounts_repositories_and_services(local):
    local.iam.create_service_account("runner-sa", display_name="r", description="d")
    assert local.iam.get_service_account("runner-sa@local.iam.gserviceaccount.com").account_id == "runner-sa"
    with pytest.raises(AlreadyExistsError):
        local.iam.create_service_account("runner-sa", display_name="r", description="d")
    local.registry.create_repository("europe-west4", "repo", description="")
    assert local.registry.get_repository("europe-west4", "repo").name == "repo"
    assert not local.registry.image_exists("img:1")
    assert all(local.services.enabled(["run.googleapis.com"]).values())
    assert local.services.get_project().project_id == "local"


def test_making_the_backend_creates_nothing(tmp_path):
    cloud = make_local_cloud(load_settings({"backend": "local", "local_dir": str(tmp_path / "state")}))
    cloud.services.enabled(["run.googleapis.com"])
    assert not (tmp_path / "state").exists()


# ------------------------------------------------------------------------------------------ CLI


def _cli_local(cli, tmp_path, *args, expect=0, env=None):
    return cli("--local", "--local-dir", tmp_path / "state", *args, expect=expect, env=env)


def test_local_init_creates_the_bucket_dir_and_a_private_secret(cli, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    result = _cli_local(cli, tmp_path, "init", "--hf-token-file", token_file, "--json")

    steps = {s["resource"]: s["state"] for s in json.loads(result.stdout)["steps"]}
    assert steps == {"APIs": "n/a (local)", "service account": "n/a (local)", "bucket": "create",
                     "repository": "n/a (local)", "secret": "create", "secret version": "create",
                     "IAM bindings": "n/a (local)"}
    assert (tmp_path / "state" / "buckets" / BUCKET).is_dir()
    secret = tmp_path / "state" / "secrets" / "HF_TOKEN"
    assert _mode(secret) == 0o600 and secret.read_text() == TOKEN
    assert TOKEN not in result.output

    again = _cli_local(cli, tmp_path, "init", "--hf-token-file", token_file, "--json")
    assert {s["state"] for s in json.loads(again.stdout)["steps"]} <= {"exists", "n/a (local)"}


def test_local_init_dry_run_leaves_no_trace(cli, tmp_path):
    _cli_local(cli, tmp_path, "init", "--dry-run")
    assert not (tmp_path / "state").exists()


def test_local_init_without_a_token_skips_the_secret_value(cli, tmp_path):
    result = _cli_local(cli, tmp_path, "init", "--json")

    steps = {s["resource"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["secret version"]["state"] == "skipped"
    assert "builtin" in steps["secret version"]["detail"]


def test_local_doctor_after_init(cli, tmp_path, fake_hub_min):
    fake_hub_min.add_user(TOKEN, "bob")
    fake_hub_min.add_model("google/gemma-3-4b-it", gated=True, granted_to=("bob",))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    _cli_local(cli, tmp_path, "init", "--hf-token-file", token_file)

    result = _cli_local(cli, tmp_path, "doctor", "--json")

    rows = {r["check"]: r["status"] for r in json.loads(result.stdout)}
    assert rows == {"bucket": "ok", "secret": "ok", "Hugging Face token": "ok", "model access": "ok"}


def test_local_doctor_before_init_points_at_local_init(cli, tmp_path):
    result = _cli_local(cli, tmp_path, "doctor", "--json", expect=1)

    rows = {r["check"]: r for r in json.loads(result.stdout)}
    assert rows["bucket"]["status"] == "fail"
    assert rows["bucket"]["fix"] == "gemmactl --local init"


def test_local_doctor_with_a_builtin_model_needs_no_token(cli, tmp_path):
    _cli_local(cli, tmp_path, "init")
    result = _cli_local(cli, tmp_path, "doctor", "--json", env={"GEMMACTL_MODEL": "builtin:tiny-gemma3"})

    rows = {r["check"]: r["status"] for r in json.loads(result.stdout)}
    assert rows == {"bucket": "ok", "secret": "warn", "Hugging Face token": "warn", "model access": "ok"}
