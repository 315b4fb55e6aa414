"""`gemmactl cancel`: stop the newest running execution (or a named one), with a confirmation."""

from __future__ import annotations

import json

from gemmactl import specs
from gemmactl.cloud import ports
from gemmactl.settings import Settings

REGION, JOB = "europe-west4", "gemma-finetuning-job"


def _running(fake, n=1) -> list[str]:
    fake.jobs.apply(specs.build_job_spec(Settings(project="test-project"), "img:1"))
    names = []
    for i in range(n):
        ex = fake.jobs.run(REGION, JOB, ports.RunOverrides(env={"RUN_ID": f"r{i}"}))
        fake.jobs.advance(ex.name, to=ports.RUNNING)
        names.append(ex.name)
    fake.mutations.clear()
    return names


def test_cancel_defaults_to_the_newest_running_execution(cli, fake_cloud):
    first, second = _running(fake_cloud, 2)
    result = cli("cancel", "--yes", "--json")
    assert json.loads(result.stdout)["execution"] == second
    assert fake_cloud.jobs.executions[second].state == ports.CANCELLED
    assert fake_cloud.jobs.executions[first].state == ports.RUNNING
    assert fake_cloud.mutations == ["jobs.cancel"]


def test_cancel_a_named_execution_after_confirming(cli, fake_cloud):
    first, _ = _running(fake_cloud, 2)
    result = cli("cancel", first, "--yes")
    assert f"cancelled {first}" in result.stderr and "CANCELLED" in result.stdout
    assert fake_cloud.jobs.executions[first].state == ports.CANCELLED


def test_cancel_refuses_without_a_tty_unless_yes(cli, fake_cloud):
    (name,) = _running(fake_cloud)
    result = cli("cancel", expect=1)
    assert "no interactive terminal" in result.stderr and "--yes" in result.stderr
    assert fake_cloud.jobs.executions[name].state == ports.RUNNING and fake_cloud.mutations == []


class _TtySys:
    """`sys` as `out.confirm` sees it, with a terminal on stdin (CliRunner's stdin never is one)."""

    class stdin:  # noqa: N801 - stands in for the sys.stdin object
        @staticmethod
        def isatty() -> bool:
            return True

    def __getattr__(self, name):
        import sys

        return getattr(sys, name)


def test_cancel_asks_on_a_tty_and_a_no_changes_nothing(cli, fake_cloud, monkeypatch):
    import gemmactl.cli._output as output

    (name,) = _running(fake_cloud)
    answers = iter(["n", "y"])
    monkeypatch.setattr(output, "sys", _TtySys())
    monkeypatch.setattr(output.out.err.__class__, "input", lambda self, prompt="": next(answers))
    result = cli("cancel", expect=1)
    assert "aborted" in result.stderr and fake_cloud.jobs.executions[name].state == ports.RUNNING
    cli("cancel")
    assert fake_cloud.jobs.executions[name].state == ports.CANCELLED


def test_dry_run_names_the_target_and_changes_nothing(cli, fake_cloud):
    (name,) = _running(fake_cloud)
    result = cli("cancel", "--dry-run")
    assert f"would cancel {name}" in result.stderr and fake_cloud.mutations == []


def test_nothing_running(cli, fake_cloud):
    result = cli("cancel", "--yes", expect=1)
    assert "no running execution" in result.stderr and "gemmactl status" in result.stderr
    (name,) = _running(fake_cloud)
    fake_cloud.jobs.advance(name, to=ports.SUCCEEDED)
    result = cli("cancel", name, "--yes")
    assert "already ended (SUCCEEDED)" in result.stderr and fake_cloud.mutations == []


def test_unknown_execution_is_not_found(cli, fake_cloud):
    _running(fake_cloud)
    result = cli("cancel", "gemma-finetuning-job-99999", "--yes", expect=1)
    assert "gemma-finetuning-job-99999 not found" in result.stderr and "Traceback" not in result.output
