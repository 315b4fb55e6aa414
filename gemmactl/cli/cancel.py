"""`gemmactl cancel`: stop a running execution (default: the newest one still running)."""

from __future__ import annotations

from typing import Annotated

import typer

from gemmactl.cli._common import connect, settings
from gemmactl.cli._options import DryRunOpt, JsonOpt, YesOpt
from gemmactl.cli._output import out
from gemmactl.cli.status import execution_dict
from gemmactl.cloud import ports
from gemmactl.errors import GemmactlError, NotFoundError

EPILOG = """\
Examples:

  gemmactl cancel            # the newest running execution, after a confirmation

  gemmactl cancel gemma-finetuning-job-x7k2p --yes

  gemmactl --local cancel --yes --json
"""

ExecutionArg = Annotated[str | None, typer.Argument(help="Execution name (default: the newest running one).")]


def cancel(ctx: typer.Context, execution: ExecutionArg = None, yes: YesOpt = False, dry_run: DryRunOpt = False,
           json: JsonOpt = False) -> None:
    """Cancel a running execution; the run keeps its checkpoints, so `train --run-id` can resume it."""
    out.json_mode = json
    s, cloud = connect(settings(ctx))
    target = _target(cloud, s, execution)
    if target.done:
        out.info(f"execution {target.name} already ended ({target.state}); nothing to cancel")
        out.result(execution_dict(target))
        return
    if dry_run:
        out.info(f"dry run: would cancel {target.name} ({target.state}, run {target.run_id or '-'})")
        out.result(execution_dict(target))
        return
    out.confirm(f"Cancel execution {target.name} (run {target.run_id or '-'})?", yes=yes)
    final = cloud.jobs.cancel(s.region, s.job, target.name)
    out.success(f"cancelled {final.name}")
    out.result(execution_dict(final))


def _target(cloud, s, name: str | None) -> ports.Execution:
    if name:
        return cloud.jobs.get_execution(s.region, s.job, name)
    try:
        executions = cloud.jobs.list_executions(s.region, s.job, limit=50)
    except NotFoundError:
        executions = []
    for e in executions:  # newest first
        if not e.done:
            return e
    raise GemmactlError(f"no running execution of job {s.job} in {s.region}", hint="`gemmactl status` lists them")


def register(app: typer.Typer) -> None:
    """Adds `cancel` to the root app."""
    app.command("cancel", epilog=EPILOG)(cancel)
