"""`gemmactl config show`: every value and where it came from."""

from __future__ import annotations

import json


def _shown(cli, *args, env=None) -> dict[str, dict[str, str]]:
    result = cli(*args, "config", "show", "--json", env=env)
    return {row["setting"]: row for row in json.loads(result.stdout)}


def test_defaults_with_their_source(cli):
    rows = _shown(cli)
    assert rows["region"] == {"setting": "region", "value": "europe-west4", "source": "default"}
    assert rows["project"]["value"] == "-"


def test_every_layer_is_named(cli):
    with open("gemmactl.toml", "w") as f:
        f.write('repository = "toml-repo"\n')

    rows = _shown(cli, "--project", "flag-project", env={"GEMMACTL_JOB": "env-job"})

    assert (rows["repository"]["value"], rows["repository"]["source"]) == ("toml-repo", "gemmactl.toml")
    assert (rows["job"]["value"], rows["job"]["source"]) == ("env-job", "env")
    assert (rows["project"]["value"], rows["project"]["source"]) == ("flag-project", "flag")
    assert rows["bucket"] == {"setting": "bucket", "value": "flag-project-gemma-finetuning-europe-west4",
                              "source": "derived"}


def test_explicit_config_file_and_local_flags(cli, tmp_path):
    path = tmp_path / "staging.toml"
    path.write_text('region = "us-central1"\n')

    rows = _shown(cli, "--config", path, "--local", "--local-dir", tmp_path / "st")

    assert rows["region"]["value"] == "us-central1"
    assert (rows["backend"]["value"], rows["backend"]["source"]) == ("local", "flag")
    assert rows["local_dir"]["value"] == str(tmp_path / "st")


def test_human_table_and_project_hint(cli):
    result = cli("config", "show")
    assert "setting" in result.stdout and "source" in result.stdout and "europe-west4" in result.stdout
    assert "no project set" in result.stderr


def test_bad_value_is_reported_not_shown(cli):
    result = cli("config", "show", expect=2, env={"GEMMACTL_REGION": "Europe-West4"})
    assert "invalid region 'Europe-West4' (from env)" in result.stderr


def test_config_show_makes_no_cloud_call(cli, fake_cloud):
    cli("--project", "my-project", "config", "show")
    assert fake_cloud.calls == []
