"""`gemmactl status`: the executions table and its JSON, against the fake cloud."""

from __future__ import annotations

import json

from gemmactl import specs
from gemmactl.cloud import ports
from gemmactl.settings import Settings
from tests.fakes.fake_jobs import Outcome


def _job_with_runs(fake, *outcomes):
    """The job plus one execution per outcome, each run to its end (oldest first)."""
    spec = specs.build_job_spec(Settings(project="test-project"), "img:1")
    fake.jobs.apply(spec)
    names = []
    for i, outcome in enumerate(outcomes):
        fake.jobs.script(outcome)
        ex = fake.jobs.run(spec.region, spec.name, ports.RunOverrides(env={"RUN_ID": f"run-{i}"}))
        if outcome.state != ports.RUNNING:
            fake.jobs.advance(ex.name, to=outcome.state)
        else:
            fake.jobs.advance(ex.name)
        names.append(ex.name)
    return names


def test_status_table_shows_state_duration_retries_reason_and_run(cli, fake_cloud):
    _job_with_runs(fake_cloud, Outcome(ports.SUCCEEDED),
                   Outcome(ports.FAILED, reason="NON_ZERO_EXIT_CODE", retried=3),
                   Outcome(ports.RUNNING))
    out = cli("status").stdout
    for text in ("gemma-finetuning-job-00003", "RUNNING", "FAILED", "SUCCEEDED", "NON_ZERO_EXIT_CODE",
                 "run-0", "run-2", "1/1 ok", "1 failed", "0m01s"):
        assert text in out, text
    assert out.index("00003") < out.index("00002") < out.index("00001")  # newest first


def test_status_json_is_a_list_of_executions(cli, fake_cloud):
    _job_with_runs(fake_cloud, Outcome(ports.SUCCEEDED), Outcome(ports.FAILED, retried=2))
    rows = json.loads(cli("status", "--json").stdout)
    assert [r["state"] for r in rows] == ["FAILED", "SUCCEEDED"]
    assert rows[0]["retried"] == 2 and rows[0]["reason"] == "NON_ZERO_EXIT_CODE" and rows[0]["run_id"] == "run-1"
    assert rows[1]["duration_s"] == 1.0 and rows[1]["start_time"].startswith("2026-01-01T00:00:")


def test_status_limit(cli, fake_cloud):
    _job_with_runs(fake_cloud, *[Outcome(ports.SUCCEEDED)] * 3)
    rows = json.loads(cli("status", "--limit", "2", "--json").stdout)
    assert [r["execution"] for r in rows] == ["gemma-finetuning-job-00003", "gemma-finetuning-job-00002"]
    assert cli("status", "--limit", "0", expect=2).exit_code == 2


def test_status_before_any_train_says_what_to_do(cli, fake_cloud):
    result = cli("status")
    assert "no executions" in result.stdout and "gemmactl train" in result.stderr
    assert json.loads(cli("status", "--json").stdout) == []
    assert fake_cloud.mutations == []
