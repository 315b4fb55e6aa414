"""`gemmactl logs` as a user runs it, against the fake cloud (a fake clock makes --follow instant)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gemmactl import logview
from gemmactl.cloud import ports
from tests.fakes.fake_jobs import Outcome
from tests.gemmactl.test_logview import BUCKET, SETTINGS, FakeTime, step

JOB, REGION = SETTINGS.job, SETTINGS.region


@pytest.fixture
def clock(monkeypatch) -> FakeTime:
    t = FakeTime()
    monkeypatch.setattr(logview, "_clock", t.clock)
    monkeypatch.setattr(logview, "_sleep", t.sleep)
    return t


def run_job(fake, outcome: Outcome | str = ports.SUCCEEDED, *, run_id: str = "run-1", running: bool = True):
    if BUCKET not in fake.buckets:
        fake.storage.create_bucket(BUCKET, location="EUROPE-WEST4", labels={})
    fake.jobs.apply(ports.JobSpec(name=JOB, region=REGION, image="img"))
    fake.jobs.script(outcome)
    execution = fake.jobs.run(REGION, JOB, ports.RunOverrides(env={"RUN_ID": run_id}))
    return fake.jobs.advance(execution.name, to=ports.RUNNING) if running else execution


TRAINER_OUTPUT = [
    "Loading checkpoint shards: 100%",
    {"event": "start", "time": "2026-01-01T00:00:02.000Z", "run_id": "run-1", "attempt": 0,
     "model_id": "builtin/tiny-gemma3", "dataset": "builtin/synthetic-pets", "train_size": 64, "eval_size": 16,
     "total_steps": 8, "resumed_from_step": 0},
    step(4, total=8),
    step(8, total=8),
    {"event": "eval", "time": "2026-01-01T00:00:09.000Z", "phase": "final", "mode": "constrained",
     "accuracy": 0.75, "macro_f1": 0.7, "n": 16, "unknown_rate": 0.0, "accuracy_ci95": [0.5, 0.9]},
]


def test_logs_without_any_execution_says_how_to_start_one(cli, fake_cloud):
    fake_cloud.jobs.apply(ports.JobSpec(name=JOB, region=REGION, image="img"))
    result = cli("--project", "test-project", "logs", expect=1)
    assert "has no executions yet" in result.stderr and "gemmactl train" in result.stderr


def test_logs_shows_the_latest_execution_with_progress_rendered(cli, fake_cloud, clock):
    run_job(fake_cloud, Outcome(logs=["old run line"]))
    fake_cloud.jobs.advance()
    run_job(fake_cloud, Outcome(logs=TRAINER_OUTPUT))

    result = cli("--project", "test-project", "logs")

    assert "old run line" not in result.stdout
    assert "Loading checkpoint shards: 100%" in result.stdout
    assert "run run-1: builtin/tiny-gemma3" in result.stdout
    assert "step 8/8 (100%)" in result.stdout and "loss 0.2500" in result.stdout
    assert "75.0 %" in result.stdout and "[50.0, 90.0]" in result.stdout


def test_logs_json_prints_one_raw_entry_per_line(cli, fake_cloud, clock):
    execution = run_job(fake_cloud, Outcome(logs=TRAINER_OUTPUT))

    result = cli("--project", "test-project", "logs", execution.name, "--json")

    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == len(TRAINER_OUTPUT)
    assert entries[0]["text"] == "Loading checkpoint shards: 100%" and entries[0]["payload"] is None
    assert entries[2]["payload"]["event"] == "step"
    assert set(entries[0]) == {"timestamp", "severity", "insert_id", "text", "payload"}


def test_logs_accepts_a_full_resource_name(cli, fake_cloud, clock):
    execution = run_job(fake_cloud, Outcome(logs=["hello"]))
    full = f"projects/test-project/locations/{REGION}/jobs/{JOB}/executions/{execution.name}"
    assert "hello" in cli("--project", "test-project", "logs", full).stdout


def test_follow_until_success_exits_zero(cli, fake_cloud, clock):
    execution = run_job(fake_cloud, Outcome(logs=TRAINER_OUTPUT))
    clock.at(12, lambda: fake_cloud.jobs.advance(execution.name))

    result = cli("--project", "test-project", "logs", "--follow")

    assert "step 8/8 (100%)" in result.stdout
    assert f"execution {execution.name} succeeded" in result.stderr
    assert result.stdout.count("step 4/8") == 1


def test_follow_until_failure_exits_non_zero_with_the_reason(cli, fake_cloud, clock):
    error = {"event": "error", "time": "2026-01-01T00:00:05.000Z", "message": "model not staged: run gemmactl stage"}
    execution = run_job(fake_cloud, Outcome(state=ports.FAILED, message="Task failed with exit code 1.",
                                            logs=[TRAINER_OUTPUT[0], error]))
    clock.at(7, lambda: fake_cloud.jobs.advance(execution.name))

    result = cli("--project", "test-project", "logs", "--follow", expect=1)

    assert "trainer error: model not staged: run gemmactl stage" in result.stdout
    assert f"execution {execution.name} failed (NON_ZERO_EXIT_CODE: Task failed with exit code 1.)" in result.stderr
    assert "--severity ERROR" in result.stderr  # the hint
    assert "Traceback" not in result.output


def test_follow_of_a_cancelled_execution_exits_non_zero(cli, fake_cloud, clock):
    execution = run_job(fake_cloud)
    clock.at(3, lambda: fake_cloud.jobs.cancel(REGION, JOB, execution.name))
    result = cli("--project", "test-project", "logs", execution.name, "--follow", expect=1)
    assert "was cancelled" in result.stderr


def test_severity_filter_and_since_reach_the_logging_query(cli, fake_cloud, clock):
    execution = run_job(fake_cloud)
    before = datetime.now(UTC)
    fake_cloud.logs.add(execution.name, "too old", job=JOB, severity="ERROR", timestamp=before - timedelta(hours=1))
    fake_cloud.logs.add(execution.name, "chatty", job=JOB, severity="INFO", timestamp=before)
    fake_cloud.logs.add(execution.name, "CUDA error: out of memory", job=JOB, severity="ERROR", timestamp=before)

    result = cli("--project", "test-project", "logs", "--severity", "error", "--since", "10m")

    assert "CUDA error: out of memory" in result.stdout
    assert "chatty" not in result.stdout and "too old" not in result.stdout
    query, since = fake_cloud.logs.requests[-1]
    assert query == ports.LogQuery(REGION, JOB, execution.name, "ERROR")
    assert before - timedelta(minutes=10, seconds=5) <= since <= before - timedelta(minutes=9, seconds=55)


def test_bad_since_or_severity_is_a_usage_error_before_any_api_call(cli, fake_cloud):
    result = cli("--project", "test-project", "logs", "--since", "last tuesday", expect=2)
    assert "invalid --since 'last tuesday'" in result.stderr and "10m" in result.stderr
    result = cli("--project", "test-project", "logs", "--severity", "loud", expect=2)
    assert "invalid severity 'loud'" in result.stderr
    assert fake_cloud.calls == []


def test_unknown_execution_is_one_line_not_a_traceback(cli, fake_cloud):
    run_job(fake_cloud)
    result = cli("--project", "test-project", "logs", "gemma-finetuning-job-99999", expect=1)
    assert "execution gemma-finetuning-job-99999 not found" in result.stderr
    assert "Traceback" not in result.output


def test_logs_help_has_examples(cli):
    result = cli("logs", "--help")
    assert "--follow" in result.stdout and "gemmactl logs --follow" in result.stdout


def test_ctrl_c_stops_following_but_not_the_job(cli, fake_cloud, clock):
    execution = run_job(fake_cloud)

    def interrupt():
        raise KeyboardInterrupt

    clock.at(5, interrupt)
    result = cli("--project", "test-project", "logs", "--follow", expect=130)

    assert f"stopped following; execution {execution.name} keeps running" in result.stderr
    assert f"gemmactl cancel {execution.name}" in result.stderr
    assert fake_cloud.jobs.get_execution(REGION, JOB, execution.name).state == ports.RUNNING


def test_follow_json_keeps_stdout_machine_readable(cli, fake_cloud, clock):
    execution = run_job(fake_cloud, Outcome(logs=TRAINER_OUTPUT))
    clock.at(12, lambda: fake_cloud.jobs.advance(execution.name))

    result = cli("--project", "test-project", "logs", "--follow", "--json")

    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(entries) == len(TRAINER_OUTPUT)
    assert "following" in result.stderr and "RUNNING → SUCCEEDED" in result.stderr
