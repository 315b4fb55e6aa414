"""`gemmactl logs`: an execution's logs, with the trainer's progress rendered (or followed live)."""

from __future__ import annotations

from typing import Annotated

import typer

from gemmactl.cli._common import connect, follow_to_end, settings
from gemmactl.cli._options import FollowOpt, JsonOpt
from gemmactl.cli._output import out
from gemmactl.errors import NotFoundError

ExecutionArg = Annotated[
    str | None, typer.Argument(help="Execution name (default: the job's latest execution).", show_default=False)
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Only entries newer than this: 10m, 2h or an ISO-8601 time.")
]
SeverityOpt = Annotated[
    str | None,
    typer.Option("--severity", help="Only entries at or above this level (DEBUG, INFO, WARNING, ERROR, ...)."),
]

EPILOG = """Examples:

  gemmactl logs --follow                          # the latest execution, live progress

  gemmactl logs gemma-finetuning-job-x7k2p --since 10m

  gemmactl logs --severity ERROR --json | jq .text
"""


def logs(
    ctx: typer.Context,
    execution: ExecutionArg = None,
    follow: FollowOpt = False,
    since: SinceOpt = None,
    severity: SeverityOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show an execution's logs; --follow streams progress until it ends and exits with its status."""
    from gemmactl import logview

    out.json_mode = json
    start, level = logview.parse_since(since), logview.parse_severity(severity)
    s, cloud = connect(settings(ctx))
    name = execution or latest_execution(cloud, s)
    if follow:
        follow_to_end(cloud, s, name, since=start, min_severity=level)
        return
    if not logview.dump_logs(cloud, s, name, since=start, min_severity=level):
        which = f" at {level} or above" if level else ""
        out.info(f"no log entries{which} for {logview.short_execution_name(name)}"
                 + (" since " + start.isoformat(timespec="seconds") if start else " yet"))


def latest_execution(cloud, s) -> str:  # noqa: ANN001 - Cloud and Settings, kept light at import time
    """The newest execution of the configured job."""
    executions = cloud.jobs.list_executions(s.region, s.job, limit=1)
    if not executions:
        raise NotFoundError(f"job {s.job} in {s.region} has no executions yet", resource=s.job,
                            hint="start one with `gemmactl train --size 1000`")
    return executions[0].name


def register(app: typer.Typer) -> None:
    """Adds `logs` to the root app."""
    app.command("logs", epilog=EPILOG)(logs)
