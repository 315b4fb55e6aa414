"""User stories for `gemmactl init` against the in-memory fake cloud."""

from __future__ import annotations

import json

import pytest

from gemmactl import setup
from gemmactl.cloud.ports import Binding, BucketInfo, Policy, SecretText
from gemmactl.errors import TransientError

TOKEN = "hf_TestToken1234567890"
SA = "finetune-gemma-job-sa@test-project.iam.gserviceaccount.com"
BUCKET = "test-project-gemma-finetuning-europe-west4"


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "hf_token"
    path.write_text(f"  {TOKEN}\n")  # stray whitespace, as files from editors have
    return path


def _init(cli, token_file, *args, expect=0):
    return cli("--project", "test-project", "init", "--hf-token-file", token_file, "--json", *args, expect=expect)


def _states(result) -> dict[str, str]:
    return {f"{s['resource']}:{s['name']}": s["state"] for s in json.loads(result.stdout)["steps"]}


def test_first_init_creates_everything_in_order(cli, fake_cloud, token_file, no_sleep):
    result = _init(cli, token_file)

    assert set(_states(result).values()) == {"create"}
    assert fake_cloud.mutations == [
        "services.enable", "iam.create_service_account", "storage.create_bucket",
        "registry.create_repository", "secrets.create_secret", "secrets.add_version",
        "storage.set_bucket_policy", "secrets.set_policy", "iam.set_project_policy",
    ]
    assert fake_cloud.enabled_services == set(setup.REQUIRED_APIS)
    assert fake_cloud.buckets[BUCKET].info.location == "EUROPE-WEST4"
    assert ("europe-west4", "gemma-finetuning") in fake_cloud.repositories
    assert fake_cloud.secret_store["HF_TOKEN"].versions == [SecretText(TOKEN)]
    member = f"serviceAccount:{SA}"
    assert fake_cloud.buckets[BUCKET].policy.has("roles/storage.objectAdmin", member)
    assert fake_cloud.secret_store["HF_TOKEN"].policy.has("roles/secretmanager.secretAccessor", member)
    assert fake_cloud.project_policy.has("roles/logging.logWriter", member)


def test_second_init_finds_everything_and_changes_nothing(cli, fake_cloud, token_file, no_sleep):
    _init(cli, token_file)
    fake_cloud.mutations.clear()

    result = _init(cli, token_file)

    assert set(_states(result).values()) == {"exists"}
    assert fake_cloud.mutations == []


def test_dry_run_shows_the_plan_and_changes_nothing(cli, fake_cloud, token_file):
    result = cli("--project", "test-project", "init", "--hf-token-file", token_file, "--dry-run")

    assert fake_cloud.mutations == []
    assert "create" in result.stdout and BUCKET in result.stdout
    assert "nothing was changed" in result.stderr


def test_failure_mid_way_leaves_a_state_a_rerun_completes(cli, fake_cloud, token_file, no_sleep):
    fake_cloud.fail_next("registry.create_repository", TransientError("Artifact Registry answered 503"))

    failed = _init(cli, token_file, expect=1)

    assert "error: Artifact Registry answered 503" in failed.stderr
    assert "Traceback" not in failed.output
    assert "storage.create_bucket" in fake_cloud.mutations  # the steps before it happened
    assert "secrets.create_secret" not in fake_cloud.mutations  # the ones after it did not

    states = _states(_init(cli, token_file))
    assert states["bucket:" + BUCKET] == "exists"
    assert states["repository:europe-west4/gemma-finetuning"] == "create"
    fake_cloud.mutations.clear()
    _init(cli, token_file)
    assert fake_cloud.mutations == []


def test_create_that_conflicts_is_taken_as_exists(cli, fake_cloud, token_file, no_sleep):
    # Another init (or a console click) created the repository between our read and our create.
    fake_cloud.enable_all()
    plan = setup.build_plan(_settings(), setup.observe(fake_cloud.for_settings(None), _settings()), None)
    fake_cloud.repositories[("europe-west4", "gemma-finetuning")] = object()

    done = setup.apply_plan(plan, fake_cloud.for_settings(None), _settings(), SecretText(TOKEN))

    assert {s.name: s.state for s in done}["europe-west4/gemma-finetuning"] == "exists"


def test_waits_through_the_service_disabled_window(cli, fake_cloud, token_file, no_sleep):
    fake_cloud.services_disabled_for_calls = 3  # a freshly enabled API still answers SERVICE_DISABLED

    _init(cli, token_file)

    assert len(no_sleep) == 3 and no_sleep == sorted(no_sleep)  # backoff grows
    assert fake_cloud.project_policy.has("roles/logging.logWriter", f"serviceAccount:{SA}")


def test_retries_bindings_while_a_new_service_account_propagates(cli, fake_cloud, token_file, no_sleep):
    fake_cloud.sa_propagation_calls = 2

    _init(cli, token_file)

    assert len(no_sleep) == 2
    assert fake_cloud.buckets[BUCKET].policy.has("roles/storage.objectAdmin", f"serviceAccount:{SA}")


def test_existing_bindings_are_kept(cli, fake_cloud, token_file, no_sleep):
    other = Binding("roles/owner", frozenset({"user:alice@example.com"}))
    fake_cloud.project_policy = Policy(bindings=(other,), etag="p7")

    _init(cli, token_file)

    assert fake_cloud.project_policy.has("roles/owner", "user:alice@example.com")
    assert fake_cloud.project_policy.has("roles/logging.logWriter", f"serviceAccount:{SA}")


def test_bucket_in_another_region_is_never_used(cli, fake_cloud, token_file):
    fake_cloud.enable_all()
    fake_cloud.buckets[BUCKET] = _bucket("EUROPE-WEST1", fake_cloud)

    result = _init(cli, token_file, expect=1)

    assert "is in EUROPE-WEST1, but the job runs in europe-west4" in result.stderr
    assert "--region europe-west1" in result.stderr
    assert fake_cloud.mutations == []


def test_bucket_name_owned_by_someone_else_is_a_clear_error(cli, fake_cloud, token_file):
    fake_cloud.enable_all()
    fake_cloud.foreign_buckets.add(BUCKET)

    result = _init(cli, token_file, expect=1)

    assert "belongs to another project" in result.stderr and "--bucket" in result.stderr
    assert fake_cloud.mutations == []


def test_a_changed_token_adds_a_version_an_unchanged_one_does_not(cli, fake_cloud, token_file, tmp_path,
                                                                  no_sleep):
    _init(cli, token_file)
    new = tmp_path / "new_token"
    new.write_text("hf_NewToken0987654321")
    fake_cloud.mutations.clear()

    states = _states(cli("--project", "test-project", "init", "--hf-token-file", new, "--json"))

    assert states["secret version:HF_TOKEN"] == "update"
    assert fake_cloud.mutations == ["secrets.add_version"]
    assert len(fake_cloud.secret_store["HF_TOKEN"].versions) == 2  # the old version is kept
    fake_cloud.mutations.clear()
    cli("--project", "test-project", "init", "--json")  # no token given: the stored one stands
    assert fake_cloud.mutations == []


def test_token_from_the_environment(cli, fake_cloud, no_sleep, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", f"{TOKEN}\n")

    cli("--project", "test-project", "init")

    assert fake_cloud.secret_store["HF_TOKEN"].versions == [SecretText(TOKEN)]


def test_no_token_and_no_terminal_fails_before_changing_anything(cli, fake_cloud):
    result = cli("--project", "test-project", "init", expect=2)

    assert "no terminal" in result.stderr and "--hf-token-file" in result.stderr
    assert fake_cloud.mutations == []


def test_the_token_never_leaks(cli, fake_cloud, token_file, no_sleep):
    results = [_init(cli, token_file), cli("--project", "test-project", "init", "--hf-token-file", token_file),
               cli("--project", "test-project", "init", "--dry-run", "--hf-token-file", token_file)]

    for result in results:
        assert TOKEN not in result.output
    assert fake_cloud.secret_value_leaks(TOKEN) == []


def test_human_output_is_a_plan_table(cli, fake_cloud, token_file, no_sleep):
    result = cli("--project", "test-project", "init", "--hf-token-file", token_file)

    for word in ("resource", "state", "service account", "bucket", "repository", "IAM binding"):
        assert word in result.stdout
    assert "✓ created bucket" in result.stderr and "next: gemmactl doctor" in result.stderr


def _settings():
    from gemmactl.settings import load_settings

    return load_settings({"project": "test-project"})


def _bucket(location: str, fake) -> object:
    from tests.fakes.fake_cloud import _Bucket

    return _Bucket(BucketInfo(BUCKET, location, project_number=fake.number), {}, Policy(etag="b1"))


def test_fresh_project_is_observed_without_touching_disabled_apis(fake_cloud):
    from gemmactl.errors import ServiceDisabledError

    # Every read behind a disabled API would fail; observe must not even try them.
    for name in ("services.get_project", "storage.get_bucket", "secrets.get_secret", "iam.get_service_account",
                 "registry.get_repository", "iam.get_project_policy"):
        fake_cloud.fail_next(name, ServiceDisabledError("disabled", service=name))

    snap = setup.observe(fake_cloud.for_settings(None), _settings())

    assert snap.services and not any(snap.services.values()) and snap.bucket is None


def test_prompted_token_is_stripped_and_must_not_be_empty():
    from gemmactl import tokens
    from gemmactl.errors import UsageError

    assert tokens.prompt_token(lambda prompt: f" {TOKEN} \n") == SecretText(TOKEN)
    with pytest.raises(UsageError, match="no Hugging Face token"):
        tokens.prompt_token(lambda prompt: "   ")


def test_dry_run_without_a_token_does_not_ask(cli, fake_cloud):
    result = cli("--project", "test-project", "init", "--dry-run", "--json")

    version = [s for s in json.loads(result.stdout)["steps"] if s["resource"] == "secret version"][0]
    assert version["state"] == "create" and "--hf-token-file" in version["detail"]
    assert fake_cloud.mutations == []


def test_waiting_through_the_service_disabled_window_is_reported(monkeypatch):
    """Enabling APIs can take minutes: the wait is said out loud, not silent."""
    from gemmactl import setup
    from gemmactl.errors import ServiceDisabledError

    monkeypatch.setattr(setup, "sleep", lambda seconds: None)
    calls, heard = iter([ServiceDisabledError("run API disabled", service="run.googleapis.com"), None]), []

    def action():
        error = next(calls)
        if error:
            raise error
        return "done"

    assert setup.with_retries(action, on_wait=heard.append) == "done"
    assert len(heard) == 1 and "waiting for Google" in heard[0] and "run API disabled" in heard[0]
