"""`gemmactl train` as a user meets it, against the in-memory fake cloud."""

from __future__ import annotations

import json

import pytest

from gemmactl.cloud import ports
from gemmactl.cloud.ports import SecretText
from tests.fakes.fake_jobs import Outcome

BUCKET = "test-project-gemma-finetuning-europe-west4"
REPO = "europe-west4-docker.pkg.dev/test-project/gemma-finetuning/gemma-finetune"
TOKEN = "hf_SECRETtoken1234567890"


@pytest.fixture
def cloud(fake_cloud, monkeypatch):
    """A project after `gemmactl init` + `gemmactl build`: bucket in the job region, image for this source."""
    fake_cloud.storage.create_bucket(BUCKET, location="europe-west4", labels={})
    fake_cloud.secrets.create_secret("HF_TOKEN", labels={})
    fake_cloud.secrets.add_version("HF_TOKEN", SecretText(TOKEN))
    fake_cloud.images.add(f"{REPO}:abc123def456")
    monkeypatch.setattr("gemmactl.cli.train._source_tag", lambda: "abc123def456")
    fake_cloud.mutations.clear()
    return fake_cloud


@pytest.fixture
def logview(monkeypatch):
    """A stand-in `gemmactl.logview`: polls the execution until it ends, as the real follower does."""

    def follow_execution(cloud, settings, name, **options):
        while True:
            ex = cloud.jobs.get_execution(settings.region, settings.job, name)
            if ex.done:
                return ex

    monkeypatch.setattr("gemmactl.logview.follow_execution", follow_execution)


def _train(cli, *args, expect=0):
    return cli("train", "--size", "100", *args, expect=expect)


def test_first_train_creates_the_job_second_only_updates_it(cli, cloud):
    first = json.loads(_train(cli, "--json", "--run-id", "one").stdout)
    second = json.loads(_train(cli, "--json", "--run-id", "two").stdout)

    assert first["job_created"] is True and second["job_created"] is False
    assert len(cloud.jobs.applied) == 2 and len(cloud.jobs.jobs) == 1
    assert [m for m in cloud.mutations if m.startswith("jobs.")] == ["jobs.apply", "jobs.run"] * 2
    assert cloud.jobs.jobs[("europe-west4", "gemma-finetuning-job")][1].generation == 2
    assert first["execution"] == "gemma-finetuning-job-00001" and second["execution"].endswith("-00002")
    assert first["output"] == f"gs://{BUCKET}/runs/one/"


def test_job_spec_carries_every_setting_of_the_recipe(cli, cloud):
    _train(cli, "--run-id", "r1")
    spec = cloud.jobs.applied[0]
    assert spec.image == f"{REPO}:abc123def456"
    assert (spec.gpu_type, spec.gpu_count, spec.gpu_zonal_redundancy_disabled) == ("nvidia-rtx-pro-6000", 1, True)
    assert (spec.cpu, spec.memory, spec.timeout_s, spec.max_retries) == ("20", "80Gi", 6 * 3600, 3)
    assert spec.service_account == "finetune-gemma-job-sa@test-project.iam.gserviceaccount.com"
    assert spec.bucket == BUCKET and spec.mount_path == "/mnt/gcs" and spec.env == {"BUCKET_NAME": BUCKET}
    assert spec.secret_env == {"HF_TOKEN": ports.SecretEnv("HF_TOKEN", "latest")}
    assert spec.launch_stage == "BETA" and spec.labels == {"managed-by": "gemmactl"}


def test_each_run_gets_its_args_env_and_config_json_first(cli, cloud):
    _train(cli, "--run-id", "r1", "--lr", "5e-5", "--epochs", "2", "--model", "builtin:tiny-gemma3")
    job, overrides = cloud.jobs.runs[0]
    args = list(overrides.args)
    assert args[:2] == ["--config", "/mnt/gcs/runs/r1/config.json"]
    assert args[args.index("--output-dir") + 1] == "/mnt/gcs/runs/r1"
    assert args[args.index("--learning-rate") + 1] == "5e-05" and "--train-size" in args
    assert args[args.index("--model-id") + 1] == "builtin:tiny-gemma3"  # not staged: passed through
    assert overrides.env == {"RUN_ID": "r1"}
    config = json.loads(cloud.storage.read_bytes(BUCKET, "runs/r1/config.json"))
    assert config["train_size"] == 100 and config["output_dir"] == "/mnt/gcs/runs/r1"
    assert cloud.mutations.index("storage.write_bytes") < cloud.mutations.index("jobs.apply")


def test_staged_model_and_dataset_are_read_from_the_mount(cli, cloud):
    cloud.storage.write_bytes(BUCKET, "google/gemma-3-4b-it/.gemmactl-manifest.json", b"{}")
    cloud.storage.write_bytes(BUCKET, "datasets/timm/oxford-iiit-pet/.gemmactl-manifest.json", b"{}")
    _train(cli, "--run-id", "r1")
    args = list(cloud.jobs.runs[0][1].args)
    assert args[args.index("--model-id") + 1] == "/mnt/gcs/google/gemma-3-4b-it"
    assert args[args.index("--dataset") + 1] == "/mnt/gcs/datasets/timm/oxford-iiit-pet"


def test_train_prints_the_execution_and_what_to_run_next(cli, cloud):
    result = _train(cli, "--run-id", "r1")
    assert "gemma-finetuning-job-00001" in result.stdout
    assert "gemmactl logs gemma-finetuning-job-00001 --follow" in result.stderr
    assert "gemmactl results r1" in result.stderr and "gemmactl status" in result.stderr


def test_follow_to_success_exits_zero(cli, cloud, logview):
    cloud.jobs.auto_advance = True
    result = _train(cli, "--follow", "--json", "--run-id", "r1")
    assert json.loads(result.stdout)["state"] == "SUCCEEDED"
    assert "execution gemma-finetuning-job-00002 succeeded" in _train(cli, "--follow").stderr


def test_follow_to_failure_exits_one_with_the_reason(cli, cloud, logview):
    cloud.jobs.auto_advance = True
    cloud.jobs.script(Outcome(ports.FAILED, reason="NON_ZERO_EXIT_CODE", message="Task exited with code 3."))
    result = _train(cli, "--follow", expect=1)
    assert "failed" in result.stderr and "NON_ZERO_EXIT_CODE" in result.stderr and "code 3" in result.stderr
    assert "Traceback" not in result.output


def test_dry_run_shows_yaml_gcloud_and_cost_and_changes_nothing(cli, cloud):
    result = _train(cli, "--dry-run", "--run-id", "r1")
    assert cloud.mutations == [] and cloud.jobs.applied == []
    assert "nvidia.com/gpu" in result.stdout and "gpuZonalRedundancyDisabled: true" in result.stdout
    assert "gcloud beta run jobs deploy gemma-finetuning-job" in result.stdout
    assert "--no-gpu-zonal-redundancy" in result.stdout and "gcloud beta run jobs execute" in result.stdout
    assert "Estimated cost" in result.stdout and "6 h timeout" in result.stdout


def test_dry_run_json_and_price_override(cli, cloud, monkeypatch):
    monkeypatch.setenv("GEMMACTL_PRICE_PER_HOUR", "10")
    plan = json.loads(_train(cli, "--dry-run", "--json", "--timeout", "2h").stdout)
    assert plan["estimate"]["usd_for_timeout"] == 20.0 and plan["estimate"]["source"] == "GEMMACTL_PRICE_PER_HOUR"
    assert plan["job"]["template"]["template"]["timeout"] == "7200s"
    assert cloud.mutations == []


def test_dry_run_without_credentials_still_shows_the_plan(cli, cloud):
    from gemmactl.errors import CredentialsError

    cloud.fail_next("storage.get_bucket", CredentialsError("no Google Cloud credentials found"))
    result = _train(cli, "--dry-run")
    assert "not checked against the bucket" in result.stderr and "gcloud beta run jobs deploy" in result.stdout
    cloud.fail_next("storage.get_bucket", CredentialsError("no Google Cloud credentials found"))
    result = _train(cli, expect=1)
    assert "gcloud auth application-default login" in result.stderr and cloud.mutations == []


def test_dry_run_works_before_init(cli, fake_cloud, monkeypatch):
    monkeypatch.setattr("gemmactl.cli.train._source_tag", lambda: None)
    result = _train(cli, "--dry-run")
    assert "gemmactl init" in result.stderr and "gemmactl build" in result.stderr
    assert fake_cloud.mutations == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "5"], "--lr must be in (0, 1)"),
        (["--quantization", "8bit"], "--quantization must be one of"),
        (["--eval-size", "many"], "--eval-size must be a number or \"all\""),
        (["--cpu", "4"], "below the nvidia-rtx-pro-6000 minimum of 20 vCPU"),
        (["--memory", "32Gi"], "minimum of 80Gi"),
        (["--gpu-type", "nvidia-h100"], "unknown GPU type"),
        (["--timeout", "200h"], "outside 1m..168h"),
        (["--vpc-egress", "all-traffic"], "--vpc-egress needs --network"),
        (["--run-id", "Bad_ID"], "invalid run id"),
        (["--set", "warmup_ratio"], "--set expects KEY=VALUE"),
        (["--set", "bogus=1"], "unknown config key"),
    ],
)
def test_bad_values_fail_before_any_call(cli, cloud, args, message):
    result = _train(cli, *args, expect=2)
    assert message in result.stderr
    assert "Traceback" not in result.output and cloud.mutations == []
    assert result.stderr.count("error:") == 1


def test_missing_bucket_points_to_init(cli, cloud):
    result = cli("--region", "us-central1", "train", "--size", "10", "--image", "img:1", expect=1)
    assert "bucket test-project-gemma-finetuning-us-central1 does not exist" in result.stderr
    assert "gemmactl init" in result.stderr and cloud.mutations == []


def test_bucket_in_another_region_is_refused_before_anything_is_created(cli, cloud):
    cloud.storage.create_bucket("wrong-region-bucket", location="us-central1", labels={})
    cloud.mutations.clear()
    result = cli("train", "--size", "10", env={"GEMMACTL_BUCKET": "wrong-region-bucket"}, expect=1)
    assert "is in US-CENTRAL1, but the job runs in europe-west4" in result.stderr
    assert cloud.mutations == [] and cloud.jobs.applied == []


def test_missing_image_falls_back_to_latest_with_a_warning_or_fails(cli, cloud, monkeypatch):
    monkeypatch.setattr("gemmactl.cli.train._source_tag", lambda: "0000newsource")
    result = _train(cli, expect=1)
    assert "no trainer image" in result.stderr and "gemmactl build" in result.stderr
    assert cloud.mutations == []
    cloud.images.add(f"{REPO}:latest")
    result = _train(cli)
    assert "using :latest" in result.stderr
    assert cloud.jobs.applied[-1].image == f"{REPO}:latest"


def test_explicit_image_is_used_as_is(cli, cloud):
    _train(cli, "--image", "europe-docker.pkg.dev/p/r/custom:v7")
    assert cloud.jobs.applied[0].image == "europe-docker.pkg.dev/p/r/custom:v7"


def test_reusing_a_run_id_resumes_only_the_same_configuration(cli, cloud):
    _train(cli, "--run-id", "r1")
    result = _train(cli, "--run-id", "r1")
    assert "resuming run r1" in result.stderr
    result = cli("train", "--size", "200", "--run-id", "r1", expect=2)
    assert "different configuration (train_size)" in result.stderr
    assert len(cloud.jobs.runs) == 2


def test_toml_train_table_and_flags_merge(cli, cloud, tmp_path, monkeypatch):
    (tmp_path / "gemmactl.toml").write_text('[train]\nlora_r = 8\nlearning_rate = 0.0002\n')
    monkeypatch.chdir(tmp_path)
    _train(cli, "--lr", "3e-4", "--run-id", "r1")
    config = json.loads(cloud.storage.read_bytes(BUCKET, "runs/r1/config.json"))
    assert config["lora_r"] == 8 and config["learning_rate"] == 3e-4


def test_apply_failure_leaves_no_execution_and_says_why(cli, cloud):
    from gemmactl.errors import CloudError

    cloud.fail_next("jobs.apply", CloudError("Revision failed: SECRETS_ACCESS_CHECK_FAILED"))
    result = _train(cli, expect=1)
    assert "SECRETS_ACCESS_CHECK_FAILED" in result.stderr and cloud.jobs.runs == []


def test_the_token_never_leaks(cli, cloud, logview):
    cloud.jobs.auto_advance = True
    outputs = [_train(cli, "--follow", "--json").output, _train(cli, "--dry-run").output,
               _train(cli, "--dry-run", "--json").output]
    assert all(TOKEN not in o for o in outputs)
    assert cloud.secret_value_leaks(TOKEN) == []
    assert TOKEN not in repr(cloud.jobs.applied) + repr(cloud.jobs.runs)


def test_ctrl_c_while_following_leaves_the_execution_running(cli, cloud, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gemmactl.logview.follow_execution", interrupted)
    result = _train(cli, "--follow", expect=130)
    assert "keeps running" in result.stderr and "gemmactl cancel gemma-finetuning-job-00001" in result.stderr
    assert cloud.jobs.executions["gemma-finetuning-job-00001"].state == ports.PENDING


def test_l4_with_the_default_cuda13_image_is_refused_before_anything_is_created(cli, fake_cloud):
    """Cloud Run's L4 driver (CUDA 12.2) cannot run the CUDA 13 image: say so instead of billing a crash."""
    res = cli("train", "--gpu-type", "nvidia-l4", "--cpu", "8", "--memory", "32Gi", expect=2)
    assert "CUDA 12.2" in res.stderr and "--image" in res.stderr
    assert "Traceback" not in res.output
    assert not fake_cloud.mutations
