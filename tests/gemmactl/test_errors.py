"""Bad input and missing credentials: one line + hint on stderr, the right exit code, nothing created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gemmactl import cloud as cloud_seam
from gemmactl.cli._errors import format_error
from gemmactl.errors import CredentialsError, GemmactlError, NotFoundError, UsageError


def _assert_one_error(result, *, code: int, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.output
    assert lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), result.stderr  # one line + one hint
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--project", "Bad_Project!", "init"], "invalid project 'Bad_Project!' (from flag)"),
        (["--project", "ab", "init"], "invalid project 'ab'"),
        (["--project", "my-project", "--region", "europe_west4", "init"], "invalid region 'europe_west4'"),
        (["--project", "my-project", "init", "--bucket", "Has_Capitals"], "invalid bucket 'Has_Capitals'"),
        (["--project", "my-project", "init", "--bucket", "x"], "invalid bucket 'x'"),
        (["--project", "my-project", "doctor", "--gpu-type", "nvidia-h100"], "unknown GPU type 'nvidia-h100'"),
    ],
)
def test_bad_values_fail_before_any_api_call(cli, fake_cloud, args, says):
    result = cli(*args, expect=None)

    _assert_one_error(result, code=2, says=says)
    assert fake_cloud.calls == []


def test_bad_value_from_the_environment_names_its_source(cli, fake_cloud):
    result = cli("init", expect=None, env={"GEMMACTL_GPU_TYPE": "tpu-v5", "GOOGLE_CLOUD_PROJECT": "my-project"})

    _assert_one_error(result, code=2, says="unknown GPU type 'tpu-v5' (from env)")
    assert "nvidia-rtx-pro-6000" in result.stderr  # the hint lists the valid ones
    assert fake_cloud.calls == []


def test_bad_value_in_gemmactl_toml(cli, fake_cloud):
    with open("gemmactl.toml", "w") as f:
        f.write('region = "mars-north1x"\n')

    result = cli("--project", "my-project", "init", expect=None)

    _assert_one_error(result, code=2, says="(from gemmactl.toml)")
    assert fake_cloud.calls == []


def test_unknown_key_in_gemmactl_toml(cli, fake_cloud):
    with open("gemmactl.toml", "w") as f:
        f.write('regoin = "europe-west4"\n')

    result = cli("--project", "my-project", "init", expect=None)

    _assert_one_error(result, code=2, says="gemmactl.toml: regoin")
    assert "and a [train] table" in result.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read the Hugging Face token file"),
        (b"\xff\xfe\x00binary", "cannot read the Hugging Face token file"),
        (b"  \n", "is empty"),
        (b"hf_one\nhf_two\n", "contains spaces or several lines"),
    ],
)
def test_unusable_token_files(cli, fake_cloud, tmp_path, content, says):
    path = tmp_path / "token"
    if content is not None:
        path.write_bytes(content)

    result = cli("--project", "my-project", "init", "--hf-token-file", path, expect=None)

    _assert_one_error(result, code=2, says=says)
    assert fake_cloud.calls == [] and fake_cloud.mutations == []
    assert "hf_one" not in result.output


def test_missing_credentials(cli):
    def no_credentials(settings):
        raise CredentialsError("Your default credentials were not found")

    with cloud_seam.use_cloud(no_credentials):
        result = cli("init", expect=None)

    _assert_one_error(result, code=1, says="credentials were not found")
    assert "gcloud auth application-default login" in result.stderr


def test_domain_errors_exit_1_with_the_hint(cli, fake_cloud, tmp_path):
    fake_cloud.fail_next("services.enabled", NotFoundError("project my-project not found",
                                                           hint="check --project"))
    result = cli("--project", "my-project", "init", "--dry-run", expect=None)

    _assert_one_error(result, code=1, says="project my-project not found")
    assert "check --project" in result.stderr


def test_unexpected_errors_are_one_line_too(cli, fake_cloud):
    fake_cloud.fail_next("services.enabled", KeyError("boom"))

    result = cli("--project", "my-project", "init", "--dry-run", expect=None)

    _assert_one_error(result, code=1, says="unexpected KeyError")
    assert "GEMMACTL_DEBUG=1" in result.stderr


def test_debug_shows_the_traceback(cli, fake_cloud, monkeypatch):
    monkeypatch.setenv("GEMMACTL_DEBUG", "1")
    fake_cloud.fail_next("services.enabled", NotFoundError("project my-project not found"))

    with pytest.raises(NotFoundError):
        cli("--project", "my-project", "init", "--dry-run", expect=None)


def test_click_usage_errors_exit_2(cli):
    result = cli("init", "--no-such-flag", expect=2)
    assert "No such option" in result.output


def test_format_error_table():
    assert format_error(UsageError("bad", hint="fix")) == ("bad", "fix", 2)
    assert format_error(GemmactlError("x"))[2] == 1
    assert format_error(KeyboardInterrupt())[2] == 130
    message, hint, code = format_error(FileNotFoundError(2, "No such file or directory", "/x"))
    assert message == "No such file or directory: /x" and code == 1


def test_help_imports_no_google_or_ml_library():
    code = "import sys; sys.argv=['gemmactl','--help']\nfrom gemmactl.cli.app import main\ntry: main()\nexcept SystemExit: pass"
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = sorted(m for m in modules if m.split(".")[0] in
                   {"google", "grpc", "torch", "transformers", "huggingface_hub", "matplotlib", "numpy", "peft"})
    assert heavy == []
    assert "Usage" in proc.stdout and "init" in proc.stdout
