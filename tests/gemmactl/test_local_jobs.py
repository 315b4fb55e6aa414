"""The local backend's job lifecycle: `--local train/status/cancel/logs` with a detached runner process.

A stand-in `trainer` package (first on PYTHONPATH) plays the trainer, so these run in seconds; one slow
test at the end runs the real trainer with the built-in tiny model.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gemmactl.cloud import ports
from gemmactl.cloud.ports import SecretText

TOKEN = "hf_localSECRET0987654321"
REGION, JOB = "europe-west4", "gemma-finetuning-job"
BUCKET = "local-gemma-finetuning-europe-west4"

FAKE_TRAINER = '''
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--output-dir") + 1])
mode = os.environ.get("FAKE_MODE", "ok")
attempt = int(os.environ["CLOUD_RUN_TASK_ATTEMPT"])
print(json.dumps({"event": "start", "run_id": os.environ.get("RUN_ID"), "attempt": attempt}), flush=True)
print("args " + " ".join(args), flush=True)
print("token " + ("set" if os.environ.get("HF_TOKEN") else "unset") + " len " + str(len(os.environ.get("HF_TOKEN", ""))), flush=True)
print("leaky " + os.environ.get("HF_TOKEN", ""), flush=True)
out.mkdir(parents=True, exist_ok=True)
(out / "fake.txt").write_text(os.environ["BUCKET_NAME"] + " " + os.environ["RUN_ID"])
if mode == "sleep":
    time.sleep(120)
if mode == "fail" or (mode == "fail-once" and attempt == 0):
    print(json.dumps({"event": "error", "message": "CUDA out of memory"}), flush=True)
    print("error: CUDA out of memory", file=sys.stderr, flush=True)
    sys.exit(3)
print(json.dumps({"event": "done", "metrics_path": str(out / "metrics.json")}), flush=True)
'''


@pytest.fixture
def local(tmp_path, monkeypatch):
    """A local root after `init`: bucket dir in the job region, HF token stored; fake trainer on PYTHONPATH."""
    from gemmactl.cloud.local import make_local_cloud
    from gemmactl.settings import Settings

    fake = tmp_path / "fakepkg" / "trainer"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fakepkg"))
    monkeypatch.setenv("HF_TOKEN", "inherited-must-not-reach-the-job")
    root = tmp_path / "local"
    cloud = make_local_cloud(Settings(backend="local", local_dir=str(root)))
    cloud.storage.create_bucket(BUCKET, location=REGION, labels={})
    cloud.secrets.create_secret("HF_TOKEN", labels={})
    cloud.secrets.add_version("HF_TOKEN", SecretText(TOKEN))
    cloud.root = root
    return cloud


def _cli(cli, local, *args, expect=0):
    return cli("--local", "--local-dir", str(local.root), *args, expect=expect)


def _wait(local, name, timeout=60.0) -> ports.Execution:
    deadline = time.monotonic() + timeout
    while True:
        ex = local.jobs.get_execution(REGION, JOB, name)
        if ex.done or time.monotonic() > deadline:
            return ex
        time.sleep(0.1)


def _wait_running(local, name) -> ports.Execution:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ex = local.jobs.get_execution(REGION, JOB, name)
        log = _log_texts(local, name)
        if ex.state == ports.RUNNING and any(t.startswith("args") for t in log):
            return ex
        time.sleep(0.1)
    raise AssertionError("never started")


def _log_texts(local, name) -> list[str]:
    query = ports.LogQuery(REGION, JOB, name)
    return [e.text for e in local.logs.read(query, since=datetime(2000, 1, 1, tzinfo=UTC))]


def _train(cli, local, *args, expect=0) -> dict:
    return json.loads(_cli(cli, local, "train", "--size", "74", "--json", *args, expect=expect).stdout)


def test_local_train_runs_the_trainer_like_the_job_would(cli, local):
    started = _train(cli, local, "--run-id", "r1", "--model", "builtin:tiny-gemma3")
    assert started["execution"] == f"{JOB}-00001" and started["job_created"] is True
    final = _wait(local, started["execution"])
    assert final.state == ports.SUCCEEDED and final.run_id == "r1" and final.retried == 0

    bucket_dir = Path(local.storage.local_path(BUCKET))
    assert started["output"] == f"{bucket_dir}/runs/r1/"
    assert (bucket_dir / "runs/r1/fake.txt").read_text() == f"{BUCKET} r1"
    assert json.loads((bucket_dir / "runs/r1/config.json").read_text())["train_size"] == 74
    texts = _log_texts(local, started["execution"])
    args_line = next(t for t in texts if t.startswith("args"))
    assert "/mnt/gcs" not in args_line and f"--config {bucket_dir}/runs/r1/config.json" in args_line
    assert "--model-id builtin:tiny-gemma3" in args_line
    assert f"token set len {len(TOKEN)}" in texts  # from the local secret, not the caller's HF_TOKEN


def test_the_token_reaches_the_job_only_as_env(cli, local):
    name = _train(cli, local)["execution"]
    _wait(local, name)
    for path in Path(local.root).rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            assert TOKEN.encode() not in path.read_bytes(), path
    assert "leaky ***" in _log_texts(local, name)


def test_second_train_updates_the_job_and_numbers_the_next_execution(cli, local):
    first = _train(cli, local)
    second = _train(cli, local)
    assert second["job_created"] is False and second["execution"] == f"{JOB}-00002"
    assert local.jobs.get_job(REGION, JOB).generation == 2
    for name in (first["execution"], second["execution"]):
        assert _wait(local, name).state == ports.SUCCEEDED


def test_failure_retries_then_fails_with_the_trainers_reason(cli, local, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    name = _train(cli, local, "--max-retries", "1")["execution"]
    final = _wait(local, name)
    assert final.state == ports.FAILED and final.reason == "NON_ZERO_EXIT_CODE" and final.retried == 1
    assert "exited with code 3" in final.message and "CUDA out of memory" in final.message
    texts = _log_texts(local, name)
    assert sum(t.startswith("Starting attempt") for t in texts) == 2


def test_a_retry_that_succeeds_ends_succeeded(cli, local, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail-once")
    final = _wait(local, _train(cli, local)["execution"])
    assert final.state == ports.SUCCEEDED and final.retried == 1


def test_status_lists_executions_newest_first(cli, local):
    names = [_train(cli, local, "--run-id", f"r{i}")["execution"] for i in (1, 2)]
    for n in names:
        _wait(local, n)
    rows = json.loads(_cli(cli, local, "status", "--json").stdout)
    assert [r["execution"] for r in rows] == list(reversed(names))
    assert [r["run_id"] for r in rows] == ["r2", "r1"] and rows[0]["state"] == "SUCCEEDED"
    table = _cli(cli, local, "status").stdout
    assert "SUCCEEDED" in table and "r2" in table


def test_cancel_stops_the_process_group(cli, local, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    name = _train(cli, local)["execution"]
    _wait_running(local, name)
    child = json.loads((Path(local.root) / f"jobs/{REGION}/{JOB}/executions/{name}/state.json").read_text())
    result = _cli(cli, local, "cancel", "--yes", "--json")
    assert json.loads(result.stdout)["state"] == "CANCELLED"
    final = local.jobs.get_execution(REGION, JOB, name)
    assert final.state == ports.CANCELLED and final.reason == "CANCELLED"
    with pytest.raises(ProcessLookupError):
        os.kill(child["child_pid"], 0)


def test_cancel_refuses_without_a_tty_and_yes(cli, local, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    name = _train(cli, local)["execution"]
    result = _cli(cli, local, "cancel", expect=1)
    assert "rerun with --yes" in result.stderr
    assert local.jobs.get_execution(REGION, JOB, name).state != ports.CANCELLED
    _cli(cli, local, "cancel", name, "--yes")


def test_follow_streams_until_the_end_and_exits_with_its_status(cli, local, monkeypatch):
    result = _cli(cli, local, "train", "--size", "74", "--follow")
    assert "succeeded" in result.stderr
    monkeypatch.setenv("FAKE_MODE", "fail")
    result = _cli(cli, local, "train", "--size", "74", "--follow", "--max-retries", "0", expect=1)
    assert "failed" in result.stderr and "NON_ZERO_EXIT_CODE" in result.stderr


def test_logs_carry_json_payloads_and_filter_by_severity(cli, local, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    name = _train(cli, local, "--max-retries", "0")["execution"]
    _wait(local, name)
    since = datetime(2000, 1, 1, tzinfo=UTC)
    entries = local.logs.read(ports.LogQuery(REGION, JOB, name), since=since)
    start = next(e for e in entries if e.payload and e.payload.get("event") == "start")
    assert start.payload["run_id"] == start.payload["run_id"] and start.payload["attempt"] == 0
    assert len({e.insert_id for e in entries}) == len(entries)
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    errors = local.logs.read(ports.LogQuery(REGION, JOB, name, min_severity="ERROR"), since=since)
    assert errors and all(e.severity == "ERROR" for e in errors)
    later = local.logs.read(ports.LogQuery(REGION, JOB, name), since=entries[-1].timestamp)
    assert later == entries[-1:]


def test_task_timeout_ends_the_attempt(local, monkeypatch):
    from dataclasses import replace

    from gemmactl import specs
    from gemmactl.settings import Settings

    monkeypatch.setenv("FAKE_MODE", "sleep")
    settings = Settings(backend="local", project="local", max_retries=0)
    spec = replace(specs.build_job_spec(settings, "local"), timeout_s=1, bucket=BUCKET)
    local.jobs.apply(spec)
    ex = local.jobs.run(REGION, JOB, ports.RunOverrides(args=("--output-dir", "/mnt/gcs/runs/t"),
                                                          env={"RUN_ID": "t"}))
    final = _wait(local, ex.name)
    assert final.state == ports.FAILED and final.reason == "TASK_TIMEOUT"


def test_a_dead_runner_is_settled_as_failed(local):
    import signal

    from gemmactl import specs
    from gemmactl.settings import Settings

    os.environ["FAKE_MODE"] = "sleep"
    try:
        local.jobs.apply(specs.build_job_spec(Settings(backend="local", project="local"), "local"))
        ex = local.jobs.run(REGION, JOB, ports.RunOverrides(args=("--output-dir", "/mnt/gcs/runs/d"),
                                                              env={"RUN_ID": "d"}))
        _wait_running(local, ex.name)
        exec_dir = Path(local.root) / f"jobs/{REGION}/{JOB}/executions/{ex.name}"
        state = json.loads((exec_dir / "state.json").read_text())
        os.kill(state["runner_pid"], signal.SIGKILL)
        os.killpg(state["child_pid"], signal.SIGKILL)
        final = _wait(local, ex.name)
        assert final.state == ports.FAILED and final.reason == "RUNNER_EXITED"
    finally:
        del os.environ["FAKE_MODE"]


def test_missing_executions_and_jobs_are_not_found(cli, local):
    from gemmactl.errors import NotFoundError

    with pytest.raises(NotFoundError):
        local.jobs.get_job(REGION, JOB)
    assert "no executions" in _cli(cli, local, "status").stdout
    assert "no running execution" in _cli(cli, local, "cancel", "--yes", expect=1).stderr


def test_local_builds_record_the_source_and_succeed(local):
    spec = ports.BuildSpec(region=REGION, steps=(), images=("img:abc123",), source_object="cloudbuild/source/abc.tgz")
    info = local.builds.submit(spec)
    assert info.status == "SUCCESS" and info.images == ("img:abc123",)
    assert local.builds.get(REGION, info.id) == info and local.builds.read_log(info, offset=0) == b""


@pytest.mark.slow
def test_readme_demo_runs_the_real_trainer(cli, tmp_path, monkeypatch):
    """The quickstart on the local backend with the built-in tiny model and synthetic pets."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    from gemmactl.cloud.local import make_local_cloud
    from gemmactl.settings import Settings

    root = tmp_path / "demo"
    cloud = make_local_cloud(Settings(backend="local", local_dir=str(root)))
    cloud.storage.create_bucket(BUCKET, location=REGION, labels={})
    result = cli("--local", "--local-dir", str(root), "train", "--model", "builtin:tiny-gemma3",
                 "--dataset", "builtin:synthetic-pets", "--size", "74", "--eval-size", "37", "--epochs", "1",
                 "--run-id", "demo", "--follow")
    assert "succeeded" in result.stderr
    metrics = json.loads((root / "buckets" / BUCKET / "runs/demo/metrics.json").read_text())
    assert "baseline" in metrics and "final" in metrics
