"""Settings: defaults < gemmactl.toml < GEMMACTL_* env < flags, each value with its source, validated early."""

from __future__ import annotations

import pytest

from gemmactl.errors import ConfigError
from gemmactl.settings import load_settings, parse_duration


def _toml(tmp_path, text: str):
    path = tmp_path / "gemmactl.toml"
    path.write_text(text)
    return path


def test_defaults_follow_the_seed_recipe():
    s = load_settings({"project": "my-project"}, env={})

    assert (s.region, s.service_account, s.repository, s.secret, s.image, s.job, s.gpu_type) == (
        "europe-west4", "finetune-gemma-job-sa", "gemma-finetuning", "HF_TOKEN", "gemma-finetune",
        "gemma-finetuning-job", "nvidia-rtx-pro-6000")
    assert s.bucket_name == "my-project-gemma-finetuning-europe-west4"
    assert s.service_account_email == "finetune-gemma-job-sa@my-project.iam.gserviceaccount.com"
    assert s.image_repo == "europe-west4-docker.pkg.dev/my-project/gemma-finetuning/gemma-finetune"
    assert s.backend == "gcp" and s.task_timeout_s == 6 * 3600


def test_each_layer_overrides_the_one_below(tmp_path):
    path = _toml(tmp_path, 'region = "us-central1"\njob = "from-toml"\nimage = "img-toml"\n')
    env = {"GEMMACTL_JOB": "from-env", "GEMMACTL_IMAGE": "img-env"}

    s = load_settings({"image": "img-flag"}, config_path=path, env=env)

    assert (s.region, s.source_of("region")) == ("us-central1", "gemmactl.toml")
    assert (s.job, s.source_of("job")) == ("from-env", "env")
    assert (s.image, s.source_of("image")) == ("img-flag", "flag")
    assert s.source_of("secret") == "default"


def test_toml_is_read_from_the_working_directory(tmp_path):
    _toml(tmp_path, 'project = "toml-project"\n[train]\nepochs = 2\n')

    s = load_settings(env={}, cwd=tmp_path)

    assert s.project == "toml-project" and s.train == {"epochs": 2} and s.source_of("train") == "gemmactl.toml"


def test_project_from_google_env_vars():
    assert load_settings(env={"GOOGLE_CLOUD_PROJECT": "gcp-proj1"}).project == "gcp-proj1"
    assert load_settings(env={"CLOUDSDK_CORE_PROJECT": "sdk-proj1"}).project == "sdk-proj1"
    assert load_settings(env={"GEMMACTL_PROJECT": "mine-proj", "GOOGLE_CLOUD_PROJECT": "x-proj1"}).project == "mine-proj"


def test_no_project_is_a_clear_error_only_when_needed():
    s = load_settings(env={})
    with pytest.raises(ConfigError, match="no Google Cloud project"):
        _ = s.bucket_name
    assert load_settings({"bucket": "explicit-bucket"}, env={}).bucket_name == "explicit-bucket"


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("project", "UPPER", "invalid project"),
        ("region", "europe west4", "invalid region"),
        ("bucket", "-starts-with-dash", "invalid bucket"),
        ("gpu_type", "nvidia-a100", "unknown GPU type"),
        ("memory", "80GB", "invalid memory"),
        ("task_timeout", "six hours", "invalid duration"),
        ("max_retries", "11", "max retries must be 0..10"),
        ("backend", "aws", "invalid backend"),
        ("vpc_egress", "everything", "invalid vpc_egress"),
        ("service_account", "sa", "invalid service account"),
    ],
)
def test_bad_values_are_rejected_with_their_source(field, value, says):
    with pytest.raises(ConfigError, match=says) as e:
        load_settings({field: value}, env={})
    assert "(from flag)" in e.value.message and e.value.hint
    assert e.value.exit_code == 2


def test_a_full_service_account_email_is_kept():
    s = load_settings({"project": "my-project", "service_account": "runner@other-proj.iam.gserviceaccount.com"},
                      env={})
    assert s.service_account_email == "runner@other-proj.iam.gserviceaccount.com"


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config_path=tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_path=_toml(tmp_path, "region = \n"), env={})


def test_local_dir_and_local_root(tmp_path):
    s = load_settings({"backend": "local", "local_dir": str(tmp_path)}, env={})
    assert s.local_root == tmp_path
    assert load_settings(env={}).local_root.name == "local"  # under the user data dir


@pytest.mark.parametrize(("text", "seconds"), [("6h", 21600), ("360m", 21600), ("90s", 90), ("3600", 3600),
                                               ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_shown_rows_include_derived_values():
    rows = {name: (value, source) for name, value, source in
            load_settings({"project": "my-project"}, env={}).shown()}
    assert rows["bucket"] == ("my-project-gemma-finetuning-europe-west4", "derived")
    assert rows["project"] == ("my-project", "flag")
    assert "sources" not in rows
